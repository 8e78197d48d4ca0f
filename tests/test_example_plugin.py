"""The example plugin distribution: its parts in-process, and installed into a fresh virtual env."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from cmrkit.encoder import QueryEncoder
from cmrkit.pm import AUTOLOAD_ENV, TRACE_ENV
from cmrkit.testing import synthetic_replay_candidates

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = REPO_ROOT / "examples" / "cmrkit-example-plugin"
DISTRIBUTION = "cmrkit-example-plugin"

pytest_plugins = ["pytester"]


@pytest.fixture(scope="module")
def example() -> Any:
    """The example's hook module, imported from its source folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(EXAMPLE / "src"))
        from cmrkit_example_plugin import hooks

        yield hooks
    for name in [name for name in sys.modules if name.startswith("cmrkit_example_plugin")]:
        del sys.modules[name]


@pytest.fixture()
def manager(example, cmrkit_plugin_manager):
    cmrkit_plugin_manager.register_plugin(example, name="example", distribution=DISTRIBUTION)
    return cmrkit_plugin_manager


def round_robin(options: Any = None) -> Any:
    from cmrkit_example_plugin.round_robin import PerModelRoundRobin

    return PerModelRoundRobin(options)


# -- in-process -----------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [1, 5, 6, 13, 23])
def test_round_robin_balanced(example, budget):
    candidates = synthetic_replay_candidates(models=6, prompts_per_model=4)
    chosen = round_robin().select(candidates, budget, random.Random(1))
    counts = Counter(candidates.labels[index] for index in chosen)
    assert len(chosen) == budget
    assert len(set(chosen)) == budget
    assert max(counts.values()) - min(counts.get(label, 0) for label in range(6)) <= 1


@pytest.mark.parametrize(("budget", "expected"), [(0, 0), (-3, 0), (24, 24), (100, 24)])
def test_round_robin_budget_bounds(example, budget, expected):
    candidates = synthetic_replay_candidates(models=6, prompts_per_model=4)
    assert len(round_robin().select(candidates, budget, random.Random(0))) == expected


def test_round_robin_uneven_models(example):
    candidates = synthetic_replay_candidates(models=3, prompts_per_model=4)
    candidates.labels = [0] * 10 + [1, 2]
    chosen = round_robin().select(candidates, 6, random.Random(0))
    assert Counter(candidates.labels[index] for index in chosen) == {0: 4, 1: 1, 2: 1}


def test_round_robin_seeded(example):
    candidates = synthetic_replay_candidates()
    first = round_robin().select(candidates, 9, random.Random(7))
    assert round_robin().select(candidates, 9, random.Random(7)) == first


def test_example_declarations(manager):
    assert manager.provider("strategy", "nearest_mean").distribution == DISTRIBUTION
    assert manager.provider("replay policy", "per_model_round_robin").distribution == DISTRIBUTION


def test_nearest_mean_rows_are_means(manager, cmrkit_run, cmrkit_tiny_encoder):
    result = cmrkit_run("nearest_mean")
    router = result.strategy.model.eval()
    prompts: dict[int, list[str]] = {}
    for experience in result.context.benchmark.train_stream:
        for prompt, label, *_ in experience.dataset:
            prompts.setdefault(int(label), []).append(prompt)

    with torch.no_grad():
        for label, texts in prompts.items():
            mean = router.embed(router.encoder.tokenize(texts)).mean(dim=0)
            row = router.head.weight[label]
            assert float(F.cosine_similarity(mean, row, dim=0)) == pytest.approx(1.0, abs=1e-5), label


def test_nearest_mean_keeps_encoder(manager, cmrkit_run, cmrkit_tiny_encoder):
    result = cmrkit_run("nearest_mean")
    trained = result.strategy.model.encoder.backbone.state_dict()
    original = QueryEncoder(str(cmrkit_tiny_encoder), max_length=32).backbone.state_dict()
    assert all(torch.equal(trained[key], original[key]) for key in original)


