"""The plugin manager: discovery, the autoload switch, validation, errors, order and tracing."""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pluggy
import pytest
import torch
from omegaconf import OmegaConf

from cmrkit.config import ConfigError
from cmrkit.extensions import ReplayPolicyInfo, RunContext, StrategyInfo, TrainingPluginInfo
from cmrkit.hookspecs import hookimpl
from cmrkit.pm import (
    AUTOLOAD_ENV,
    TRACE_ENV,
    CmrkitPluginManager,
    PluginError,
    PluginWarning,
    Provided,
    UnknownNameError,
    load_plugin_manager,
    use_plugin_manager,
)
from cmrkit.testing import make_run_context, quick_run_config

LISTENER_SOURCE = """
from cmrkit.hookspecs import hookimpl

@hookimpl
def cmrkit_models_added(registry, labels, experience):
    return None
"""


# -- fixtures and small plugins --------------------------------------------------------------


@pytest.fixture()
def fake_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Factory of installed-looking distributions (a dist-info folder on sys.path) with modules."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    modules: list[str] = []

    def make(name: str, entry_points: dict[str, str], sources: dict[str, str], version: str = "1.0") -> None:
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        lines = "".join(f"{key} = {value}\n" for key, value in entry_points.items())
        (info / "entry_points.txt").write_text(f"[cmrkit.plugins]\n{lines}")
        for module, source in sources.items():
            (site / f"{module}.py").write_text(source)
            modules.append(module)
        importlib.invalidate_caches()

    yield make
    for module in modules:
        sys.modules.pop(module, None)


@pytest.fixture(autouse=True)
def clean_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    monkeypatch.delenv(TRACE_ENV, raising=False)


class Listener:
    """Plugin object that appends its name to ``calls`` on every ``cmrkit_models_added``."""

    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name
        self.calls = calls

    @hookimpl
    def cmrkit_models_added(self, registry: Any, labels: list[int], experience: int) -> None:
        self.calls.append(self.name)


class FirstListener(Listener):
    @hookimpl(tryfirst=True)
    def cmrkit_models_added(self, registry: Any, labels: list[int], experience: int) -> None:
        self.calls.append(self.name)


class LastListener(Listener):
    @hookimpl(trylast=True)
    def cmrkit_models_added(self, registry: Any, labels: list[int], experience: int) -> None:
        self.calls.append(self.name)


class Marker:
    """Stand-in Avalanche plugin that remembers which training plugin made it, and its position."""

    def __init__(self, owner: str, position: int) -> None:
        self.owner = owner
        self.position = position


class TrainingPlugins:
    """Plugin that declares one training plugin, whose factory returns two markers."""

    def __init__(self, name: str, factory: Any = None) -> None:
        self.name = name
        self.factory = factory or (lambda options, context: [Marker(name, 1), Marker(name, 2)])

    @hookimpl
    def cmrkit_training_plugins(self) -> list[TrainingPluginInfo]:
        return [TrainingPluginInfo(name=self.name, factory=self.factory, description=f"test {self.name}")]


class Everything:
    """Plugin that provides one of each kind."""

    @hookimpl
    def cmrkit_strategies(self) -> list[StrategyInfo]:
        return [StrategyInfo(name="s1", factory=lambda *args: None, description="strategy one")]

    @hookimpl
    def cmrkit_training_plugins(self) -> list[TrainingPluginInfo]:
        return [TrainingPluginInfo(name="t1", factory=lambda *args: [], description="plugin one")]

    @hookimpl
    def cmrkit_replay_policies(self) -> list[ReplayPolicyInfo]:
        return [ReplayPolicyInfo(name="p1", policy_class=object, description="policy one")]

    @hookimpl
    def cmrkit_models_added(self, registry: Any, labels: list[int], experience: int) -> None:
        return None


def bare_context() -> RunContext:
    """A run context with only a config, enough for building training plugins."""
    nothing: Any = None
    return RunContext(
        config=OmegaConf.create({"plugins": {}}),
        benchmark=nothing,
        registry=nothing,
        device=torch.device("cpu"),
    )


