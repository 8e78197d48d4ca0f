"""End to end with the real MiniLM encoder on a slice of the CMRBench mirror, through the console script."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

UNSEEN_PROMPT = "Translate this Spanish paragraph into English"


def cmrkit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cmrkit.cli", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory, cmrbench_mirror):
    workdir = tmp_path_factory.mktemp("e2e")
    result = cmrkit(
        "run", "--strategy", "naive", "--data-dir", str(cmrbench_mirror), "--output", "out",
        "--no-progress", "data.max_models_per_experience=12", "train.epochs=2", cwd=workdir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir / "out"


def test_e2e_run_writes_summary(minilm_run):
    summary = json.loads((minilm_run / "metrics.json").read_text())["summary"]
    assert summary["train_seconds"] > 0
    assert 0.0 <= summary["d_acc"] <= 100.0


def test_e2e_route_unseen_prompt(minilm_run, cmrbench_mirror):
    corpus = (cmrbench_mirror / "data" / "processed" / "cleaned-apibench-hf-val.json").read_text()
    assert UNSEEN_PROMPT not in corpus  # the prompt was never trained on
    result = cmrkit("route", "--checkpoint", str(minilm_run / "checkpoint"), "--top-k", "5", UNSEEN_PROMPT,
                    cwd=minilm_run)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout)
    assert len(answer["models"]) == 5
    assert all(model["model"] for model in answer["models"])
