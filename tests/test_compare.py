import csv
import json
import math

import pytest

import cmrkit.compare as compare_module
from cmrkit.cli import main
from cmrkit.compare import (
    CompareEntry,
    Stat,
    d_acc_curve,
    format_stat,
    parse_entries,
    parse_entry,
    parse_seeds,
    split_entries,
)
from cmrkit.metrics import AccuracyMatrix

REPLAY = "naive+replay@plugins.replay.ratio=0.2"
REPLAY_LABEL = "naive+replay [replay.ratio=0.2]"
REPLAY_SLUG = "naive-replay-replay.ratio-0.2"
SUMMARY_KEYS = ("m_acc", "f_acc", "d_acc", "d_acc_top3", "d_forgetting", "train_seconds",
                "train_sample_passes")


def tiny_overrides(encoder, data):
    return [
        f"encoder.name={json.dumps(str(encoder))}", f"data.dir={json.dumps(str(data))}",
        "encoder.max_length=32", "router.dim=16", "train.epochs=1", "train.batch_size=8",
    ]


# -- entry syntax -----------------------------------------------------------------------------


def test_entry_strategy_only():
    assert parse_entry("naive") == CompareEntry("naive", (), (), "naive")


def test_entry_with_plugins_in_order():
    entry = parse_entry(" naive+replay+ewc ")
    assert entry.strategy == "naive"
    assert entry.plugins == ("replay", "ewc")
    assert entry.label == "naive+replay+ewc"


def test_entry_with_overrides():
    entry = parse_entry("naive+replay@plugins.replay.ratio=0.2;train.epochs=2")
    assert entry.overrides == ("plugins.replay.ratio=0.2", "train.epochs=2")
    assert entry.label == "naive+replay [replay.ratio=0.2; train.epochs=2]"


def test_entry_with_label():
    entry = parse_entry("replay-20:naive+replay@plugins.replay.ratio=0.2")
    assert entry.label == "replay-20"
    assert entry.strategy == "naive"
    assert entry.slug == "replay-20"


def test_entry_slug_is_folder_safe():
    assert parse_entry(REPLAY).slug == REPLAY_SLUG


@pytest.mark.parametrize("text, message", [
    ("", "STRATEGY"),
    ("naive+", "STRATEGY"),
    (":naive", "label"),
    ("naive@train.epochs", "KEY=VALUE"),
    ("naive@run.seed=3", "seed"),
    ("naive@run.plugins=[ewc]", "plugins"),
])
def test_entry_rejects_invalid(text, message):
    with pytest.raises(ValueError, match=message):
        parse_entry(text)


def test_split_keeps_bracketed_commas():
    assert split_entries("naive@eval.top_k=[1,3],bm25") == ["naive@eval.top_k=[1,3]", "bm25"]


def test_entries_reject_repeated_label():
    with pytest.raises(ValueError, match="twice"):
        parse_entries("naive,naive")


def test_entries_reject_empty_list():
    with pytest.raises(ValueError, match="no entries"):
        parse_entries(" , ")


def test_seeds_parse():
    assert parse_seeds("1,2, 3") == [1, 2, 3]


@pytest.mark.parametrize("text", ["1,x", "", "1,1"])
def test_seeds_reject_invalid(text):
    with pytest.raises(ValueError, match="seeds"):
        parse_seeds(text)


# -- statistics -------------------------------------------------------------------------------


def test_stat_mean_and_sample_std():
    stat = Stat.of([1.0, 2.0, 3.0, math.nan])
    assert stat.n == 3
    assert stat.mean == pytest.approx(2.0)
    assert stat.std == pytest.approx(1.0)


def test_format_stat():
    assert format_stat(Stat(12.345, 0.5, 2)) == "12.3 ± 0.5"
    assert format_stat(Stat(12.345, math.nan, 1)) == "12.3"
    assert format_stat(Stat(math.nan, math.nan, 0)) == "-"


def test_curve_of_joint_matrix_sits_at_last_experience():
    matrix = AccuracyMatrix()
    for test_exp, value in enumerate([40.0, 50.0, 60.0, 70.0]):
        matrix.record("d_acc", 0, test_exp, value)
    assert d_acc_curve(matrix) == [(4, 55.0)]


