"""The cmrkit plugin manager: entry-point discovery, validation, ordered hook calls and tracing.

Rules, all tested in ``tests/test_plugin_manager.py`` and described for plugin authors in
``docs/plugins.md``:

- Discovery: every entry point in the ``cmrkit.plugins`` group is imported and registered under
  its entry-point name. cmrkit's own entry points come first, then the others sorted by
  distribution name and entry-point name, so the install order never matters. Two
  distributions that use the same entry-point name are an error.
- Autoload switch: ``CMRKIT_DISABLE_PLUGIN_AUTOLOAD`` set to ``1``, ``true``, ``yes`` or ``on``
  registers only the entry points of the ``cmrkit`` distribution. Other distributions' plugins
  are never imported, and :attr:`CmrkitPluginManager.skipped` lists them.
- Order: training plugins selected with ``--plugins a,b`` (or ``run.plugins: [a, b]``) become
  Avalanche plugins in exactly the written order. Each training plugin contributes its Avalanche
  plugins in the order its factory returns them, and the runner appends cmrkit's training meter
  after them, followed by Avalanche's own evaluator, periodic-evaluation and clock plugins.
  Avalanche 0.6 calls every callback, ``before_*`` and ``after_*`` alike, on that list from front
  to back, so ``a`` sees each event before ``b``. Install order, entry-point names and
  registration order never change this order.
- Hook call order: cmrkit calls hook implementations in registration order (the discovery order
  above, then plugins registered at run time in the order registered); an implementation marked
  ``tryfirst=True`` or ``trylast=True`` moves to the front or back. pluggy's own call loop runs
  them last-registered-first, so cmrkit never relies on it. Declarative hooks
  (``cmrkit_strategies``, ``cmrkit_training_plugins``, ``cmrkit_replay_policies``) are collected
  into name-keyed tables, where the order of the calls cannot change the result.
- Validation: a hook implementation without a matching hookspec (``check_pending``), with
  arguments the hookspec lacks, or written as a ``wrapper``/``hookwrapper`` is rejected at
  registration with :class:`PluginError`.
- Errors: a plugin that fails to import, fails validation, returns something other than a list
  of the declared description type, or raises inside a hook or a factory produces
  :class:`PluginError` naming the plugin and its distribution. A factory's
  :class:`~cmrkit.config.ConfigError` or :class:`UnknownNameError` passes through unchanged,
  because it describes a mistake in the user's options.
- Tracing: ``CMRKIT_TRACE_HOOKS`` (same values as above, or ``trace=True``) logs every hook call
  with its arguments, the plugin that ran and its result, on the ``cmrkit.hooks`` logger at INFO
  level. Calls made directly through ``manager.hook.<name>(...)`` bypass cmrkit's order and error
  wrapping but are traced too.
"""

from __future__ import annotations

import difflib
import logging
import os
import reprlib
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
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
NOT_INSTALLED = "(not installed)"
"""Distribution recorded for plugins registered at run time rather than through an entry point."""

STRATEGY = "strategy"
TRAINING_PLUGIN = "training plugin"
REPLAY_POLICY = "replay policy"
HOOK_LISTENER = "hook listener"

DECLARATIVE_HOOKS: dict[str, tuple[str, type]] = {
    STRATEGY: ("cmrkit_strategies", StrategyInfo),
    TRAINING_PLUGIN: ("cmrkit_training_plugins", TrainingPluginInfo),
    REPLAY_POLICY: ("cmrkit_replay_policies", ReplayPolicyInfo),
}
"""Kind of extension -> (hook that declares it, description class the hook returns a list of)."""

_TRUE_VALUES = {"1", "true", "yes", "on"}
_trace_repr = reprlib.Repr()
_trace_repr.maxstring = 80
_trace_repr.maxother = 80


class PluginError(RuntimeError):
    """A plugin failed to load, failed validation, or raised inside a hook or a factory."""


