"""Hook specifications of the ``cmrkit`` pluggy project.

A cmrkit plugin is a module (or object) with functions marked ``@hookimpl``, declared under the
``cmrkit.plugins`` entry-point group. cmrkit's own strategies and plugins are declared the same
way in its ``pyproject.toml``. Declarative hooks return descriptions (:mod:`cmrkit.extensions`)
that the plugin manager collects into name-keyed tables; the order in which pluggy calls them
does not matter, because cmrkit orders everything by name or by the order a user wrote.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from cmrkit.data.registry import ModelRegistry
    from cmrkit.extensions import ReplayPolicyInfo, StrategyInfo, TrainingPluginInfo

PROJECT_NAME = "cmrkit"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def cmrkit_strategies() -> list[StrategyInfo]:
    """Declare routing strategies.

    Called once when the plugin manager loads. Takes no arguments. Returns a list of
    :class:`~cmrkit.extensions.StrategyInfo`; each name must be unique across all plugins.
    """


@hookspec
def cmrkit_training_plugins() -> list[TrainingPluginInfo]:
    """Declare training plugins that ``--plugins NAME`` can select.

    Called once when the plugin manager loads. Takes no arguments. Returns a list of
    :class:`~cmrkit.extensions.TrainingPluginInfo`, whose factory turns the plugin's options and
    the run context into Avalanche ``SupervisedPlugin`` instances.
    """


@hookspec
def cmrkit_replay_policies() -> list[ReplayPolicyInfo]:
    """Declare replay-buffer selection policies for the ``replay`` plugin.

    Called once when the plugin manager loads. Takes no arguments. Returns a list of
    :class:`~cmrkit.extensions.ReplayPolicyInfo`; ``plugins.replay.policy=NAME`` selects one.
    """


@hookspec
def cmrkit_models_added(registry: ModelRegistry, labels: list[int], experience: int) -> None:
    """React to models entering the router's label space.

    Called by a routing strategy at the start of each training experience that brings models
    the router has no row for yet, after the rows were added. Receives the registry, the new
    labels in increasing order, and the 0-based experience index. The return value is ignored.
    """
