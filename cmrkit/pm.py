"""The cmrkit plugin manager: entry-point discovery, validation, ordered hook calls and tracing.

Rules, all tested in ``tests/test_plugin_manager.py``:

- Discovery: every entry point in the ``cmrkit.plugins`` group is imported and registered under
  its entry-point name. cmrkit's own entry points come first, then the others sorted by
  distribution name and entry-point name. ``CMRKIT_DISABLE_PLUGIN_AUTOLOAD=1`` (any of
  ``1``, ``true``, ``yes``) registers only the entry points of the ``cmrkit`` distribution.
- Order: cmrkit calls hook implementations in registration order (pluggy itself calls them
  last-registered-first). Training plugins selected with ``--plugins a,b`` become Avalanche
  plugins in exactly the written order, whatever the install order.
- Errors: a plugin that fails to import, has a hook implementation without a matching hookspec,
  or raises inside a hook produces :class:`PluginError` naming the plugin and its distribution.
- Tracing: ``CMRKIT_TRACE_HOOKS=1`` (or ``trace=True``) logs every hook call with its plugin and
  result on the ``cmrkit.hooks`` logger at INFO level.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from cmrkit import hookspecs
from cmrkit.extensions import ReplayPolicyInfo, RunContext, StrategyInfo, TrainingPluginInfo

logger = logging.getLogger("cmrkit.hooks")

ENTRY_POINT_GROUP = "cmrkit.plugins"
AUTOLOAD_ENV = "CMRKIT_DISABLE_PLUGIN_AUTOLOAD"
TRACE_ENV = "CMRKIT_TRACE_HOOKS"
OWN_DISTRIBUTION = "cmrkit"


class PluginError(RuntimeError):
    """A plugin failed to load, failed validation, or raised inside a hook."""


class UnknownNameError(KeyError):
    """A strategy, training plugin or replay policy name that no loaded plugin provides."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass
class PluginRecord:
    """What cmrkit knows about one registered plugin."""

    name: str
    distribution: str
    version: str
    module: str
    hooks: list[str] = field(default_factory=list)
    provides: list[str] = field(default_factory=list)


