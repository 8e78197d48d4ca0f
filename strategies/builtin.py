"""Entry-point plugin that declares cmrkit's first-party strategies.

It is registered through the ``cmrkit.plugins`` entry-point group exactly as a third-party
plugin would be.
"""

from __future__ import annotations

from cmrkit.extensions import StrategyInfo
from cmrkit.hookspecs import hookimpl


@hookimpl
def cmrkit_strategies() -> list[StrategyInfo]:
    """Declare ``naive`` and the other first-party strategies."""
    from cmrkit.strategies.carve import STRATEGY as CARVE
    from cmrkit.strategies.naive import STRATEGY as NAIVE
    from cmrkit.strategies.retrieval import BM25_STRATEGY, DENSE_STRATEGY
    from cmrkit.strategies.schedules import CUMULATIVE_STRATEGY, JOINT_STRATEGY

    return [NAIVE, CARVE, BM25_STRATEGY, DENSE_STRATEGY, CUMULATIVE_STRATEGY, JOINT_STRATEGY]