# -- discovery and the autoload switch ----------------------------------------------------------


def test_own_plugins_load_first(fake_distribution):
    fake_distribution("aaa-plugin", {"aaa": "cmrkit_fake_aaa"}, {"cmrkit_fake_aaa": LISTENER_SOURCE})
    distributions = [record.distribution for record in load_plugin_manager().records.values()]
    first_other = next(i for i, name in enumerate(distributions) if name != "cmrkit")
    assert distributions[0] == "cmrkit"
    assert "cmrkit" not in distributions[first_other:]


def test_others_sorted_by_distribution(fake_distribution):
    fake_distribution("zeta-plugin", {"b": "cmrkit_fake_zeta"}, {"cmrkit_fake_zeta": LISTENER_SOURCE})
    fake_distribution(
        "alpha-plugin",
        {"z": "cmrkit_fake_alpha_z", "a": "cmrkit_fake_alpha_a"},
        {"cmrkit_fake_alpha_z": LISTENER_SOURCE, "cmrkit_fake_alpha_a": LISTENER_SOURCE},
    )
    names = [
        record.name for record in load_plugin_manager().records.values() if record.distribution != "cmrkit"
    ]
    assert names == ["a", "z", "b"]


def test_entry_point_record(fake_distribution):
    fake_distribution("aaa-plugin", {"aaa": "cmrkit_fake_aaa"}, {"cmrkit_fake_aaa": LISTENER_SOURCE}, "2.5")
    record = load_plugin_manager().records["aaa"]
    assert (record.distribution, record.version) == ("aaa-plugin", "2.5")
    assert record.module == "cmrkit_fake_aaa"
    assert record.hooks == ["cmrkit_models_added"]


@pytest.mark.parametrize("value", ["1", "true", "YES", "on"])
def test_autoload_off_loads_only_cmrkit(fake_distribution, monkeypatch, value):
    fake_distribution("aaa-plugin", {"aaa": "cmrkit_fake_aaa"}, {"cmrkit_fake_aaa": LISTENER_SOURCE})
    monkeypatch.setenv(AUTOLOAD_ENV, value)
    manager = load_plugin_manager()
    assert {record.distribution for record in manager.records.values()} == {"cmrkit"}
    assert manager.skipped == [("aaa", "aaa-plugin")]
    assert "cmrkit_fake_aaa" not in sys.modules


@pytest.mark.parametrize("value", ["", "0", "false"])
def test_autoload_on_otherwise(fake_distribution, monkeypatch, value):
    fake_distribution("aaa-plugin", {"aaa": "cmrkit_fake_aaa"}, {"cmrkit_fake_aaa": LISTENER_SOURCE})
    monkeypatch.setenv(AUTOLOAD_ENV, value)
    assert "aaa" in load_plugin_manager().records


def test_autoload_argument_wins(fake_distribution, monkeypatch):
    fake_distribution("aaa-plugin", {"aaa": "cmrkit_fake_aaa"}, {"cmrkit_fake_aaa": LISTENER_SOURCE})
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    assert "aaa" in load_plugin_manager(autoload=True).records


def test_load_twice_is_idempotent(fake_distribution):
    fake_distribution("aaa-plugin", {"aaa": "cmrkit_fake_aaa"}, {"cmrkit_fake_aaa": LISTENER_SOURCE})
    manager = load_plugin_manager()
    before = list(manager.records)
    manager.load_entry_points()
    assert list(manager.records) == before


def test_import_failure_names_plugin(fake_distribution):
    fake_distribution(
        "broken-plugin",
        {"broken": "cmrkit_fake_broken"},
        {"cmrkit_fake_broken": "raise ImportError('torchaudio is missing')"},
    )
    with pytest.raises(PluginError) as caught:
        load_plugin_manager()
    message = str(caught.value)
    assert "plugin 'broken'" in message
    assert "'broken-plugin'" in message
    assert "torchaudio is missing" in message
    assert AUTOLOAD_ENV in message


