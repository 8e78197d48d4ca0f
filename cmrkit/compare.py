"""Run several strategies over the same CMRBench stream and seeds, and tabulate the results.

``cmrkit compare --strategies LIST`` calls :func:`run_comparison` and :func:`write_comparison`.
``LIST`` is a comma-separated list of entries, each written as::

    [LABEL:]STRATEGY[+PLUGIN...][@KEY=VALUE[;KEY=VALUE...]]

- ``STRATEGY`` and ``PLUGIN`` are names from ``cmrkit strategies`` and ``cmrkit plugins``;
  plugins apply in the order written.
- ``@KEY=VALUE;...`` are config overrides for that entry only, applied after the file and the
  overrides shared by all entries. A value may not contain ``;``, and commas only inside
  brackets (``eval.top_k=[1,3]``). ``run.strategy``, ``run.plugins`` and ``run.seed`` are set by
  the entry and ``--seeds``, so overriding them is rejected.
- ``LABEL:`` names the entry in the tables, the plot and the run folders. Without it the label
  is the entry text, with override keys shortened (``plugins.`` and ``strategies.`` dropped).

Examples: ``naive``, ``naive+ewc``, ``replay-20:naive+replay@plugins.replay.ratio=0.2``,
``naive+merge@encoder.lora.enabled=true;plugins.merge.method=linear``.

Every entry runs once per seed. Benchmarks are built once per distinct ``data`` section (and
seed, when ``data.max_prompts_per_model`` samples prompts) and shared by the runs. A run that
raises is recorded with its error and the others go on. Outputs in the output folder:

- ``comparison.md`` and ``comparison.csv``: M-Acc, F-Acc, D-Acc, D-Acc@3 and D-forgetting
  (percent, after the last experience) with training wall time (seconds) and training sample
  passes, as the mean and the sample standard deviation (n - 1) over the seeds that finished;
- ``d_acc_over_stream.png``: per entry, the mean D-Acc over the test experiences seen so far
  after each training experience;
- ``runs/<label>/seed-<seed>/metrics.json`` (and ``error.txt`` for a failed run).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from cmrkit.config import build_config
from cmrkit.metrics import AccuracyMatrix
from cmrkit.pm import CmrkitPluginManager, load_plugin_manager
from cmrkit.reporting import metrics_document, write_metrics
from cmrkit.runner import load_benchmark, run_experiment

logger = logging.getLogger("cmrkit.compare")

COLUMNS: tuple[tuple[str, str], ...] = (
    ("M-Acc", "m_acc"), ("F-Acc", "f_acc"), ("D-Acc", "d_acc"), ("D-Acc@3", "d_acc_top3"),
    ("D-forgetting", "d_forgetting"), ("train time (s)", "train_seconds"),
    ("train sample passes", "train_sample_passes"),
)
"""Table columns: heading and summary key. Percentages except the last two."""

RESERVED_KEYS = ("run.strategy", "run.plugins", "run.seed")
_LABEL_PREFIXES = ("plugins.", "strategies.")


# -- entries ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompareEntry:
    """One strategy with its training plugins and config overrides.

    Attributes:
        strategy: Strategy name.
        plugins: Training plugin names, in the order they apply.
        overrides: ``key=value`` config overrides for this entry.
        label: Name in tables, plot and folders.
    """

    strategy: str
    plugins: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()
    label: str = ""

    @property
    def slug(self) -> str:
        """The label reduced to a folder name (letters, digits, ``.``, ``_``, ``-``)."""
        return re.sub(r"[^A-Za-z0-9._-]+", "-", self.label).strip("-.") or "entry"


def parse_entry(text: str) -> CompareEntry:
    """Parse one ``[LABEL:]STRATEGY[+PLUGIN...][@KEY=VALUE;...]`` entry.

    Raises:
        ValueError: For an empty strategy, plugin, label or override, an override without ``=``,
            or an override of ``run.strategy``, ``run.plugins`` or ``run.seed``.
    """
    text = text.strip()
    head, has_overrides, tail = text.partition("@")
    label = ""
    if ":" in head:
        label, _, head = head.partition(":")
        label = label.strip()
        if not label:
            raise ValueError(f"invalid entry {text!r}: the label before ':' is empty")

    names = [name.strip() for name in head.split("+")]
    if not names[0] or any(not name for name in names):
        raise ValueError(f"invalid entry {text!r}: write STRATEGY[+PLUGIN...], e.g. naive+replay")

    overrides = [item.strip() for item in tail.split(";")] if has_overrides else []
    for item in overrides:
        key, equals, _ = item.partition("=")
        if not equals or not key.strip():
            raise ValueError(f"invalid override {item!r} in entry {text!r}: write KEY=VALUE after '@'")
        if key.strip() in RESERVED_KEYS:
            raise ValueError(
                f"invalid override {item!r} in entry {text!r}: the entry sets the strategy and "
                "plugins, and --seeds sets the seed"
            )

    entry = CompareEntry(names[0], tuple(names[1:]), tuple(overrides), label)
    if not label:
        entry = CompareEntry(entry.strategy, entry.plugins, entry.overrides, default_label(entry))
    return entry


def default_label(entry: CompareEntry) -> str:
    """Return ``strategy+plugins`` plus the overrides in brackets, without ``plugins.``/``strategies.``."""
    label = "+".join((entry.strategy, *entry.plugins))
    if entry.overrides:
        shortened = []
        for item in entry.overrides:
            for prefix in _LABEL_PREFIXES:
                if item.startswith(prefix):
                    item = item[len(prefix):]
                    break
            shortened.append(item)
        label += f" [{'; '.join(shortened)}]"
    return label


def split_entries(text: str) -> list[str]:
    """Split a ``--strategies`` list at commas that are not inside brackets or quotes."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    quote = ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth = max(depth - 1, 0)
        elif char == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts if part.strip()]


