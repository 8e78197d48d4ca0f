"""Run outputs: ``metrics.json``, accuracy matrices as CSV and PNG heatmaps, a markdown summary."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from cmrkit.metrics import METRIC_KINDS, METRIC_LABELS, AccuracyMatrix

SUMMARY_ROWS = (
    ("M-Acc", "m_acc"),
    ("F-Acc", "f_acc"),
    ("D-Acc", "d_acc"),
    ("M-Acc@3", "m_acc_top3"),
    ("F-Acc@3", "f_acc_top3"),
    ("D-Acc@3", "d_acc_top3"),
    ("M-Acc@5", "m_acc_top5"),
    ("F-Acc@5", "f_acc_top5"),
    ("D-Acc@5", "d_acc_top5"),
    ("M-Acc@10", "m_acc_top10"),
    ("F-Acc@10", "f_acc_top10"),
    ("D-Acc@10", "d_acc_top10"),
    ("M-forgetting", "m_forgetting"),
    ("F-forgetting", "f_forgetting"),
    ("D-forgetting", "d_forgetting"),
)


def _json_number(value: float) -> float | None:
    return None if isinstance(value, float) and math.isnan(value) else value


def metrics_document(result: Any, *, strategy: str, plugins: list[str], variant: str) -> dict[str, Any]:
    """Build the ``metrics.json`` document of a run (percent values, ``null`` for missing cells)."""
    size = len(result.experience_names)
    matrix: AccuracyMatrix = result.matrix
    return {
        "strategy": strategy,
        "plugins": plugins,
        "variant": variant,
        "complete": result.complete,
        "experiences": result.experience_names,
        "summary": {key: _json_number(value) for key, value in result.summary.items()},
        "accuracy_matrix": {
            key: [[_json_number(v) for v in row] for row in matrix.as_table(key, size)]
            for key in matrix.keys()
        },
        "accuracy_matrix_layout": "rows: after training experience i; columns: test experience j",
    }


def write_metrics(output_dir: Path, document: dict[str, Any]) -> Path:
    """Write ``metrics.json`` atomically (temporary file, then rename)."""
    path = output_dir / "metrics.json"
    staging = path.with_suffix(".json.partial")
    staging.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    staging.replace(path)
    return path


def write_matrix_csv(output_dir: Path, result: Any) -> list[Path]:
    """Write one ``accuracy_<key>.csv`` per metric key; rows are training experiences."""
    names = result.experience_names
    paths = []
    for key in result.matrix.keys():
        path = output_dir / f"accuracy_{key}.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["after_training", *names])
            for name, row in zip(names, result.matrix.as_table(key, len(names)), strict=True):
                writer.writerow([name, *("" if math.isnan(v) else f"{v:.2f}" for v in row)])
        paths.append(path)
    return paths


def write_heatmaps(output_dir: Path, result: Any, title: str) -> Path:
    """Plot the top-1 M-Acc, F-Acc and D-Acc matrices side by side as ``accuracy_matrix.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"E{i + 1}" for i in range(len(result.experience_names))]
    figure, axes = plt.subplots(1, len(METRIC_KINDS), figsize=(4.2 * len(METRIC_KINDS), 3.8))
    for panel, (axis, kind) in enumerate(zip(axes, METRIC_KINDS, strict=True)):
        table = result.matrix.as_table(kind, len(names))
        image = axis.imshow(table, vmin=0, vmax=100, cmap="viridis")
        for i, row in enumerate(table):
            for j, value in enumerate(row):
                if not math.isnan(value):
                    axis.text(
                        j,
                        i,
                        f"{value:.1f}",
                        ha="center",
                        va="center",
                        color="white" if value < 60 else "black",
                        fontsize=9,
                    )
        axis.set_xticks(range(len(names)), names)
        axis.set_yticks(range(len(names)), names)
        axis.set_xlabel("test experience")
        if panel == 0:  # the rows are shared, so one label keeps the panels apart
            axis.set_ylabel("after training on")
        axis.set_title(f"{METRIC_LABELS[kind]} (%)")
    figure.colorbar(image, ax=axes, shrink=0.8)
    figure.suptitle(title)
    path = output_dir / "accuracy_matrix.png"
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path


def summary_markdown(document: dict[str, Any]) -> str:
    """Render the summary and the top-1 D-Acc matrix as a markdown page."""
    plugins = ", ".join(document["plugins"]) or "none"
    lines = [
        f"# {document['strategy']} (plugins: {plugins}) on CMRBench-{document['variant']}",
        "",
        "Percentages averaged over the test experiences after the last training experience.",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    summary = document["summary"]
    for label, key in SUMMARY_ROWS:
        if key in summary:
            lines.append(f"| {label} | {_fmt(summary[key])} |")
    lines.append(f"| training wall time (s) | {_fmt(summary.get('train_seconds'))} |")
    lines.append(f"| training sample passes | {_fmt(summary.get('train_sample_passes'), 0)} |")

    table = document["accuracy_matrix"].get("d_acc")
    if table:
        names = [f"E{i + 1}" for i in range(len(table))]
        lines += ["", "D-Acc (%) after training on the row's experience, on the column's test split:", ""]
        lines.append("| after | " + " | ".join(names) + " |")
        lines.append("|---" * (len(names) + 1) + "|")
        for name, row in zip(names, table, strict=True):
            lines.append(f"| {name} | " + " | ".join(_fmt(v) for v in row) + " |")
    if not document["complete"]:
        lines += ["", "The run stopped before the last experience; values cover what finished."]
    return "\n".join(lines) + "\n"


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"
