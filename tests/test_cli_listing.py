"""``cmrkit plugins`` and ``cmrkit strategies``: tables, JSON, and the environment switches."""

from __future__ import annotations

import importlib
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cmrkit import __version__
from cmrkit.cli import EXIT_FAILURE, main
from cmrkit.extensions import ReplayPolicyInfo, StrategyInfo, TrainingPluginInfo
from cmrkit.hookspecs import hookimpl
from cmrkit.pm import AUTOLOAD_ENV, TRACE_ENV

LISTENER_SOURCE = """
from cmrkit.hookspecs import hookimpl

@hookimpl
def cmrkit_models_added(registry, labels, experience):
    return None
"""


class Everything:
    """Plugin that provides one of each kind."""

    @hookimpl
    def cmrkit_strategies(self) -> list[StrategyInfo]:
        return [
            StrategyInfo(
                name="listed_strategy",
                factory=lambda *args: None,
                description="strategy one",
                trainable=False,
            )
        ]

    @hookimpl
    def cmrkit_training_plugins(self) -> list[TrainingPluginInfo]:
        return [TrainingPluginInfo(name="listed_plugin", factory=lambda *args: [], description="plugin one")]

    @hookimpl
    def cmrkit_replay_policies(self) -> list[ReplayPolicyInfo]:
        return [ReplayPolicyInfo(name="listed_policy", policy_class=object, description="policy one")]

    @hookimpl
    def cmrkit_models_added(self, registry: Any, labels: list[int], experience: int) -> None:
        return None


@pytest.fixture(autouse=True)
def clean_cli_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No switches from the environment, and no console handler left on a closed capture stream."""
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    monkeypatch.delenv(TRACE_ENV, raising=False)
    yield
    root = logging.getLogger("cmrkit")
    for handler in [h for h in root.handlers if getattr(h, "_cmrkit_console", False)]:
        root.removeHandler(handler)


@pytest.fixture()
def fake_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An installed-looking distribution ``listing-plugin`` 4.2 with a listener entry point."""
    site = tmp_path / "site"
    info = site / "listing_plugin-4.2.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: listing-plugin\nVersion: 4.2\n")
    (info / "entry_points.txt").write_text("[cmrkit.plugins]\nlisting = cmrkit_fake_listing\n")
    (site / "cmrkit_fake_listing.py").write_text(LISTENER_SOURCE)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    yield "listing"
    monkeypatch.delitem(sys.modules, "cmrkit_fake_listing", raising=False)


@pytest.fixture()
def everything(cmrkit_plugin_manager):
    cmrkit_plugin_manager.register_plugin(
        Everything(), name="everything", distribution="all-dist", version="3.1"
    )
    return cmrkit_plugin_manager


def json_rows(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, dict[str, Any]]:
    assert main([*args, "--json"]) == 0
    return {row["name"]: row for row in json.loads(capsys.readouterr().out)}


def test_plugins_json_row(everything, capsys):
    row = json_rows(capsys, "plugins")["everything"]
    assert row["distribution"] == "all-dist"
    assert row["version"] == "3.1"
    assert row["module"] == "Everything"
    assert row["hooks"] == [
        "cmrkit_models_added",
        "cmrkit_replay_policies",
        "cmrkit_strategies",
        "cmrkit_training_plugins",
    ]


def test_plugins_json_provides(everything, capsys):
    provides = json_rows(capsys, "plugins")["everything"]["provides"]
    assert {(item["kind"], item["name"]) for item in provides} == {
        ("hook listener", "cmrkit_models_added"),
        ("strategy", "listed_strategy"),
        ("training plugin", "listed_plugin"),
        ("replay policy", "listed_policy"),
    }
    assert {"kind": "replay policy", "name": "listed_policy", "description": "policy one"} in provides


def test_plugins_json_lists_own(cmrkit_plugin_manager, capsys):
    row = json_rows(capsys, "plugins")["builtin-strategies"]
    assert row["distribution"] == "cmrkit"
    assert row["version"] == __version__
    assert {"kind": "strategy", "name": "naive"} in [
        {"kind": item["kind"], "name": item["name"]} for item in row["provides"]
    ]


def test_plugins_table(everything, capsys):
    assert main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "DISTRIBUTION", "VERSION", "PROVIDES", "HOOKS"]
    row = next(line for line in lines if line.startswith("everything "))
    assert "all-dist" in row
    assert "strategy listed_strategy" in row
    assert "hook listener cmrkit_models_added" in row


def test_strategies_json_row(everything, capsys):
    row = json_rows(capsys, "strategies")["listed_strategy"]
    assert (row["plugin"], row["distribution"], row["version"]) == ("everything", "all-dist", "3.1")
    assert row["description"] == "strategy one"
    assert row["trainable"] is False


def test_strategies_json_options(cmrkit_plugin_manager, capsys):
    options = json_rows(capsys, "strategies")["carve"]["options"]
    assert options
    assert all(option.startswith("strategies.carve.") for option in options)


def test_strategies_table(everything, capsys):
    assert main(["strategies"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "DISTRIBUTION", "VERSION", "PLUGIN", "DESCRIPTION"]
    assert any(line.split()[:4] == ["listed_strategy", "all-dist", "3.1", "everything"] for line in lines)


def test_installed_plugin_listed(fake_distribution, capsys):
    row = json_rows(capsys, "plugins")[fake_distribution]
    assert (row["distribution"], row["version"]) == ("listing-plugin", "4.2")


def test_autoload_off_hides_plugin(fake_distribution, monkeypatch, capsys):
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    rows = json_rows(capsys, "plugins")
    assert fake_distribution not in rows
    assert {row["distribution"] for row in rows.values()} == {"cmrkit"}


def test_trace_switch_logs_calls(fake_distribution, monkeypatch, capsys, caplog):
    monkeypatch.setenv(TRACE_ENV, "1")
    caplog.set_level(logging.INFO, logger="cmrkit.hooks")
    json_rows(capsys, "plugins")
    messages = [record.getMessage() for record in caplog.records if record.name == "cmrkit.hooks"]
    assert any(
        message.startswith("cmrkit_strategies(): plugin builtin-strategies (cmrkit") for message in messages
    )
    assert any("registered plugin listing from listing-plugin 4.2" in message for message in messages)


def test_broken_plugin_exit_code(tmp_path, monkeypatch, capsys):
    site = tmp_path / "site"
    info = site / "broken_listing-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-listing\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[cmrkit.plugins]\nbroken = cmrkit_fake_missing_module\n")
    monkeypatch.syspath_prepend(str(site))
    assert main(["plugins"]) == EXIT_FAILURE
    error = capsys.readouterr().err
    assert "plugin 'broken' from distribution 'broken-listing' failed to import" in error
