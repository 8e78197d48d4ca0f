import json

import pytest

from cmrkit.cli import EXIT_USAGE, main


def quick_args(encoder, data_dir, output):
    return [
        "--data-dir", str(data_dir), "--output", str(output), "--no-progress",
        f"encoder.name={encoder}", "encoder.max_length=32", "router.dim=16",
        "train.epochs=2", "train.batch_size=8",
    ]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, cmrkit_tiny_encoder, cmrkit_synthetic_data):
    output = tmp_path_factory.mktemp("cli") / "naive"
    arguments = quick_args(cmrkit_tiny_encoder, cmrkit_synthetic_data, output)
    code = main(["run", "--strategy", "naive", *arguments])
    assert code == 0
    return output


def test_run_writes_outputs(trained_run):
    for name in ("config.yaml", "metrics.json", "summary.md", "run.log", "accuracy_matrix.png",
                 "accuracy_d_acc.csv", "checkpoint/router.safetensors", "checkpoint/registry.json",
                 "checkpoint/config.yaml", "checkpoint/router.json"):
        assert (trained_run / name).is_file(), name


def test_run_checkpoint_has_no_pickles(trained_run):
    suffixes = {path.suffix for path in (trained_run / "checkpoint").rglob("*") if path.is_file()}
    assert not suffixes & {".pt", ".pkl", ".bin", ".pickle"}


def test_metrics_summary_keys(trained_run):
    document = json.loads((trained_run / "metrics.json").read_text())
    summary = document["summary"]
    for key in ("m_acc", "f_acc", "d_acc", "m_acc_top3", "d_acc_top3", "m_forgetting",
                "d_forgetting", "train_seconds"):
        assert key in summary, key
    assert 0.0 <= summary["d_acc"] <= 100.0
    assert document["complete"] is True


def test_metrics_matrix_is_lower_triangular(trained_run):
    table = json.loads((trained_run / "metrics.json").read_text())["accuracy_matrix"]["m_acc"]
    assert len(table) == 4
    assert table[0][1] is None
    assert all(value is not None for value in table[3])