def parse_entries(text: str) -> list[CompareEntry]:
    """Parse a ``--strategies`` list.

    Raises:
        ValueError: For an invalid entry, an empty list, or two entries with the same label.
    """
    entries = [parse_entry(part) for part in split_entries(text)]
    if not entries:
        raise ValueError("no entries in --strategies: list at least one, e.g. naive,naive+ewc")
    labels = [entry.label for entry in entries]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"entry label {repeated[0]!r} appears twice: give one of them a LABEL: prefix")
    return entries


def parse_seeds(text: str) -> list[int]:
    """Parse ``--seeds`` (comma-separated integers, no repeats).

    Raises:
        ValueError: For a value that is not an integer, a repeat, or an empty list.
    """
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise ValueError(f"invalid --seeds {text!r}: write comma-separated integers, e.g. 1,2,3") from error
    if not seeds:
        raise ValueError("no seeds in --seeds: write comma-separated integers, e.g. 1,2,3")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"invalid --seeds {text!r}: a seed is listed twice")
    return seeds


# -- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation over ``n`` finite values (NaN when undefined)."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Stat:
        """Summarise the finite values; the standard deviation needs two of them."""
        finite = [float(value) for value in values if value is not None and math.isfinite(value)]
        if not finite:
            return cls(math.nan, math.nan, 0)
        std = statistics.stdev(finite) if len(finite) > 1 else math.nan
        return cls(statistics.fmean(finite), std, len(finite))


@dataclass
class RunRecord:
    """One entry run with one seed.

    Attributes:
        entry: The entry.
        seed: The seed.
        output_dir: Folder of the run's ``metrics.json``.
        summary: The run's summary; ``None`` when it failed before any evaluation.
        curve: ``(experiences seen, mean D-Acc over the test experiences evaluated)`` per row of
            the accuracy matrix.
        error: ``"<ExceptionType>: <message>"`` for a failed run, else ``None``.
    """

    entry: CompareEntry
    seed: int
    output_dir: Path
    summary: dict[str, float] | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)
    error: str | None = None


@dataclass
class Comparison:
    """The entries, the seeds and every run record of a comparison."""

    entries: list[CompareEntry]
    seeds: list[int]
    runs: list[RunRecord] = field(default_factory=list)
    experience_names: list[str] = field(default_factory=list)
    variant: str = ""

    def runs_for(self, entry: CompareEntry) -> list[RunRecord]:
        """Records of ``entry``, in seed order."""
        return [run for run in self.runs if run.entry == entry]

    def finished(self, entry: CompareEntry) -> list[RunRecord]:
        """Records of ``entry`` that finished without an error."""
        return [run for run in self.runs_for(entry) if run.error is None and run.summary is not None]

    def failed_runs(self) -> list[RunRecord]:
        """Return the records with an error."""
        return [run for run in self.runs if run.error is not None]

    def stat(self, entry: CompareEntry, key: str) -> Stat:
        """Mean and standard deviation of a summary key over the finished runs of ``entry``."""
        return Stat.of(run.summary.get(key, math.nan) for run in self.finished(entry) if run.summary)

    def curve(self, entry: CompareEntry) -> list[tuple[int, Stat]]:
        """Mean D-Acc over seen test experiences per number of experiences seen, over seeds."""
        points: dict[int, list[float]] = {}
        for run in self.finished(entry):
            for seen, value in run.curve:
                points.setdefault(seen, []).append(value)
        return [(seen, Stat.of(values)) for seen, values in sorted(points.items())]