class CmrkitPluginManager(pluggy.PluginManager):
    """A pluggy ``PluginManager`` for the ``cmrkit`` project with cmrkit's order and error rules.

    Args:
        trace: Log every hook call; defaults to the ``CMRKIT_TRACE_HOOKS`` environment switch.
    """

    def __init__(self, *, trace: bool | None = None) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self.trace_calls = _env_flag(TRACE_ENV) if trace is None else trace
        self.records: dict[str, PluginRecord] = {}
        self._order: list[str] = []
        self._tables: dict[str, dict[str, Any]] | None = None

    # -- loading ---------------------------------------------------------------------------

    def load_entry_points(self, *, autoload: bool | None = None) -> None:
        """Import and register the plugins of the ``cmrkit.plugins`` entry-point group.

        Args:
            autoload: ``False`` loads only cmrkit's own entry points; ``None`` reads
                ``CMRKIT_DISABLE_PLUGIN_AUTOLOAD``.
        """
        if autoload is None:
            autoload = not _env_flag(AUTOLOAD_ENV)
        points = sorted(
            metadata.entry_points(group=ENTRY_POINT_GROUP),
            key=lambda ep: (_dist_name(ep) != OWN_DISTRIBUTION, _dist_name(ep), ep.name),
        )
        for point in points:
            dist = _dist_name(point)
            if not autoload and dist != OWN_DISTRIBUTION:
                logger.debug("autoload disabled: skipping plugin %s from %s", point.name, dist)
                continue
            if self.get_plugin(point.name) is not None:
                continue
            try:
                plugin = point.load()
            except Exception as error:
                raise PluginError(
                    f"plugin {point.name!r} from distribution {dist!r} failed to import "
                    f"({point.value}): {error}. Fix or uninstall {dist}, or set "
                    f"{AUTOLOAD_ENV}=1 to load only cmrkit's own plugins."
                ) from error
            self.register_plugin(plugin, name=point.name, distribution=dist, version=_dist_version(point))

    def register_plugin(
        self, plugin: object, *, name: str, distribution: str = "(not installed)", version: str = ""
    ) -> None:
        """Register ``plugin`` under ``name`` and validate its hooks against the hookspecs."""
        try:
            self.register(plugin, name=name)
            self.check_pending()
        except pluggy.PluginValidationError as error:
            if self.get_plugin(name) is not None:
                self.unregister(name=name)
            raise PluginError(
                f"plugin {name!r} from distribution {distribution!r} is invalid: {error}. "
                f"Hook implementations must match a hookspec in cmrkit.hookspecs "
                f"({', '.join(sorted(self._spec_names()))})."
            ) from error

        hooks = sorted(impl_hook for impl_hook in self._spec_names() if self._implements(name, impl_hook))
        self.records[name] = PluginRecord(
            name=name,
            distribution=distribution,
            version=version,
            module=getattr(plugin, "__name__", type(plugin).__name__),
            hooks=hooks,
        )
        self._order.append(name)
        self._tables = None

    def unregister_plugin(self, name: str) -> None:
        """Unregister a plugin registered with :meth:`register_plugin`."""
        self.unregister(name=name)
        self.records.pop(name, None)
        self._order.remove(name)
        self._tables = None

    def _spec_names(self) -> list[str]:
        return [name for name in dir(hookspecs) if name.startswith("cmrkit_")]

    def _implements(self, plugin_name: str, hook_name: str) -> bool:
        caller = getattr(self.hook, hook_name)
        return any(impl.plugin_name == plugin_name for impl in caller.get_hookimpls())

    # -- calling ---------------------------------------------------------------------------

    def call_in_order(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call every implementation of ``hook_name`` in registration order.

        Returns ``(plugin name, result)`` pairs, skipping ``None`` results. An exception inside an
        implementation becomes :class:`PluginError` naming the plugin and its distribution.
        """
        caller = getattr(self.hook, hook_name)
        by_plugin = {impl.plugin_name: impl for impl in caller.get_hookimpls()}
        results: list[tuple[str, Any]] = []
        for name in self._order:
            impl = by_plugin.get(name)
            if impl is None:
                continue
            args = {arg: kwargs[arg] for arg in impl.argnames}
            try:
                result = impl.function(**args)
            except Exception as error:
                record = self.records[name]
                raise PluginError(
                    f"plugin {name!r} from distribution {record.distribution!r} raised in "
                    f"{hook_name}: {type(error).__name__}: {error}"
                ) from error
            if self.trace_calls:
                logger.info("hook %s: plugin %s returned %r", hook_name, name, result)
            if result is not None:
                results.append((name, result))
        return results

    # -- tables ----------------------------------------------------------------------------

    def _build_tables(self) -> dict[str, dict[str, Any]]:
        tables: dict[str, dict[str, Any]] = {"strategy": {}, "training plugin": {}, "replay policy": {}}
        hooks = {
            "strategy": "cmrkit_strategies",
            "training plugin": "cmrkit_training_plugins",
            "replay policy": "cmrkit_replay_policies",
        }
        for kind, hook_name in hooks.items():
            for plugin_name, infos in self.call_in_order(hook_name):
                for info in infos:
                    previous = tables[kind].get(info.name)
                    if previous is not None:
                        raise PluginError(
                            f"{kind} {info.name!r} is declared by plugin {previous[0]!r} and by "
                            f"plugin {plugin_name!r} ({self.records[plugin_name].distribution}); "
                            "uninstall one of them"
                        )
                    tables[kind][info.name] = (plugin_name, info)
                    provided = f"{kind} {info.name}"
                    if provided not in self.records[plugin_name].provides:
                        self.records[plugin_name].provides.append(provided)
        return tables

    def _table(self, kind: str) -> dict[str, Any]:
        if self._tables is None:
            self._tables = self._build_tables()
        return self._tables[kind]

    def strategies(self) -> dict[str, StrategyInfo]:
        """Every declared strategy, keyed and sorted by name."""
        return {name: entry[1] for name, entry in sorted(self._table("strategy").items())}

    def training_plugins(self) -> dict[str, TrainingPluginInfo]:
        """Every declared training plugin, keyed and sorted by name."""
        return {name: entry[1] for name, entry in sorted(self._table("training plugin").items())}

    def replay_policies(self) -> dict[str, ReplayPolicyInfo]:
        """Every declared replay policy, keyed and sorted by name."""
        return {name: entry[1] for name, entry in sorted(self._table("replay policy").items())}

    def provider(self, kind: str, name: str) -> PluginRecord:
        """The record of the plugin that declares ``kind`` ``name`` (e.g. ``"strategy"``, ``"naive"``)."""
        return self.records[self._table(kind)[name][0]]

    def strategy(self, name: str) -> StrategyInfo:
        """Look up a strategy; :class:`UnknownNameError` lists the available ones."""
        return _lookup(self.strategies(), name, "strategy", "--strategy")

    def training_plugin(self, name: str) -> TrainingPluginInfo:
        """Look up a training plugin; :class:`UnknownNameError` lists the available ones."""
        return _lookup(self.training_plugins(), name, "plugin", "--plugins")

    def replay_policy(self, name: str) -> ReplayPolicyInfo:
        """Look up a replay policy; :class:`UnknownNameError` lists the available ones."""
        return _lookup(self.replay_policies(), name, "replay policy", "plugins.replay.policy")

    def check_training_plugins(self, names: Iterable[str]) -> list[TrainingPluginInfo]:
        """Validate a ``--plugins`` list before any training: known names, no repeats."""
        names = list(names)
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"plugin {', '.join(repeated)} listed more than once in --plugins {','.join(names)}")
        return [self.training_plugin(name) for name in names]

    def build_training_plugins(self, names: Iterable[str], context: RunContext) -> list[Any]:
        """Turn selected plugin names into Avalanche plugins, in the order written.

        Options come from ``context.config.plugins.<name>`` when present, otherwise from the
        plugin's config dataclass defaults.
        """
        avalanche_plugins: list[Any] = []
        for info in self.check_training_plugins(names):
            options = _plugin_options(context, info)
            record = self.provider("training plugin", info.name)
            try:
                made = list(info.factory(options, context))
            except (ValueError, KeyError, TypeError) as error:
                raise PluginError(
                    f"plugin {info.name!r} from distribution {record.distribution!r} could not be "
                    f"built: {error}"
                ) from error
            if self.trace_calls:
                logger.info("training plugin %s contributed %s", info.name, [type(p).__name__ for p in made])
            avalanche_plugins.extend(made)
        return avalanche_plugins

    def notify_models_added(self, registry: Any, labels: list[int], experience: int) -> None:
        """Broadcast :func:`cmrkit.hookspecs.cmrkit_models_added` to every plugin."""
        self.call_in_order("cmrkit_models_added", registry=registry, labels=labels, experience=experience)


def _plugin_options(context: RunContext, info: TrainingPluginInfo) -> Any:
    plugins_config = context.config.get("plugins") if context.config is not None else None
    if plugins_config is not None and info.name in plugins_config:
        return plugins_config[info.name]
    if info.config_class is not None:
        from omegaconf import OmegaConf

        return OmegaConf.structured(info.config_class)
    return None


def _lookup(table: dict[str, Any], name: str, kind: str, option: str) -> Any:
    if name not in table:
        available = ", ".join(table) or "none"
        raise UnknownNameError(f"unknown {kind} {name!r} in {option}; available: {available}")
    return table[name]


def _dist_name(point: metadata.EntryPoint) -> str:
    dist = point.dist
    return dist.metadata["Name"].lower().replace("_", "-") if dist is not None else "(unknown)"


def _dist_version(point: metadata.EntryPoint) -> str:
    return point.dist.version if point.dist is not None else ""


def load_plugin_manager(*, autoload: bool | None = None, trace: bool | None = None) -> CmrkitPluginManager:
    """Create a plugin manager with every installed ``cmrkit.plugins`` entry point loaded."""
    manager = CmrkitPluginManager(trace=trace)
    manager.load_entry_points(autoload=autoload)
    return manager
