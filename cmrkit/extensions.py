"""Descriptions that plugins return from cmrkit's declarative hooks, and the run context.

Every strategy, training plugin and replay policy has the same shape: a name, a one-line
description, an optional config dataclass whose fields (with ``help`` metadata) become the
options under ``strategies.<name>.*`` or ``plugins.<name>.*``, and a factory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from avalanche.core import SupervisedPlugin
    from avalanche.training.plugins import EvaluationPlugin
    from omegaconf import DictConfig

    from cmrkit.data.benchmark import CMRBenchScenario
    from cmrkit.data.registry import ModelRegistry
    from cmrkit.pm import CmrkitPluginManager


@dataclass
class RunContext:
    """Everything a strategy or plugin factory may need about the current run.

    Attributes:
        config: The fully resolved run configuration.
        benchmark: The CMRBench scenario being trained on.
        registry: The benchmark's model registry (label space).
        device: Torch device for training and evaluation.
        output_dir: Folder of the run's outputs, or ``None`` outside the CLI.
        plugin_manager: The plugin manager that assembled the run.
        state: Free-form storage shared by the strategy and plugins during one run (for example,
            the replay buffer publishes itself here so the checkpoint writer can save it).
    """

    config: DictConfig
    benchmark: CMRBenchScenario
    registry: ModelRegistry
    device: torch.device
    output_dir: Path | None = None
    plugin_manager: CmrkitPluginManager | None = None
    state: dict[str, Any] = field(default_factory=dict)


StrategyFactory = Callable[["RunContext", list["SupervisedPlugin"], "EvaluationPlugin"], Any]
TrainingPluginFactory = Callable[[Any, "RunContext"], list["SupervisedPlugin"]]


@dataclass(frozen=True)
class StrategyInfo:
    """A routing strategy that ``cmrkit run --strategy NAME`` can build.

    Attributes:
        name: Unique name used on the command line.
        factory: ``factory(context, plugins, evaluator)`` returns an Avalanche strategy (normally a
            :class:`cmrkit.strategies.base.RoutingTemplate`) that trains over the stream.
        description: One line for ``cmrkit strategies``.
        config_class: Dataclass of the options under ``strategies.<name>``, or ``None``.
        trainable: ``False`` for strategies that never update weights (retrieval baselines);
            training plugins are rejected for them.
    """

    name: str
    factory: StrategyFactory
    description: str
    config_class: type | None = None
    trainable: bool = True


@dataclass(frozen=True)
class TrainingPluginInfo:
    """A training plugin that ``--plugins NAME`` can select.

    Attributes:
        name: Unique name used in ``--plugins``.
        factory: ``factory(options, context)`` returns the Avalanche ``SupervisedPlugin`` instances
            to add to the strategy, in the order they should run. ``options`` is the merged
            ``plugins.<name>`` config (a ``DictConfig``, or the dataclass defaults).
        description: One line for ``cmrkit plugins``.
        config_class: Dataclass of the options under ``plugins.<name>``, or ``None``.
    """

    name: str
    factory: TrainingPluginFactory
    description: str
    config_class: type | None = None


@dataclass(frozen=True)
class ReplayPolicyInfo:
    """A replay-buffer selection policy for the ``replay`` plugin.

    Attributes:
        name: Unique name used in ``plugins.replay.policy``.
        policy_class: Class constructed with the replay plugin's options; see
            :class:`cmrkit.plugins.replay.ReplayPolicy` for the interface.
        description: One line for ``cmrkit plugins``.
    """

    name: str
    policy_class: type
    description: str
