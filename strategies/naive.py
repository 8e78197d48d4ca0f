"""``naive``: sequential fine-tuning with cross-entropy over every model seen so far.

The lower bound of continual routing: each experience fine-tunes the encoder, projection and head
on that experience's prompts only, so earlier models are forgotten unless a plugin intervenes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cmrkit.extensions import RunContext, StrategyInfo
from cmrkit.strategies.base import RoutingTemplate, build_routing_strategy


@dataclass
class NaiveConfig:
    """The ``naive`` strategy has no options of its own; it reads ``train.*`` and ``router.*``."""


class Naive(RoutingTemplate):
    """Sequential fine-tuning over the full softmax of seen models (see :class:`RoutingTemplate`)."""


def build_naive(context: RunContext, plugins: list[Any], evaluator: Any) -> Naive:
    """Build the ``naive`` strategy for a run."""
    strategy = build_routing_strategy(Naive, context, plugins, evaluator)
    assert isinstance(strategy, Naive)
    return strategy


STRATEGY = StrategyInfo(
    name="naive",
    factory=build_naive,
    description="Sequential fine-tuning with cross-entropy over all models seen so far.",
    config_class=NaiveConfig,
)
