"""Hook implementations of the ``example`` plugin (the module the entry point names)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from cmrkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from cmrkit.data.registry import ModelRegistry
    from cmrkit.extensions import ReplayPolicyInfo, StrategyInfo

# cmrkit attaches its console and run.log handlers to the "cmrkit" logger, so a child of it shows
# up there; plugins use cmrkit.plugins.<entry-point name>.
logger = logging.getLogger("cmrkit.plugins.example")

MAX_LOGGED_IDS = 5


@hookimpl
def cmrkit_strategies() -> list[StrategyInfo]:
    """Declare the ``nearest_mean`` strategy."""
    from cmrkit_example_plugin.nearest_mean import STRATEGY

    return [STRATEGY]


@hookimpl
def cmrkit_replay_policies() -> list[ReplayPolicyInfo]:
    """Declare the ``per_model_round_robin`` replay policy."""
    from cmrkit_example_plugin.round_robin import POLICY

    return [POLICY]


@hookimpl
def cmrkit_models_added(registry: ModelRegistry, labels: list[int], experience: int) -> None:
    """Log how many models experience ``experience`` (0-based) added, and the first few ids."""
    ids = [registry.model_id(label) for label in labels]
    first_ids = ", ".join(ids[:MAX_LOGGED_IDS])
    more = f" and {len(ids) - MAX_LOGGED_IDS} more" if len(ids) > MAX_LOGGED_IDS else ""
    logger.info(
        "experience %d added %d models (%d in the registry): %s%s",
        experience + 1,
        len(ids),
        len(registry),
        first_ids,
        more,
    )
