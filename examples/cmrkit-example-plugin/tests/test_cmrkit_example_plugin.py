"""Tests of the example plugin, written with the fixtures that cmrkit installs as a pytest plugin."""

from __future__ import annotations

import json
import logging
import random
from collections import Counter

import pytest
import torch
from cmrkit.cli import main
from cmrkit.testing import ModelsAddedRecorder, synthetic_replay_candidates

from cmrkit_example_plugin import hooks
from cmrkit_example_plugin.round_robin import PerModelRoundRobin


@pytest.fixture()
def manager(cmrkit_plugin_manager):
    """cmrkit's own plugins plus this one, registered for the test only."""
    cmrkit_plugin_manager.register_plugin(hooks, name="example")
    return cmrkit_plugin_manager


def test_hooks_declare_strategy(manager):
    assert manager.provider("strategy", "nearest_mean").name == "example"


def test_hooks_declare_policy(manager):
    assert "per_model_round_robin" in manager.replay_policies()


def test_listing_shows_plugin(manager, capsys):
    assert main(["plugins", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["example"]["hooks"] == ["cmrkit_models_added", "cmrkit_replay_policies", "cmrkit_strategies"]


def test_round_robin_balances_models():
    candidates = synthetic_replay_candidates(models=6, prompts_per_model=4)
    chosen = PerModelRoundRobin(options=None).select(candidates, budget=12, rng=random.Random(0))
    per_model = Counter(candidates.labels[index] for index in chosen)
    assert sorted(per_model.values()) == [2] * 6


def test_nearest_mean_run(manager, cmrkit_run, caplog):
    recorder = ModelsAddedRecorder()
    manager.register_plugin(recorder, name="recorder")
    with caplog.at_level(logging.INFO, logger="cmrkit.plugins.example"):
        result = cmrkit_run("nearest_mean", ["replay"], ["plugins.replay.policy=per_model_round_robin"])
    assert result.complete
    assert [experience for _, experience in recorder.calls] == [0, 1, 2, 3]
    assert "experience 1 added" in caplog.text
    assert torch.isfinite(result.strategy.model.head.weight).all()