def test_import_failure_skipped_when_autoload_off(fake_distribution):
    fake_distribution(
        "broken-plugin", {"broken": "cmrkit_fake_broken"}, {"cmrkit_fake_broken": "raise ImportError('x')"}
    )
    assert "broken" not in load_plugin_manager(autoload=False).records


def test_invalid_entry_point_names_distribution(fake_distribution):
    source = "from cmrkit.hookspecs import hookimpl\n\n@hookimpl\ndef cmrkit_strategys():\n    return []\n"
    fake_distribution("typo-plugin", {"typo": "cmrkit_fake_typo"}, {"cmrkit_fake_typo": source})
    with pytest.raises(PluginError, match="'typo-plugin'"):
        load_plugin_manager()


def test_same_entry_point_name_rejected(fake_distribution):
    fake_distribution("one-plugin", {"dup": "cmrkit_fake_one"}, {"cmrkit_fake_one": LISTENER_SOURCE})
    fake_distribution("two-plugin", {"dup": "cmrkit_fake_two"}, {"cmrkit_fake_two": LISTENER_SOURCE})
    with pytest.raises(PluginError) as caught:
        load_plugin_manager()
    assert "'one-plugin'" in str(caught.value)
    assert "'two-plugin'" in str(caught.value)


# -- validation at registration -----------------------------------------------------------------


class Typo:
    @hookimpl
    def cmrkit_strategys(self) -> list[StrategyInfo]:
        return []


class ExtraArgument:
    @hookimpl
    def cmrkit_models_added(self, registry: Any, labels: list[int], experience: int, output: Any) -> None:
        return None


class Wrapper:
    @hookimpl(wrapper=True)
    def cmrkit_models_added(self, registry: Any, labels: list[int], experience: int) -> Any:
        return (yield)


class NoHooks:
    def cmrkit_models_added(self, registry: Any, labels: list[int], experience: int) -> None:
        return None


def test_typo_hook_rejected():
    manager = CmrkitPluginManager()
    with pytest.raises(PluginError) as caught:
        manager.register_plugin(Typo(), name="typo", distribution="typo-dist")
    message = str(caught.value)
    assert "plugin 'typo' from distribution 'typo-dist'" in message
    assert "unknown hook 'cmrkit_strategys'" in message
    assert "did you mean cmrkit_strategies?" in message


def test_typo_comes_from_check_pending():
    manager = CmrkitPluginManager()
    with pytest.raises(PluginError) as caught:
        manager.register_plugin(Typo(), name="typo")
    assert isinstance(caught.value.__cause__, pluggy.PluginValidationError)


def test_rejected_plugin_not_left_registered():
    manager = CmrkitPluginManager()
    with pytest.raises(PluginError):
        manager.register_plugin(Typo(), name="typo")
    assert manager.get_plugin("typo") is None
    assert "typo" not in manager.records
    assert manager.register_plugin(Listener("ok", []), name="ok") == "ok"


def test_plain_register_validates():
    with pytest.raises(PluginError, match="cmrkit_strategys"):
        CmrkitPluginManager().register(Typo())


def test_extra_argument_rejected():
    with pytest.raises(PluginError, match="output"):
        CmrkitPluginManager().register_plugin(ExtraArgument(), name="extra", distribution="extra-dist")


def test_wrapper_rejected():
    manager = CmrkitPluginManager()
    with pytest.raises(PluginError, match="wrapper"):
        manager.register_plugin(Wrapper(), name="wrapper")
    assert manager.get_plugin("wrapper") is None


def test_duplicate_name_rejected():
    manager = CmrkitPluginManager()
    manager.register_plugin(Listener("a", []), name="same", distribution="first-dist")
    with pytest.raises(PluginError, match="'first-dist'"):
        manager.register_plugin(Listener("b", []), name="same")


def test_plugin_without_hooks_warns():
    with pytest.warns(PluginWarning, match="implements no cmrkit hook"):
        CmrkitPluginManager().register_plugin(NoHooks(), name="none")