def d_acc_curve(matrix: AccuracyMatrix) -> list[tuple[int, float]]:
    """Return ``(experiences seen, mean top-1 D-Acc of the row)`` for each matrix row.

    The number of experiences seen is one more than the last test experience the row covers.
    Row ``i`` of a sequential run covers tests ``0..i``, and the single row of a joint run covers
    them all.
    """
    points = []
    for _, row in sorted(matrix.values.get("d_acc", {}).items()):
        if row:
            points.append((max(row) + 1, sum(row.values()) / len(row)))
    return points


# -- running ----------------------------------------------------------------------------------


def run_comparison(
    entries: Sequence[CompareEntry],
    *,
    seeds: Sequence[int],
    output_dir: Path,
    config_file: str | Path | None = None,
    overrides: Sequence[str] = (),
    manager: CmrkitPluginManager | None = None,
    on_run_end: Callable[[Comparison], object] | None = None,
) -> Comparison:
    """Run every entry with every seed and return the records.

    Args:
        entries: Entries, e.g. from :func:`parse_entries`.
        seeds: Seeds; each entry runs once per seed.
        output_dir: Folder of the run subfolders.
        config_file: YAML file merged over the defaults for every run.
        overrides: ``key=value`` overrides for every run, applied before each entry's own.
        manager: Plugin manager; default loads the installed entry points.
        on_run_end: Called with the comparison so far after each run (finished or failed).

    Raises:
        ValueError: When ``seeds`` is empty.
        ConfigError: When the file or the shared overrides are invalid (checked before any run).
        KeyboardInterrupt: Passed on after the records so far are reported to ``on_run_end``.
    """
    if not seeds:
        raise ValueError("no seeds: pass at least one")
    manager = manager if manager is not None else load_plugin_manager()
    base = _entry_config(manager, config_file, overrides, None, seeds[0])
    comparison = Comparison(list(entries), list(seeds), variant=str(base.data.variant))
    benchmarks: dict[str, Any] = {}

    _report_invalid_entries(entries, manager, config_file, overrides, seeds[0])
    plan = [(entry, seed) for entry in entries for seed in seeds]
    for entry, seed in tqdm(plan, desc="compare", disable=not bool(base.run.progress)):
        run_dir = output_dir / "runs" / entry.slug / f"seed-{seed}"
        record = RunRecord(entry, seed, run_dir)
        comparison.runs.append(record)
        logger.info("compare: %s, seed %d (run %d of %d)", entry.label, seed, len(comparison.runs), len(plan))
        try:
            _run_one(record, comparison, manager, config_file, overrides, benchmarks)
        except KeyboardInterrupt:
            record.error = "KeyboardInterrupt: interrupted"
            if on_run_end is not None:
                on_run_end(comparison)
            raise
        except Exception as error:  # one failing entry must not stop the others
            record.error = f"{type(error).__name__}: {error}"
            logger.error("compare: %s, seed %d failed: %s", entry.label, seed, record.error)
            logger.debug("traceback of the failed run", exc_info=True)
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "error.txt").write_text(record.error + "\n", encoding="utf-8")
        if on_run_end is not None:
            on_run_end(comparison)
    return comparison


def _report_invalid_entries(entries: Sequence[CompareEntry], manager: CmrkitPluginManager,
                            config_file: str | Path | None, overrides: Sequence[str], seed: int) -> None:
    """Log every entry whose names or options are invalid before the first run starts.

    Those entries still fail in their turn (and appear in the table), but a typo in the last
    entry of a long comparison is visible at once instead of hours later.
    """
    for entry in entries:
        try:
            config = _entry_config(manager, config_file, overrides, entry, seed)
            manager.strategy(str(config.run.strategy))
            manager.check_training_plugins([str(name) for name in config.run.plugins])
        except Exception as error:  # reported here, raised again when the entry runs
            logger.error("compare: entry %s is invalid and will fail: %s", entry.label, error)