def test_curve_of_sequential_matrix():
    matrix = AccuracyMatrix()
    matrix.record("d_acc", 0, 0, 80.0)
    matrix.record("d_acc", 1, 0, 40.0)
    matrix.record("d_acc", 1, 1, 60.0)
    assert d_acc_curve(matrix) == [(1, 80.0), (2, 50.0)]


# -- a comparison run -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def comparison(cmrkit_tiny_encoder, cmrkit_synthetic_data, tmp_path_factory):
    """Run replay and bm25 plus a failing entry with two seeds through the CLI."""
    output = tmp_path_factory.mktemp("compare")
    calls = []
    original = compare_module.load_benchmark

    def counting(config):
        calls.append(config)
        return original(config)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compare_module, "load_benchmark", counting)
        code = main([
            "compare", "--strategies", f"{REPLAY},bm25,naive+bogus", "--seeds", "1,2",
            "--output", str(output), "--no-progress",
            *tiny_overrides(cmrkit_tiny_encoder, cmrkit_synthetic_data),
        ])
    with open(output / "comparison.csv", newline="", encoding="utf-8") as handle:
        rows = {row["entry"]: row for row in csv.DictReader(handle)}
    return {"code": code, "output": output, "rows": rows, "benchmark_loads": len(calls)}


def test_compare_exit_code_reports_failure(comparison):
    assert comparison["code"] == 1


def test_compare_builds_benchmark_once(comparison):
    assert comparison["benchmark_loads"] == 1


def test_compare_csv_has_mean_and_std(comparison):
    rows = comparison["rows"]
    assert list(rows) == [REPLAY_LABEL, "bm25", "naive+bogus"]
    replay = rows[REPLAY_LABEL]
    assert replay["finished"] == "2"
    assert replay["seeds"] == "1;2"
    assert replay["overrides"] == "plugins.replay.ratio=0.2"
    for key in SUMMARY_KEYS:
        assert math.isfinite(float(replay[f"{key}_mean"])), key
        assert math.isfinite(float(replay[f"{key}_std"])), key


def test_compare_csv_reports_failed_entry(comparison):
    bogus = comparison["rows"]["naive+bogus"]
    assert bogus["finished"] == "0"
    assert bogus["failed"] == "2"
    assert bogus["m_acc_mean"] == ""
    assert "unknown plugin 'bogus'" in bogus["errors"]


def test_compare_markdown(comparison):
    text = (comparison["output"] / "comparison.md").read_text(encoding="utf-8")
    replay_line = next(line for line in text.splitlines() if line.startswith(f"| {REPLAY_LABEL} | 2/2"))
    bogus_line = next(line for line in text.splitlines() if line.startswith("| naive+bogus | 0/2"))
    assert "±" in replay_line
    assert "unknown plugin 'bogus'" in bogus_line
    assert "D-Acc@3" in text


def test_compare_keeps_run_metrics(comparison):
    runs = comparison["output"] / "runs"
    for seed in (1, 2):
        document = json.loads((runs / REPLAY_SLUG / f"seed-{seed}" / "metrics.json").read_text())
        assert document["seed"] == seed
        assert document["plugins"] == ["replay"]
        assert document["overrides"] == ["plugins.replay.ratio=0.2"]
        assert (runs / "bm25" / f"seed-{seed}" / "metrics.json").is_file()
        assert "bogus" in (runs / "naive-bogus" / f"seed-{seed}" / "error.txt").read_text()


def test_compare_writes_plot(comparison):
    plot = comparison["output"] / "d_acc_over_stream.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_rejects_bad_shared_override(cmrkit_tiny_encoder, cmrkit_synthetic_data, tmp_path):
    code = main([
        "compare", "--strategies", "bm25", "--output", str(tmp_path), "--no-progress",
        *tiny_overrides(cmrkit_tiny_encoder, cmrkit_synthetic_data), "train.no_such_option=1",
    ])
    assert code == 2


def test_compare_rejects_bad_entry(tmp_path):
    assert main(["compare", "--strategies", "naive@run.seed=1", "--output", str(tmp_path)]) == 2