def test_registered_block_unregisters():
    manager = CmrkitPluginManager()
    with manager.registered(Listener("a", []), name="temporary"):
        assert "temporary" in manager.records
    assert manager.get_plugin("temporary") is None
    assert "temporary" not in manager.records


def test_use_plugin_manager():
    manager = CmrkitPluginManager()
    with use_plugin_manager(manager):
        assert load_plugin_manager() is manager
    assert load_plugin_manager(autoload=False) is not manager


def test_fixture_manager_is_loaded(cmrkit_plugin_manager):
    cmrkit_plugin_manager.register_plugin(Listener("a", []), name="fixture-listener")
    assert load_plugin_manager() is cmrkit_plugin_manager
    assert "fixture-listener" in load_plugin_manager().records


# -- errors inside hooks and factories -----------------------------------------------------------


class Failing:
    @hookimpl
    def cmrkit_models_added(self, registry: Any, labels: list[int], experience: int) -> None:
        raise RuntimeError("disk full")


def test_hook_error_names_plugin():
    manager = CmrkitPluginManager()
    manager.register_plugin(Failing(), name="failing", distribution="failing-dist")
    with pytest.raises(PluginError) as caught:
        manager.notify_models_added(None, [0], 0)
    message = str(caught.value)
    assert "plugin 'failing' from distribution 'failing-dist'" in message
    assert "cmrkit_models_added" in message
    assert "RuntimeError: disk full" in message
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_declared_wrong_type():
    plugin = SimpleNamespace(cmrkit_strategies=hookimpl(lambda: {"name": "x"}))
    manager = CmrkitPluginManager()
    manager.register_plugin(plugin, name="dict-returner", distribution="bad-dist")
    with pytest.raises(PluginError, match="'bad-dist'.*expected a list of StrategyInfo"):
        manager.strategies()


def test_declared_wrong_item():
    info = TrainingPluginInfo(name="t", factory=lambda *args: [], description="")
    plugin = SimpleNamespace(cmrkit_strategies=hookimpl(lambda: [info]))
    manager = CmrkitPluginManager()
    manager.register_plugin(plugin, name="mixed-up")
    with pytest.raises(PluginError, match="expected StrategyInfo"):
        manager.strategies()


def test_declared_twice():
    manager = CmrkitPluginManager()
    manager.register_plugin(TrainingPlugins("same"), name="first", distribution="first-dist")
    manager.register_plugin(TrainingPlugins("same"), name="second", distribution="second-dist")
    with pytest.raises(PluginError) as caught:
        manager.training_plugins()
    assert "first-dist" in str(caught.value)
    assert "second-dist" in str(caught.value)


def raising_factory(error: Exception) -> Any:
    def factory(options: Any, context: RunContext) -> list[Any]:
        raise error

    return factory


def test_factory_error_names_plugin():
    manager = CmrkitPluginManager()
    manager.register_plugin(
        TrainingPlugins("boom", raising_factory(RuntimeError("no GPU"))),
        name="boom-provider",
        distribution="boom-dist",
    )
    with pytest.raises(PluginError) as caught:
        manager.build_training_plugins(["boom"], bare_context())
    assert "'boom-provider' from distribution 'boom-dist'" in str(caught.value)
    assert "RuntimeError: no GPU" in str(caught.value)


def test_strategy_factory_error_names_plugin():
    def factory(context: Any, plugins: list[Any], evaluator: Any) -> Any:
        raise RuntimeError("no router")

    plugin = SimpleNamespace(
        cmrkit_strategies=hookimpl(lambda: [StrategyInfo(name="broken", factory=factory, description="")])
    )
    manager = CmrkitPluginManager()
    manager.register_plugin(plugin, name="broken-provider", distribution="broken-dist")
    with pytest.raises(PluginError) as caught:
        manager.build_strategy("broken", bare_context(), [], None)
    assert "strategy 'broken' of plugin 'broken-provider' from distribution 'broken-dist'" in str(
        caught.value
    )
    assert "RuntimeError: no router" in str(caught.value)