def test_route_prompts_from_arguments(trained_run, capsys):
    code = main(["route", "--checkpoint", str(trained_run / "checkpoint"), "--top-k", "3",
                 "translate this spanish language text", "detect objects in my image"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert len(lines) == 2
    answer = json.loads(lines[0])
    assert answer["prompt"] == "translate this spanish language text"
    assert len(answer["models"]) == 3
    assert set(answer["models"][0]) == {"model", "score", "domain", "family"}


def test_route_scores_descend(trained_run, capsys):
    main(["route", "--checkpoint", str(trained_run / "checkpoint"), "--top-k", "5", "transcribe speech"])
    scores = [model["score"] for model in json.loads(capsys.readouterr().out)["models"]]
    assert scores == sorted(scores, reverse=True)


def test_route_input_file_jsonl_and_text(trained_run, tmp_path, capsys):
    source = tmp_path / "prompts.jsonl"
    source.write_text('{"prompt": "translate spanish"}\n\nplain text prompt about audio\n')
    output = tmp_path / "routed.jsonl"
    code = main(["route", "--checkpoint", str(trained_run / "checkpoint"), "--input", str(source),
                 "--output", str(output)])
    assert code == 0
    assert len(output.read_text().splitlines()) == 2


def test_route_bad_jsonl_names_line(trained_run, tmp_path, capsys):
    source = tmp_path / "prompts.jsonl"
    source.write_text('{"prompt": "ok"}\n{"text": "no prompt field"}\n')
    code = main(["route", "--checkpoint", str(trained_run / "checkpoint"), "--input", str(source)])
    assert code == EXIT_USAGE
    assert "prompts.jsonl:2" in capsys.readouterr().err


def test_route_without_prompts_fails(trained_run, capsys):
    assert main(["route", "--checkpoint", str(trained_run / "checkpoint")]) == EXIT_USAGE
    assert "no prompts" in capsys.readouterr().err


def test_route_bad_top_k_fails(trained_run, capsys):
    assert main(["route", "--checkpoint", str(trained_run / "checkpoint"), "--top-k", "0", "x"]) == EXIT_USAGE
    assert "--top-k 0" in capsys.readouterr().err


def test_route_missing_checkpoint_fails(tmp_path, capsys):
    assert main(["route", "--checkpoint", str(tmp_path), "hello"]) == EXIT_USAGE
    assert "router.json" in capsys.readouterr().err


def test_run_unknown_strategy_lists_available(tmp_path, capsys):
    code = main(["run", "--strategy", "nope", "--output", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert "unknown strategy 'nope'" in error
    assert "naive" in error
    assert not (tmp_path / "out").exists()


def test_run_unknown_plugin_fails_before_training(tmp_path, capsys):
    code = main(["run", "--strategy", "naive", "--plugins", "nope", "--output", str(tmp_path / "out")])
    assert code == EXIT_USAGE
    assert "unknown plugin 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_run_bad_override_fails(tmp_path, capsys):
    code = main(["run", "--output", str(tmp_path / "out"), "train.epochs=lots"])
    assert code == EXIT_USAGE
    assert "train.epochs" in capsys.readouterr().err


def test_run_missing_data_dir_fails(tmp_path, capsys):
    code = main(["run", "--data-dir", str(tmp_path / "absent"), "--output", str(tmp_path / "out")])
    assert code == EXIT_USAGE
    assert "absent" in capsys.readouterr().err


def test_print_config_shows_precedence(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("train:\n  epochs: 9\n  batch_size: 5\n")
    code = main(["run", "--config", str(config), "--print-config", "train.epochs=2"])
    text = capsys.readouterr().out
    assert code == 0
    assert "epochs: 2" in text
    assert "batch_size: 5" in text


def test_route_reads_jsonl_from_stdin(trained_run, monkeypatch, capsys):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO('{"prompt": "translate spanish"}\nplain prompt\n'))
    code = main(["route", "--checkpoint", str(trained_run / "checkpoint"), "--input", "-"])
    prompts = [json.loads(line)["prompt"] for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    assert prompts == ["translate spanish", "plain prompt"]


def test_route_non_utf8_file_named(trained_run, tmp_path, capsys):
    source = tmp_path / "latin1.txt"
    source.write_bytes(b"\xff\xfe caf\xe9\n")
    code = main(["route", "--checkpoint", str(trained_run / "checkpoint"), "--input", str(source)])
    assert code == EXIT_USAGE
    assert "latin1.txt: not UTF-8" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.epochs=0", "train.epochs=0"),
        ("train.batch_size=0", "train.batch_size=0"),
        ("eval.top_k=[0]", "eval.top_k"),
        ("data.variant=huge", "data.variant=huge"),
        ("run.device=banana", "run.device=banana"),
        ("encoder.name=/nonexistent/encoder", "encoder.name=/nonexistent/encoder"),
        ("data.max_models_per_experience=0", "data.max_models_per_experience=0"),
    ],
)
def test_run_rejects_bad_values_early(tmp_path, capsys, override, key):
    code = main(["run", "--output", str(tmp_path / "out"), override])
    assert code == EXIT_USAGE
    assert key in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_run_repeated_plugin_is_usage_error(tmp_path, capsys):
    code = main(["run", "--plugins", "anchor,anchor", "--output", str(tmp_path / "out")])
    assert code == EXIT_USAGE
    assert "more than once" in capsys.readouterr().err


def test_route_damaged_weights_named(trained_run, tmp_path, capsys):
    import shutil

    damaged = tmp_path / "checkpoint"
    shutil.copytree(trained_run / "checkpoint", damaged)
    (damaged / "router.safetensors").write_bytes(b"not a safetensors file")
    assert main(["route", "--checkpoint", str(damaged), "hello"]) == EXIT_USAGE
    assert "router.safetensors is damaged" in capsys.readouterr().err