def _run_one(record: RunRecord, comparison: Comparison, manager: CmrkitPluginManager,
             config_file: str | Path | None, overrides: Sequence[str], benchmarks: dict[str, Any]) -> None:
    entry = record.entry
    config = _entry_config(manager, config_file, overrides, entry, record.seed)
    config.run.output = str(record.output_dir)
    manager.strategy(entry.strategy)
    manager.check_training_plugins(entry.plugins)
    benchmark = _cached_benchmark(config, benchmarks)
    record.output_dir.mkdir(parents=True, exist_ok=True)

    def keep_round(partial: Any) -> None:
        record.summary = dict(partial.summary)
        record.curve = d_acc_curve(partial.matrix)
        _write_run_metrics(record, config, partial)

    result = run_experiment(
        config, manager=manager, benchmark=benchmark, output_dir=record.output_dir, on_round_end=keep_round,
    )
    keep_round(result)
    if not comparison.experience_names:
        comparison.experience_names = list(result.experience_names)


def _entry_config(manager: CmrkitPluginManager, config_file: str | Path | None, overrides: Sequence[str],
                  entry: CompareEntry | None, seed: int) -> DictConfig:
    layers = list(overrides)
    if entry is not None:
        layers += [
            *entry.overrides, f"run.strategy={entry.strategy}", f"run.plugins=[{','.join(entry.plugins)}]",
        ]
    layers.append(f"run.seed={seed}")
    return build_config(
        file=config_file,
        overrides=layers,
        strategy_classes={name: info.config_class for name, info in manager.strategies().items()},
        plugin_classes={name: info.config_class for name, info in manager.training_plugins().items()},
    )


def _cached_benchmark(config: DictConfig, cache: dict[str, Any]) -> Any:
    data = OmegaConf.to_container(config.data, resolve=True)
    key_parts: dict[str, Any] = {"data": data}
    if config.data.max_prompts_per_model is not None:  # the prompt sample depends on the seed
        key_parts["seed"] = int(config.run.seed)
    key = json.dumps(key_parts, sort_keys=True)
    if key not in cache:
        try:
            cache[key] = load_benchmark(config)
        except Exception as error:
            cache[key] = error  # later runs with the same data fail at once with the same error
            raise
    cached = cache[key]
    if isinstance(cached, Exception):
        raise cached
    return cached


def _write_run_metrics(record: RunRecord, config: DictConfig, result: Any) -> None:
    document = metrics_document(
        result, strategy=record.entry.strategy, plugins=list(record.entry.plugins),
        variant=str(config.data.variant),
    )
    document["entry"] = record.entry.label
    document["overrides"] = list(record.entry.overrides)
    document["seed"] = record.seed
    write_metrics(record.output_dir, document)


# -- writing ----------------------------------------------------------------------------------


def write_comparison(comparison: Comparison, output_dir: Path) -> list[Path]:
    """Write ``comparison.md``, ``comparison.csv`` and ``d_acc_over_stream.png``; return their paths."""
    output_dir.mkdir(parents=True, exist_ok=True)
    markdown = output_dir / "comparison.md"
    markdown.write_text(comparison_markdown(comparison), encoding="utf-8")
    table = write_comparison_csv(comparison, output_dir / "comparison.csv")
    plot = plot_d_acc_over_stream(comparison, output_dir / "d_acc_over_stream.png")
    return [markdown, table, plot]


def format_stat(stat: Stat, digits: int = 1) -> str:
    """Render ``mean ± std``; the mean alone for one value; ``-`` for none."""
    if stat.n == 0:
        return "-"
    if stat.n == 1 or math.isnan(stat.std):
        return f"{stat.mean:,.{digits}f}"
    return f"{stat.mean:,.{digits}f} ± {stat.std:,.{digits}f}"