@pytest.mark.parametrize("error", [ConfigError("invalid plugins.x.y"), UnknownNameError("unknown policy")])
def test_factory_option_error_passes(error):
    manager = CmrkitPluginManager()
    manager.register_plugin(TrainingPlugins("strict", raising_factory(error)), name="strict")
    with pytest.raises(type(error)):
        manager.build_training_plugins(["strict"], bare_context())


def test_unknown_plugin_lists_available():
    manager = CmrkitPluginManager()
    manager.register_plugin(TrainingPlugins("replay"), name="replay")
    with pytest.raises(UnknownNameError, match="available: replay"):
        manager.check_training_plugins(["replya"])


def test_repeated_plugin_rejected():
    manager = CmrkitPluginManager()
    manager.register_plugin(TrainingPlugins("replay"), name="replay")
    with pytest.raises(ValueError, match="more than once"):
        manager.check_training_plugins(["replay", "replay"])


# -- records and listings -----------------------------------------------------------------------


def test_record_lists_hooks():
    manager = CmrkitPluginManager()
    manager.register_plugin(Everything(), name="everything")
    assert manager.records["everything"].hooks == [
        "cmrkit_models_added",
        "cmrkit_replay_policies",
        "cmrkit_strategies",
        "cmrkit_training_plugins",
    ]


def test_record_provides_every_kind():
    manager = CmrkitPluginManager()
    manager.register_plugin(Everything(), name="everything")
    provides = {str(item) for item in manager.plugin_records()[0].provides}
    assert provides == {
        "hook listener cmrkit_models_added",
        "strategy s1",
        "training plugin t1",
        "replay policy p1",
    }


def test_provider_of_strategy():
    manager = CmrkitPluginManager()
    manager.register_plugin(Everything(), name="everything", distribution="all-dist", version="3.1")
    record = manager.provider("strategy", "s1")
    assert (record.name, record.distribution, record.version) == ("everything", "all-dist", "3.1")


def test_unregister_updates_tables():
    manager = CmrkitPluginManager()
    manager.register_plugin(Everything(), name="everything")
    assert "s1" in manager.strategies()
    manager.unregister_plugin("everything")
    assert manager.strategies() == {}
    assert manager.records == {}


def test_provided_text():
    assert str(Provided("replay policy", "random")) == "replay policy random"


# -- order ------------------------------------------------------------------------------------


@pytest.mark.parametrize("registration", [("replay", "anchor"), ("anchor", "replay")])
@pytest.mark.parametrize("written", [["replay", "anchor"], ["anchor", "replay"]])
def test_training_plugins_in_written_order(registration, written):
    manager = CmrkitPluginManager()
    for name in registration:
        manager.register_plugin(TrainingPlugins(name), name=f"{name}-provider")
    built = manager.build_training_plugins(written, bare_context())
    assert [(plugin.owner, plugin.position) for plugin in built] == [
        (name, position) for name in written for position in (1, 2)
    ]


REAL_PLUGIN_TYPES = {"replay": "RoutingReplayPlugin", "anchor": "AnchorPlugin"}


@pytest.fixture(scope="module")
def real_plugin_modules() -> dict[str, Any]:
    anchor = pytest.importorskip("cmrkit.plugins.anchor")
    replay = pytest.importorskip("cmrkit.plugins.replay")
    return {"anchor": anchor, "replay": replay}


@pytest.mark.parametrize("registration", [("replay", "anchor"), ("anchor", "replay")])
@pytest.mark.parametrize("written", [["replay", "anchor"], ["anchor", "replay"]])
def test_real_plugins_in_written_order(
    real_plugin_modules, cmrkit_tiny_encoder, cmrkit_synthetic_data, registration, written
):
    manager = CmrkitPluginManager()
    for name in registration:
        manager.register_plugin(real_plugin_modules[name], name=name)
    config = quick_run_config(
        cmrkit_tiny_encoder,
        cmrkit_synthetic_data,
        manager=manager,
        plugins=written,
        overrides=["plugins.replay.policy=random"],
    )
    built = manager.build_training_plugins(written, make_run_context(config, manager))
    assert [type(plugin).__name__ for plugin in built] == [REAL_PLUGIN_TYPES[name] for name in written]


