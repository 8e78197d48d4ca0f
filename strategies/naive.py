"""``naive``: sequential fine-tuning with cross-entropy over every model seen so far.

The lower bound of continual routing: each experience fine-tunes the encoder, projection and head
on that experience's prompts only, so earlier models are forgotten unless a plugin intervenes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cmrkit.extensions import RunContext, StrategyInfo
from cmrkit.runner import build_router
from cmrkit.strategies.base import RoutingTemplate


@dataclass
class NaiveConfig:
    """The ``naive`` strategy has no options of its own; it reads ``train.*`` and ``router.*``."""


class Naive(RoutingTemplate):
    """Sequential fine-tuning over the full softmax of seen models (see :class:`RoutingTemplate`)."""


def build_naive(context: RunContext, plugins: list[Any], evaluator: Any) -> Naive:
    """Build the ``naive`` strategy for a run."""
    config = context.config
    return Naive(
        model=build_router(config, context.registry),
        train=config.train,
        device=context.device,
        plugins=plugins,
        evaluator=evaluator,
        progress=bool(config.run.progress),
        seed=int(config.run.seed),
        plugin_manager=context.plugin_manager,
        registry=context.registry,
    )


STRATEGY = StrategyInfo(
    name="naive",
    factory=build_naive,
    description="Sequential fine-tuning with cross-entropy over all models seen so far.",
    config_class=NaiveConfig,
)