def comparison_markdown(comparison: Comparison) -> str:
    """Render the comparison table, the D-Acc-over-stream table and the failures as markdown."""
    seeds = ", ".join(str(seed) for seed in comparison.seeds)
    lines = [
        f"# Comparison on CMRBench-{comparison.variant}",
        "",
        f"Seeds: {seeds}. Each cell is the mean ± sample standard deviation over the seeds that "
        "finished (the mean alone when one did). Accuracies and forgetting are percentages "
        "averaged over the test experiences after the last training experience. Training time is "
        "wall time in seconds; sample passes count the prompts in training minibatches.",
        "",
        "| entry | finished | " + " | ".join(heading for heading, _ in COLUMNS) + " | error |",
        "|---" * (len(COLUMNS) + 3) + "|",
    ]
    for entry in comparison.entries:
        runs = comparison.runs_for(entry)
        cells = [
            format_stat(comparison.stat(entry, key), 0 if key == "train_sample_passes" else 1)
            for _, key in COLUMNS
        ]
        errors = "; ".join(f"seed {run.seed}: {run.error}" for run in runs if run.error)
        finished = f"{len(comparison.finished(entry))}/{len(runs)}"
        lines.append(f"| {_md(entry.label)} | {finished} | " + " | ".join(cells) + f" | {_md(errors)} |")

    names = comparison.experience_names or [f"E{i + 1}" for i in range(4)]
    lines += [
        "",
        "Mean D-Acc (%) over the test experiences seen so far, after each training experience:",
        "",
        "| entry | " + " | ".join(f"E{i + 1} {name}" for i, name in enumerate(names)) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for entry in comparison.entries:
        points = dict(comparison.curve(entry))
        cells = [format_stat(points[seen]) if seen in points else "-" for seen in range(1, len(names) + 1)]
        lines.append(f"| {_md(entry.label)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_comparison_csv(comparison: Comparison, path: Path) -> Path:
    """Write one row per entry: names, run counts, ``<key>_mean``/``<key>_std`` per column, errors.

    Empty cells mean undefined (no finished run, or a standard deviation of one value).
    """
    header = ["entry", "strategy", "plugins", "overrides", "seeds", "finished", "failed"]
    for _, key in COLUMNS:
        header += [f"{key}_mean", f"{key}_std"]
    header.append("errors")

    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for entry in comparison.entries:
            runs = comparison.runs_for(entry)
            finished = comparison.finished(entry)
            row: list[Any] = [
                entry.label, entry.strategy, "+".join(entry.plugins), ";".join(entry.overrides),
                ";".join(str(run.seed) for run in finished), len(finished), len(runs) - len(finished),
            ]
            for _, key in COLUMNS:
                stat = comparison.stat(entry, key)
                row += [_csv_number(stat.mean), _csv_number(stat.std)]
            row.append("; ".join(f"seed {run.seed}: {run.error}" for run in runs if run.error))
            writer.writerow(row)
    return path


def _csv_number(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.4f}"


def plot_d_acc_over_stream(comparison: Comparison, path: Path) -> Path:
    """Plot the mean D-Acc over seen test experiences after each experience, one line per entry.

    A shaded band shows ± one standard deviation where two or more seeds finished.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = comparison.experience_names or [f"E{i + 1}" for i in range(4)]
    figure, axis = plt.subplots(figsize=(9, 4.8))
    # 20 colours and 5 markers keep up to 100 entries apart; the default cycle repeats after 10.
    colours = [plt.get_cmap("tab20")(step) for step in range(20)]
    markers = "osD^v"
    for index, entry in enumerate(comparison.entries):
        points = comparison.curve(entry)
        if not points:
            continue
        xs = [seen for seen, _ in points]
        means = [stat.mean for _, stat in points]
        (line,) = axis.plot(xs, means, marker=markers[(index // len(colours)) % len(markers)],
                            color=colours[index % len(colours)], label=entry.label)
        stds = [stat.std for _, stat in points]
        if any(math.isnan(std) for std in stds):
            continue
        if len(points) == 1:  # a joint run has one point; a band would be invisible
            axis.errorbar(xs, means, yerr=stds, color=line.get_color(), capsize=4)
        else:
            low = [mean - std for mean, std in zip(means, stds, strict=True)]
            high = [mean + std for mean, std in zip(means, stds, strict=True)]
            axis.fill_between(xs, low, high, color=line.get_color(), alpha=0.15)

    axis.set_xticks(range(1, len(names) + 1), [f"E{i + 1}\n{name}" for i, name in enumerate(names)])
    axis.set_xlim(0.7, len(names) + 0.3)
    axis.set_ylim(0, 102)
    axis.set_xlabel("after training on")
    axis.set_ylabel("mean D-Acc over seen test experiences (%)")
    axis.set_title(f"D-Acc over the stream, CMRBench-{comparison.variant} (mean over seeds)")
    axis.grid(alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path
