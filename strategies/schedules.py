"""Data schedules over the stream: ``cumulative`` retraining and ``joint`` training.

- ``cumulative``: at each experience, train on the union of every training experience seen so
  far (the current one and all earlier ones), then evaluate as usual. It keeps all old data, so
  it is the cost reference for continual methods: its training sample passes grow with the
  stream.
- ``joint``: a single training run on all training experiences at once, then one evaluation on
  every test experience. It is the upper bound of the paper's table ("Continual Model Routing in
  Evolving Model Hubs", Bell et al., ICML 2026). Its accuracy matrix has one row (row 0: after
  the joint run), so its forgetting is undefined (NaN).

Both train the same router as ``naive`` and read the same ``train.*`` and ``router.*`` options.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
from avalanche.benchmarks.utils import concat_datasets

from cmrkit.extensions import RunContext, StrategyInfo
from cmrkit.strategies.base import RoundCallback, RoutingTemplate, build_routing_strategy

logger = logging.getLogger("cmrkit.strategies.schedules")


@dataclass
class CumulativeConfig:
    """The ``cumulative`` strategy has no options of its own; it reads ``train.*`` and ``router.*``."""


@dataclass
class JointConfig:
    """The ``joint`` strategy has no options of its own; it reads ``train.*`` and ``router.*``."""


class Cumulative(RoutingTemplate):
    """Retrain on all training data seen so far at every experience.

    The training dataset of experience ``i`` is the concatenation of the datasets of training
    experiences ``0..i``, in stream order. Plugins that add data (replay) add it on top.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seen_datasets: dict[int, Any] = {}
        """Training dataset of each experience trained so far, by 0-based experience index."""

    def train_dataset_adaptation(self, **kwargs: Any) -> None:
        assert self.experience is not None
        index = self._exp_index()
        self.seen_datasets[index] = self.experience.dataset
        parts = [self.seen_datasets[i] for i in sorted(self.seen_datasets) if i <= index]
        self.adapted_dataset = concat_datasets(parts).train()
        logger.info(
            "cumulative training set for experience %d: %d prompts from %d experiences",
            index + 1, len(self.adapted_dataset), len(parts),
        )


class Joint(RoutingTemplate):
    """Train once on every training experience together, then evaluate on all test experiences."""

    def fit_stream(self, train_stream: Sequence[Any], test_stream: Sequence[Any],
                   on_round_end: RoundCallback | None = None) -> None:
        """Train one run on the union of ``train_stream``, then evaluate on ``test_stream``.

        ``on_round_end`` is called once, with the index of the last training experience, because
        after the joint run the router has seen the whole stream.
        """
        experience = joint_experience(train_stream)
        logger.info(
            "joint training on %d prompts from %d experiences",
            len(experience.dataset), len(train_stream),
        )
        self.train(experience)
        logger.info("evaluating on test experiences 1-%d", len(test_stream))
        self.eval(test_stream)
        if on_round_end is not None:
            on_round_end(len(train_stream) - 1)


def joint_experience(train_stream: Sequence[Any]) -> Any:
    """Return one Avalanche experience whose dataset concatenates every experience of the stream.

    It is experience 0 of a new single-experience stream, with ``classes_in_this_experience``
    covering every label of the stream, so model adaptation adds all models at once.
    """
    if len(train_stream) == 0:
        raise ValueError("joint training needs at least one training experience; the stream is empty")
    dataset = concat_datasets([experience.dataset for experience in train_stream])
    return with_classes_timeline(benchmark_from_datasets(train=[dataset])).train_stream[0]


def build_cumulative(context: RunContext, plugins: list[Any], evaluator: Any) -> RoutingTemplate:
    """Build the ``cumulative`` strategy for a run."""
    return build_routing_strategy(Cumulative, context, plugins, evaluator)


def build_joint(context: RunContext, plugins: list[Any], evaluator: Any) -> RoutingTemplate:
    """Build the ``joint`` strategy for a run."""
    return build_routing_strategy(Joint, context, plugins, evaluator)


CUMULATIVE_STRATEGY = StrategyInfo(
    name="cumulative",
    factory=build_cumulative,
    description="Retrain on all training data seen so far at every experience.",
    config_class=CumulativeConfig,
)

JOINT_STRATEGY = StrategyInfo(
    name="joint",
    factory=build_joint,
    description="One training run on all experiences together (upper bound); one matrix row.",
    config_class=JointConfig,
)