@pytest.mark.parametrize("written", [["replay", "anchor"], ["anchor", "replay"]])
def test_avalanche_plugin_list(real_plugin_modules, cmrkit_run, written):
    result = cmrkit_run("naive", written, ["plugins.replay.policy=random"])
    names = [type(plugin).__name__ for plugin in result.strategy.plugins]
    assert names == [
        *(REAL_PLUGIN_TYPES[name] for name in written),
        "TrainingMeter",
        "EvaluationPlugin",
        "PeriodicEval",
        "Clock",
    ]


def test_listeners_in_registration_order():
    calls: list[str] = []
    manager = CmrkitPluginManager()
    for name in ["zulu", "alpha", "mike"]:
        manager.register_plugin(Listener(name, calls), name=name)
    manager.notify_models_added(None, [0], 0)
    assert calls == ["zulu", "alpha", "mike"]


def test_tryfirst_and_trylast():
    calls: list[str] = []
    manager = CmrkitPluginManager()
    manager.register_plugin(LastListener("last", calls), name="last")
    manager.register_plugin(Listener("plain", calls), name="plain")
    manager.register_plugin(FirstListener("first", calls), name="first")
    manager.notify_models_added(None, [0], 0)
    assert calls == ["first", "plain", "last"]


def test_listener_result_returned():
    plugin = SimpleNamespace(cmrkit_models_added=hookimpl(lambda registry, labels, experience: len(labels)))
    manager = CmrkitPluginManager()
    manager.register_plugin(plugin, name="counter")
    assert manager.call_in_order("cmrkit_models_added", registry=None, labels=[1, 2], experience=0) == [
        ("counter", 2)
    ]


# -- tracing ------------------------------------------------------------------------------------


def traced_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "cmrkit.hooks"]


def test_trace_logs_listener_call(monkeypatch, caplog):
    monkeypatch.setenv(TRACE_ENV, "1")
    manager = CmrkitPluginManager()
    manager.register_plugin(Listener("a", []), name="listener", distribution="listener-dist", version="2.0")
    with caplog.at_level(logging.INFO, logger="cmrkit.hooks"):
        manager.notify_models_added(None, [3, 4], 1)
    message = traced_messages(caplog)[-1]
    assert message.startswith("cmrkit_models_added(registry=None, labels=[3, 4], experience=1)")
    assert "plugin listener (listener-dist 2.0) returned None" in message


def test_trace_logs_declared_names(caplog):
    manager = CmrkitPluginManager(trace=True)
    manager.register_plugin(Everything(), name="everything")
    with caplog.at_level(logging.INFO, logger="cmrkit.hooks"):
        manager.strategies()
    assert any(
        "cmrkit_strategies(): plugin everything" in message and "[StrategyInfo 's1']" in message
        for message in traced_messages(caplog)
    )


def test_trace_logs_every_hook(caplog):
    manager = CmrkitPluginManager(trace=True)
    manager.register_plugin(Everything(), name="everything")
    with caplog.at_level(logging.INFO, logger="cmrkit.hooks"):
        manager.strategies()
    traced = " ".join(traced_messages(caplog))
    for hook in ["cmrkit_strategies", "cmrkit_training_plugins", "cmrkit_replay_policies"]:
        assert f"{hook}(): plugin everything" in traced


def test_trace_logs_direct_call(caplog):
    manager = CmrkitPluginManager(trace=True)
    manager.register_plugin(Listener("a", []), name="listener")
    with caplog.at_level(logging.INFO, logger="cmrkit.hooks"):
        manager.hook.cmrkit_models_added(registry=None, labels=[1], experience=0)
    assert any("called through pm.hook: plugins listener" in m for m in traced_messages(caplog))


def test_trace_off_by_default(caplog):
    manager = CmrkitPluginManager()
    manager.register_plugin(Listener("a", []), name="listener")
    with caplog.at_level(logging.INFO, logger="cmrkit.hooks"):
        manager.notify_models_added(None, [3], 0)
    assert traced_messages(caplog) == []