class UnknownNameError(KeyError):
    """A strategy, training plugin or replay policy name that no loaded plugin provides."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class PluginWarning(UserWarning):
    """A plugin loaded but probably not as its author intended (for example, it implements no hook)."""


def env_flag(name: str) -> bool:
    """Return whether environment variable ``name`` is set to ``1``, ``true``, ``yes`` or ``on``."""
    return os.environ.get(name, "").strip().lower() in _TRUE_VALUES


@dataclass(frozen=True)
class Provided:
    """One thing a plugin provides: a strategy, training plugin, replay policy or hook listener."""

    kind: str
    name: str
    description: str = ""

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


@dataclass
class PluginRecord:
    """Metadata of one registered plugin.

    Attributes:
        name: Registration name (the entry-point name for installed plugins).
        distribution: Normalised name of the distribution that declares the entry point, or
            ``"(not installed)"`` for plugins registered at run time.
        version: Version of that distribution, or ``""``.
        module: Module name of a module plugin, or the class name of an object plugin.
        hooks: Names of the cmrkit hooks the plugin implements, sorted.
        provides: What the plugin contributes; complete once the tables were built (see
            :meth:`CmrkitPluginManager.plugin_records`).
    """

    name: str
    distribution: str
    version: str
    module: str
    hooks: list[str] = field(default_factory=list)
    provides: list[Provided] = field(default_factory=list)


class CmrkitPluginManager(pluggy.PluginManager):
    """A pluggy ``PluginManager`` for the ``cmrkit`` project with cmrkit's order and error rules.

    Plugins registered through pluggy's plain :meth:`register` get the same validation and
    bookkeeping as those registered with :meth:`register_plugin`.

    Args:
        trace: Log every hook call; defaults to the ``CMRKIT_TRACE_HOOKS`` environment switch.
    """

    def __init__(self, *, trace: bool | None = None) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self.trace_calls = env_flag(TRACE_ENV) if trace is None else trace
        self.records: dict[str, PluginRecord] = {}
        """Registered plugins by name, in registration order."""
        self.skipped: list[tuple[str, str]] = []
        """``(entry-point name, distribution)`` of plugins the autoload switch kept out."""
        self._tables: dict[str, dict[str, tuple[str, Any]]] | None = None
        if self.trace_calls:
            self.add_hookcall_monitoring(self._trace_direct_call, self._trace_direct_result)

    # -- loading ---------------------------------------------------------------------------

    def load_entry_points(self, *, autoload: bool | None = None) -> None:
        """Import and register the plugins of the ``cmrkit.plugins`` entry-point group.

        Calling it again registers only entry points that are not registered yet.

        Args:
            autoload: ``False`` loads only cmrkit's own entry points; ``None`` reads
                ``CMRKIT_DISABLE_PLUGIN_AUTOLOAD``.

        Raises:
            PluginError: An entry point failed to import or to validate, or two distributions
                use the same entry-point name.
        """
        if autoload is None:
            autoload = not env_flag(AUTOLOAD_ENV)

        for point in discover_entry_points():
            distribution = _dist_name(point)
            if not autoload and distribution != OWN_DISTRIBUTION:
                self.skipped.append((point.name, distribution))
                continue
            if self._already_loaded(point.name, distribution):
                continue
            plugin = _import_entry_point(point, distribution)
            self.register_plugin(
                plugin, name=point.name, distribution=distribution, version=_dist_version(point)
            )

        if self.skipped:
            skipped = ", ".join(f"{name} ({distribution})" for name, distribution in self.skipped)
            logging.getLogger("cmrkit.plugins").info(
                "%s is set: skipped %d plugin(s): %s", AUTOLOAD_ENV, len(self.skipped), skipped
            )

    def _already_loaded(self, name: str, distribution: str) -> bool:
        record = self.records.get(name)
        if record is None:
            return False
        if record.distribution == distribution:
            return True
        raise PluginError(
            f"plugin name {name!r} is used by distribution {record.distribution!r} and by "
            f"{distribution!r}; uninstall one of them or ask its author to rename the "
            f"{ENTRY_POINT_GROUP!r} entry point"
        )

    def register_plugin(
        self,
        plugin: object,
        *,
        name: str | None = None,
        distribution: str = NOT_INSTALLED,
        version: str = "",
    ) -> str | None:
        """Register ``plugin`` (a module or an object) and validate its hooks against the hookspecs.

        Args:
            plugin: Module or object with ``@hookimpl`` functions or methods.
            name: Registration name; defaults to pluggy's canonical name (the module name, or
                the object's id).
            distribution: Distribution shown in listings and error messages.
            version: Version of that distribution.

        Returns:
            The registration name, or ``None`` when the name was blocked with
            :meth:`set_blocked`.

        Raises:
            PluginError: The name is taken, or a hook implementation does not match a hookspec
                (unknown hook name, extra arguments, or a wrapper). Nothing stays registered.
        """
        plugin_name = name or self.get_canonical_name(plugin)
        self._check_not_registered(plugin, plugin_name, distribution)
        try:
            registered = super().register(plugin, name=plugin_name)
        except (pluggy.PluginValidationError, ValueError) as error:
            message = self._invalid_message(plugin_name, distribution, error)
            self._discard(plugin_name, plugin)
            raise PluginError(message) from error
        if registered is None:
            return None

        try:
            self.check_pending()
            self._reject_wrappers(plugin_name, distribution)
        except pluggy.PluginValidationError as error:
            message = self._invalid_message(plugin_name, distribution, error)
            self._discard(plugin_name, plugin)
            raise PluginError(message) from error
        except PluginError:
            self._discard(plugin_name, plugin)
            raise

        self._record(plugin, plugin_name, distribution, version)
        return plugin_name

    def register(self, plugin: object, name: str | None = None) -> str | None:
        """pluggy's ``register``, with the validation and bookkeeping of :meth:`register_plugin`."""
        return self.register_plugin(plugin, name=name)

    def unregister_plugin(self, name: str) -> None:
        """Unregister the plugin registered under ``name``; an unknown name is ignored."""
        self.unregister(name=name)

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any | None:
        """pluggy's ``unregister``, which also removes the plugin's record."""
        if name is None and plugin is not None:
            name = self.get_name(plugin)
        removed = super().unregister(plugin=plugin, name=name)
        if name is not None:
            self.records.pop(name, None)
        self._tables = None
        return removed

    @contextmanager
    def registered(self, plugin: object, *, name: str | None = None) -> Iterator[str]:
        """Register ``plugin`` for the duration of a ``with`` block, then unregister it."""
        plugin_name = self.register_plugin(plugin, name=name)
        if plugin_name is None:
            raise PluginError(f"plugin name {name!r} is blocked and cannot be registered")
        try:
            yield plugin_name
        finally:
            self.unregister_plugin(plugin_name)

    def _check_not_registered(self, plugin: object, name: str, distribution: str) -> None:
        existing = self.records.get(name)
        if existing is not None:
            raise PluginError(
                f"plugin name {name!r} ({distribution}) is already registered by distribution "
                f"{existing.distribution!r}; register the plugin under another name"
            )
        other_name = self.get_name(plugin)
        if other_name is not None:
            raise PluginError(f"plugin {name!r} ({distribution}) is already registered as {other_name!r}")

    def _discard(self, name: str, plugin: object) -> None:
        if self.get_plugin(name) is plugin:
            super().unregister(name=name)

    def _record(self, plugin: object, name: str, distribution: str, version: str) -> None:
        hooks = sorted(hook for hook in self.hook_names() if self._implementation(hook, name) is not None)
        if not hooks:
            warnings.warn(
                PluginWarning(
                    f"plugin {name!r} from distribution {distribution!r} implements no cmrkit hook; "
                    "mark its hook functions with cmrkit.hookspecs.hookimpl"
                ),
                stacklevel=3,
            )
        module = getattr(plugin, "__name__", None)
        self.records[name] = PluginRecord(
            name=name,
            distribution=distribution,
            version=version,
            module=module if isinstance(module, str) else type(plugin).__name__,
            hooks=hooks,
        )
        self._tables = None
        logger.log(
            logging.INFO if self.trace_calls else logging.DEBUG,
            "registered plugin %s from %s %s: %s",
            name,
            distribution,
            version,
            ", ".join(hooks) or "no hooks",
        )

    def _reject_wrappers(self, name: str, distribution: str) -> None:
        for hook in self.hook_names():
            impl = self._implementation(hook, name)
            if impl is not None and (impl.wrapper or impl.hookwrapper):
                raise PluginError(
                    f"plugin {name!r} from distribution {distribution!r} marks {hook} as a wrapper; "
                    "cmrkit calls every implementation itself in a fixed order, so use a plain "
                    "@hookimpl (with tryfirst=True or trylast=True to move it)"
                )

    def _invalid_message(self, name: str, distribution: str, error: Exception) -> str:
        detail = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
        message = f"plugin {name!r} from distribution {distribution!r} is invalid: {detail}."
        unknown = self._unknown_hooks(name)
        for hook in unknown:
            close = difflib.get_close_matches(hook, self.hook_names(), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            message += f" Hook {hook} has no hookspec{hint}."
        if unknown:
            message += f" cmrkit's hooks are: {', '.join(self.hook_names())}."
        elif isinstance(error, pluggy.PluginValidationError):
            message += " A hook implementation may take only arguments of its hookspec in cmrkit.hookspecs."
        return message

    def _unknown_hooks(self, plugin_name: str) -> list[str]:
        unknown = []
        for hook_name, caller in vars(self.hook).items():
            if hook_name.startswith("_") or caller.has_spec():
                continue
            if any(impl.plugin_name == plugin_name for impl in caller.get_hookimpls()):
                unknown.append(hook_name)
        return sorted(unknown)

    def hook_names(self) -> list[str]:
        """Names of the hookspecs in :mod:`cmrkit.hookspecs`, sorted."""
        return sorted(
            name
            for name in dir(hookspecs)
            if hasattr(getattr(hookspecs, name), f"{hookspecs.PROJECT_NAME}_spec")
        )

    def _implementation(self, hook_name: str, plugin_name: str) -> pluggy.HookImpl | None:
        caller = getattr(self.hook, hook_name, None)
        if caller is None:
            return None
        for impl in caller.get_hookimpls():
            if impl.plugin_name == plugin_name:
                return impl
        return None

    # -- calling ---------------------------------------------------------------------------

    def call_in_order(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call every implementation of ``hook_name`` in cmrkit's order (see the module docstring).

        Returns ``(plugin name, result)`` pairs, skipping ``None`` results.

        Raises:
            PluginError: An implementation raised; the message names the plugin, its
                distribution and the original exception, which is chained.
        """
        results: list[tuple[str, Any]] = []
        for impl in self.ordered_implementations(hook_name):
            args = {arg: kwargs[arg] for arg in impl.argnames}
            started = time.perf_counter()
            try:
                result = impl.function(**args)
            except Exception as error:
                record = self.records[impl.plugin_name]
                raise PluginError(
                    f"plugin {impl.plugin_name!r} from distribution {record.distribution!r} raised in "
                    f"{hook_name}: {type(error).__name__}: {error}"
                ) from error
            if self.trace_calls:
                self._trace(hook_name, args, impl.plugin_name, result, time.perf_counter() - started)
            if result is not None:
                results.append((impl.plugin_name, result))
        return results

    def ordered_implementations(self, hook_name: str) -> list[pluggy.HookImpl]:
        """Implementations of ``hook_name``: ``tryfirst`` ones, the rest, ``trylast`` ones.

        Within each group the order is the registration order.
        """
        caller = getattr(self.hook, hook_name)
        by_plugin = {impl.plugin_name: impl for impl in caller.get_hookimpls()}
        in_registration_order = [by_plugin[name] for name in self.records if name in by_plugin]
        return sorted(in_registration_order, key=_call_group)

    def notify_models_added(self, registry: Any, labels: list[int], experience: int) -> None:
        """Broadcast :func:`cmrkit.hookspecs.cmrkit_models_added` to every plugin."""
        self.call_in_order("cmrkit_models_added", registry=registry, labels=labels, experience=experience)

    def _trace(
        self, hook_name: str, args: Mapping[str, Any], plugin_name: str, result: Any, seconds: float
    ) -> None:
        record = self.records[plugin_name]
        logger.info(
            "%s(%s): plugin %s (%s %s) returned %s in %.1f ms",
            hook_name,
            _describe_args(args),
            plugin_name,
            record.distribution,
            record.version,
            _describe(result),
            1000 * seconds,
        )

    def _trace_direct_call(
        self, hook_name: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]
    ) -> None:
        plugins = ", ".join(impl.plugin_name for impl in impls) or "no plugin"
        logger.info("%s(%s) called through pm.hook: plugins %s", hook_name, _describe_args(kwargs), plugins)

    def _trace_direct_result(
        self,
        outcome: pluggy.Result[Any],
        hook_name: str,
        impls: Sequence[pluggy.HookImpl],
        kwargs: Mapping[str, Any],
    ) -> None:
        if outcome.exception is not None:
            logger.info("%s through pm.hook raised %r", hook_name, outcome.exception)
            return
        logger.info("%s through pm.hook returned %s", hook_name, _describe(outcome.get_result()))

    # -- tables ----------------------------------------------------------------------------

    def _build_tables(self) -> dict[str, dict[str, tuple[str, Any]]]:
        declarative = {hook_name for hook_name, _ in DECLARATIVE_HOOKS.values()}
        for record in self.records.values():
            listened = [hook for hook in record.hooks if hook not in declarative]
            record.provides = [Provided(HOOK_LISTENER, hook) for hook in listened]

        tables: dict[str, dict[str, tuple[str, Any]]] = {}
        for kind, (hook_name, info_class) in DECLARATIVE_HOOKS.items():
            tables[kind] = {}
            for plugin_name, infos in self.call_in_order(hook_name):
                for info in self._checked_infos(plugin_name, hook_name, info_class, infos):
                    self._add_to_table(tables[kind], kind, plugin_name, info)
        return tables

    def _checked_infos(self, plugin_name: str, hook_name: str, info_class: type, infos: Any) -> list[Any]:
        distribution = self.records[plugin_name].distribution
        if not isinstance(infos, list | tuple):
            raise PluginError(
                f"plugin {plugin_name!r} from distribution {distribution!r} returned "
                f"{type(infos).__name__} from {hook_name}; expected a list of {info_class.__name__}"
            )
        for info in infos:
            if not isinstance(info, info_class) or not getattr(info, "name", ""):
                raise PluginError(
                    f"plugin {plugin_name!r} from distribution {distribution!r} returned "
                    f"{_trace_repr.repr(info)} from {hook_name}; expected {info_class.__name__} "
                    "instances with a non-empty name"
                )
        return list(infos)

    def _add_to_table(
        self, table: dict[str, tuple[str, Any]], kind: str, plugin_name: str, info: Any
    ) -> None:
        previous = table.get(info.name)
        if previous is not None:
            first, second = self.records[previous[0]], self.records[plugin_name]
            raise PluginError(
                f"{kind} {info.name!r} is declared by plugin {first.name!r} ({first.distribution}) and "
                f"by plugin {second.name!r} ({second.distribution}); uninstall one of them"
            )
        table[info.name] = (plugin_name, info)
        self.records[plugin_name].provides.append(Provided(kind, info.name, info.description))

    def _table(self, kind: str) -> dict[str, tuple[str, Any]]:
        if self._tables is None:
            self._tables = self._build_tables()
        return self._tables[kind]

    def plugin_records(self) -> list[PluginRecord]:
        """Return every registered plugin in registration order, with ``provides`` filled in."""
        self._table(STRATEGY)
        return list(self.records.values())

    def strategies(self) -> dict[str, StrategyInfo]:
        """Return every declared strategy, keyed and sorted by name."""
        return {name: entry[1] for name, entry in sorted(self._table(STRATEGY).items())}

    def training_plugins(self) -> dict[str, TrainingPluginInfo]:
        """Return every declared training plugin, keyed and sorted by name."""
        return {name: entry[1] for name, entry in sorted(self._table(TRAINING_PLUGIN).items())}

    def replay_policies(self) -> dict[str, ReplayPolicyInfo]:
        """Return every declared replay policy, keyed and sorted by name."""
        return {name: entry[1] for name, entry in sorted(self._table(REPLAY_POLICY).items())}

    def provider(self, kind: str, name: str) -> PluginRecord:
        """Return the record of the plugin that declares ``kind`` ``name`` (``"strategy"``, ``"naive"``)."""
        return self.records[self._table(kind)[name][0]]

    def strategy(self, name: str) -> StrategyInfo:
        """Look up a strategy; :class:`UnknownNameError` lists the available ones."""
        return _lookup(self.strategies(), name, STRATEGY, "--strategy")

    def training_plugin(self, name: str) -> TrainingPluginInfo:
        """Look up a training plugin; :class:`UnknownNameError` lists the available ones."""
        return _lookup(self.training_plugins(), name, "plugin", "--plugins")

    def replay_policy(self, name: str) -> ReplayPolicyInfo:
        """Look up a replay policy; :class:`UnknownNameError` lists the available ones."""
        return _lookup(self.replay_policies(), name, REPLAY_POLICY, "plugins.replay.policy")

    # -- building --------------------------------------------------------------------------

    def check_training_plugins(self, names: Iterable[str]) -> list[TrainingPluginInfo]:
        """Validate a ``--plugins`` list before any training: known names, no repeats."""
        names = list(names)
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(
                f"plugin {', '.join(repeated)} listed more than once in --plugins {','.join(names)}"
            )
        return [self.training_plugin(name) for name in names]

    def build_training_plugins(self, names: Iterable[str], context: RunContext) -> list[Any]:
        """Turn selected plugin names into Avalanche plugins, in the order written.

        Options come from ``context.config.plugins.<name>`` when present, otherwise from the
        plugin's config dataclass defaults.

        Raises:
            PluginError: A factory raised or returned something other than an iterable of
                plugins; the message names the plugin and its distribution.
        """
        avalanche_plugins: list[Any] = []
        for info in self.check_training_plugins(names):
            options = _plugin_options(context, info)
            record = self.provider(TRAINING_PLUGIN, info.name)
            with _factory_errors(TRAINING_PLUGIN, info.name, record):
                made = list(info.factory(options, context))
            if self.trace_calls:
                logger.info(
                    "training plugin %s (%s %s) contributed %s",
                    info.name,
                    record.distribution,
                    record.version,
                    [type(plugin).__name__ for plugin in made],
                )
            avalanche_plugins.extend(made)
        return avalanche_plugins

    def build_strategy(self, name: str, context: RunContext, plugins: list[Any], evaluator: Any) -> Any:
        """Call strategy ``name``'s factory with the same error rule as :meth:`build_training_plugins`."""
        info = self.strategy(name)
        record = self.provider(STRATEGY, name)
        with _factory_errors(STRATEGY, name, record):
            return info.factory(context, plugins, evaluator)


def _call_group(impl: pluggy.HookImpl) -> int:
    if impl.tryfirst:
        return 0
    return 2 if impl.trylast else 1


@contextmanager
def _factory_errors(kind: str, name: str, record: PluginRecord) -> Iterator[None]:
    """Re-raise a factory's exception as PluginError, except the user-facing option errors."""
    try:
        yield
    except UnknownNameError:
        raise
    except Exception as error:
        from cmrkit.config import ConfigError

        if isinstance(error, ConfigError):
            raise
        raise PluginError(
            f"{kind} {name!r} of plugin {record.name!r} from distribution {record.distribution!r} "
            f"could not be built: {type(error).__name__}: {error}"
        ) from error


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


def _describe(value: Any) -> str:
    """Short text of a hook result for the trace: description lists show their names only."""
    if isinstance(value, list | tuple) and value and all(hasattr(item, "name") for item in value):
        return "[" + ", ".join(f"{type(item).__name__} {item.name!r}" for item in value) + "]"
    return _trace_repr.repr(value)


def _describe_args(args: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={_trace_repr.repr(value)}" for key, value in args.items())


def discover_entry_points() -> list[metadata.EntryPoint]:
    """Entry points of the ``cmrkit.plugins`` group in load order.

    cmrkit's own come first, then the others sorted by distribution name and entry-point name.
    """
    return sorted(
        metadata.entry_points(group=ENTRY_POINT_GROUP),
        key=lambda point: (_dist_name(point) != OWN_DISTRIBUTION, _dist_name(point), point.name),
    )


def _import_entry_point(point: metadata.EntryPoint, distribution: str) -> object:
    try:
        return point.load()
    except Exception as error:
        raise PluginError(
            f"plugin {point.name!r} from distribution {distribution!r} failed to import "
            f"({point.value}): {type(error).__name__}: {error}. Fix or uninstall {distribution}, "
            f"or set {AUTOLOAD_ENV}=1 to load only cmrkit's own plugins."
        ) from error


def _dist_name(point: metadata.EntryPoint) -> str:
    dist = point.dist
    return dist.metadata["Name"].lower().replace("_", "-") if dist is not None else "(unknown)"


def _dist_version(point: metadata.EntryPoint) -> str:
    return point.dist.version if point.dist is not None else ""


_current_manager: ContextVar[CmrkitPluginManager | None] = ContextVar("cmrkit_plugin_manager", default=None)


@contextmanager
def use_plugin_manager(manager: CmrkitPluginManager) -> Iterator[CmrkitPluginManager]:
    """Make :func:`load_plugin_manager` return ``manager`` inside a ``with`` block.

    The CLI and :func:`cmrkit.runner.run_experiment` get their manager from
    :func:`load_plugin_manager`, so this lets tests and notebooks run them with plugins that are
    registered at run time instead of installed.
    """
    token = _current_manager.set(manager)
    try:
        yield manager
    finally:
        _current_manager.reset(token)


def load_plugin_manager(*, autoload: bool | None = None, trace: bool | None = None) -> CmrkitPluginManager:
    """Create a plugin manager with every installed ``cmrkit.plugins`` entry point loaded.

    Inside :func:`use_plugin_manager`, returns that block's manager and ignores both arguments.
    """
    current = _current_manager.get()
    if current is not None:
        return current
    manager = CmrkitPluginManager(trace=trace)
    manager.load_entry_points(autoload=autoload)
    return manager