def test_example_tests_pass(example, pytester):
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests"))
    result.assert_outcomes(passed=5)


def test_listener_logs(manager, caplog, cmrkit_run):
    caplog.set_level(logging.INFO, logger="cmrkit.plugins.example")
    cmrkit_run("naive")
    messages = [record.getMessage() for record in caplog.records if record.name == "cmrkit.plugins.example"]
    assert len(messages) == 4
    assert messages[0].startswith("experience 1 added 6 models (")


# -- installed into a virtual environment -------------------------------------------------------


def clean_environment(**extra: str) -> dict[str, str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("CMRKIT_") and key != "PYTHONPATH"
    }
    environment.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
        OMP_NUM_THREADS="1",
    )
    environment.update(extra)
    return environment


def check_run(command: list[str | Path], cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=clean_environment(**extra),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory) -> Path:
    """Python of a fresh venv that can import the system site-packages and has the example installed."""
    root = tmp_path_factory.mktemp("example-venv")
    check_run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", root / "venv"], root)
    python = root / "venv" / "bin" / "python"
    source = shutil.copytree(
        EXAMPLE, root / "source", ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    # pip comes from the system site-packages but installs into the venv it runs in. --no-index
    # keeps it off the network; --no-build-isolation builds with the system setuptools.
    check_run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            source,
        ],
        root,
    )
    return python


def cli_json(python: Path, cwd: Path, *args: str, **extra: str) -> dict[str, dict[str, Any]]:
    output = check_run([python, "-m", "cmrkit.cli", *args, "--json"], cwd, **extra).stdout
    return {row["name"]: row for row in json.loads(output)}


@pytest.mark.slow
def test_installed_plugins_listing(venv_python, tmp_path):
    row = cli_json(venv_python, tmp_path, "plugins")["example"]
    assert (row["distribution"], row["version"]) == (DISTRIBUTION, "0.1.0")
    assert row["hooks"] == ["cmrkit_models_added", "cmrkit_replay_policies", "cmrkit_strategies"]
    assert {(item["kind"], item["name"]) for item in row["provides"]} == {
        ("hook listener", "cmrkit_models_added"),
        ("strategy", "nearest_mean"),
        ("replay policy", "per_model_round_robin"),
    }


@pytest.mark.slow
def test_installed_autoload_off(venv_python, tmp_path):
    rows = cli_json(venv_python, tmp_path, "plugins", **{AUTOLOAD_ENV: "1"})
    assert "example" not in rows
    assert {row["distribution"] for row in rows.values()} == {"cmrkit"}


@pytest.mark.slow
def test_installed_strategies_listing(venv_python, tmp_path):
    row = cli_json(venv_python, tmp_path, "strategies")["nearest_mean"]
    assert (row["plugin"], row["distribution"], row["version"]) == ("example", DISTRIBUTION, "0.1.0")
    assert row["options"] == ["strategies.nearest_mean.weighted"]


@pytest.mark.slow
def test_installed_run(venv_python, tmp_path, cmrkit_tiny_encoder, cmrkit_synthetic_data):
    output = tmp_path / "run"
    result = check_run(
        [
            venv_python,
            "-m",
            "cmrkit.cli",
            "run",
            "--strategy",
            "nearest_mean",
            "--plugins",
            "replay",
            "--output",
            output,
            "plugins.replay.policy=per_model_round_robin",
            f"encoder.name={cmrkit_tiny_encoder}",
            f"data.dir={cmrkit_synthetic_data}",
            "train.epochs=1",
            "run.progress=false",
            "router.dim=16",
            "encoder.max_length=32",
            "run.threads=1",
        ],
        tmp_path,
        **{TRACE_ENV: "1"},
    )
    summary = json.loads((output / "metrics.json").read_text())["summary"]
    assert 0.0 <= summary["m_acc"] <= 100.0
    assert "cmrkit.plugins.example: experience 4 added" in result.stderr
    assert f"plugin example ({DISTRIBUTION} 0.1.0) returned None" in result.stderr
