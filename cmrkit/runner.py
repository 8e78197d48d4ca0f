"""Run one strategy with its plugins over the CMRBench stream and collect the results.

:func:`run_experiment` is what ``cmrkit run`` calls; ``cmrkit compare`` calls it once per entry.
It validates the strategy and plugin names before loading data or training, seeds everything,
trains experience by experience, evaluates on the test experiences seen so far after each one,
and returns the accuracy matrix, the summary and the timings.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EvaluationPlugin
from omegaconf import DictConfig

from cmrkit.config import ConfigError
from cmrkit.encoder import QueryEncoder
from cmrkit.extensions import RunContext
from cmrkit.metrics import AccuracyMatrix, LoggingMetricsLogger, RoutingMetrics, summarize
from cmrkit.pm import CmrkitPluginManager, load_plugin_manager
from cmrkit.router import CardRowInitializer, Router

logger = logging.getLogger("cmrkit.run")

ROUTER_INITS = ("random", "card")


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_encoder(config: DictConfig) -> QueryEncoder:
    """Build the query encoder described by ``config.encoder`` (LoRA-wrapped if enabled)."""
    settings = config.encoder
    encoder = QueryEncoder(settings.name, max_length=int(settings.max_length), pooling=str(settings.pooling))
    if settings.lora.enabled:
        encoder.enable_lora(settings.lora)
    elif settings.trainable_layers is not None:
        encoder.freeze_lower_layers(int(settings.trainable_layers))
    return encoder


def build_router(config: DictConfig, registry: Any) -> Router:
    """Build a router from ``config.encoder`` and ``config.router`` for ``registry``'s labels."""
    init = str(config.router.init)
    if init not in ROUTER_INITS:
        raise ConfigError(f"invalid router.init {init!r}: use one of {', '.join(ROUTER_INITS)}")
    router = Router(build_encoder(config), dim=int(config.router.dim), tau=float(config.router.tau))
    if init == "card":
        texts = [registry.card(label).card_text() for label in range(len(registry))]
        router.head.row_initializer = CardRowInitializer(router, texts)
    return router


class TrainingMeter(SupervisedPlugin):
    """Avalanche plugin that measures training wall time (seconds) and training sample passes.

    Only the training part of each experience is timed; evaluation is excluded.
    """

    def __init__(self) -> None:
        super().__init__()
        self.train_seconds = 0.0
        self.sample_passes = 0
        self._started: float | None = None

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self._started = time.perf_counter()

    def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        self.sample_passes += int(strategy.mb_y.shape[0])

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        if self._started is not None:
            self.train_seconds += time.perf_counter() - self._started
            self._started = None


@dataclass
class RunResult:
    """Outputs of one run.

    Attributes:
        matrix: Accuracy matrix per metric key (percent).
        summary: Final averages and forgetting (percent) plus timings.
        strategy: The trained Avalanche strategy (its ``model`` is the router).
        context: The run context shared with the plugins.
        complete: ``False`` when the run stopped before the last experience.
    """

    matrix: AccuracyMatrix
    summary: dict[str, float]
    strategy: Any
    context: RunContext
    complete: bool = True
    experience_names: list[str] = field(default_factory=list)


def run_experiment(
    config: DictConfig,
    *,
    manager: CmrkitPluginManager | None = None,
    benchmark: Any = None,
    output_dir: Path | None = None,
    on_round_end: Callable[[RunResult], None] | None = None,
) -> RunResult:
    """Train ``config.run.strategy`` with ``config.run.plugins`` over the stream and evaluate.

    Args:
        config: A config from :func:`cmrkit.config.build_config`.
        manager: Plugin manager; default loads the installed entry points.
        benchmark: A pre-built CMRBench scenario; default builds it from ``config.data``.
        output_dir: Folder for outputs, passed to plugins through the run context.
        on_round_end: Called with the partial result after each evaluation round, so callers can
            write metrics as they arrive; a ``KeyboardInterrupt`` keeps what was written.

    Raises:
        UnknownNameError: For an unknown strategy or plugin, before any data is loaded.
        ConfigError: For invalid option values.
    """
    manager = manager if manager is not None else load_plugin_manager()
    strategy_info = manager.strategy(str(config.run.strategy))
    plugin_names = [str(name) for name in config.run.plugins]
    manager.check_training_plugins(plugin_names)
    if plugin_names and not strategy_info.trainable:
        raise ConfigError(
            f"strategy {strategy_info.name!r} does not train, so training plugins "
            f"({', '.join(plugin_names)}) cannot apply; drop --plugins"
        )

    validate_config(config)
    if not config.run.progress:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    if config.run.threads:
        torch.set_num_threads(int(config.run.threads))
    seed_everything(int(config.run.seed))
    if benchmark is None:
        benchmark = load_benchmark(config)
    device = torch.device(str(config.run.device))
    context = RunContext(
        config=config,
        benchmark=benchmark,
        registry=benchmark.registry,
        device=device,
        output_dir=output_dir,
        plugin_manager=manager,
    )

    plugins = manager.build_training_plugins(plugin_names, context)
    meter = TrainingMeter()
    metrics = RoutingMetrics(
        benchmark.registry.family_ids(), benchmark.registry.domain_ids(), ks=list(config.eval.top_k)
    )
    evaluator = EvaluationPlugin(metrics, loggers=_avalanche_loggers(output_dir))
    strategy = manager.build_strategy(strategy_info.name, context, [*plugins, meter], evaluator)

    names = list(benchmark.experience_names)
    result = RunResult(metrics.matrix, {}, strategy, context, complete=False, experience_names=names)

    def round_end(index: int) -> None:
        result.summary = _summary(metrics.matrix, meter, list(config.eval.top_k))
        result.complete = index == len(benchmark.train_stream) - 1
        _log_round(index, names, result.summary)
        if on_round_end is not None:
            on_round_end(result)

    try:
        strategy.fit_stream(benchmark.train_stream, benchmark.test_stream, on_round_end=round_end)
    finally:
        _close_loggers(evaluator)
    result.summary = _summary(metrics.matrix, meter, list(config.eval.top_k))
    return result


def validate_config(config: DictConfig) -> None:
    """Check option values that OmegaConf's types cannot, before any data is loaded.

    Raises:
        ConfigError: Naming the option, the bad value and a valid choice.
    """
    positive = {
        "train.epochs": config.train.epochs,
        "train.batch_size": config.train.batch_size,
        "train.eval_batch_size": config.train.eval_batch_size,
        "router.dim": config.router.dim,
        "encoder.max_length": config.encoder.max_length,
    }
    for key, value in positive.items():
        if int(value) < 1:
            raise ConfigError(f"invalid {key}={value}: it must be at least 1")
    for key in ("max_models_per_experience", "max_prompts_per_model"):
        value = config.data[key]
        if value is not None and int(value) < 1:
            raise ConfigError(f"invalid data.{key}={value}: use a count of at least 1, or null for all")
    for key in ("lr_encoder", "lr_router"):
        if float(config.train[key]) <= 0:
            raise ConfigError(f"invalid train.{key}={config.train[key]}: a learning rate must be positive")
    if float(config.router.tau) <= 0:
        raise ConfigError(f"invalid router.tau={config.router.tau}: the temperature must be positive")
    if str(config.data.variant) not in ("lite", "full"):
        raise ConfigError(f"invalid data.variant={config.data.variant}: use lite or full")
    if not config.eval.top_k or min(int(k) for k in config.eval.top_k) < 1:
        raise ConfigError(f"invalid eval.top_k={list(config.eval.top_k)}: use k values of at least 1")
    _validate_device(str(config.run.device))
    _validate_encoder_name(str(config.encoder.name))


def _validate_device(name: str) -> None:
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"invalid run.device={name}: {error}; use cpu or cuda:N") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"invalid run.device={name}: no CUDA device is available here; use run.device=cpu")


def _validate_encoder_name(name: str) -> None:
    # A name that starts like a path is meant as a local folder, never as a Hugging Face id.
    if name.startswith((".", "/", "~")) and not Path(name).expanduser().is_dir():
        raise ConfigError(
            f"invalid encoder.name={name}: folder not found; pass an existing local folder, "
            "a Hugging Face id, or minilm"
        )


def load_benchmark(config: DictConfig) -> Any:
    """Build the CMRBench scenario described by ``config.data``."""
    from cmrkit.data.benchmark import cmrbench
    from cmrkit.data.source import DataSource

    data = config.data
    source = DataSource(
        data.dir, cache_dir=data.cache_dir, base_url=str(data.base_url), download=bool(data.download)
    )
    return cmrbench(
        variant=str(data.variant),
        source=source,
        max_models_per_experience=data.max_models_per_experience,
        max_prompts_per_model=data.max_prompts_per_model,
        seed=int(config.run.seed),
    )


def _summary(matrix: AccuracyMatrix, meter: TrainingMeter, ks: list[int]) -> dict[str, float]:
    summary = summarize(matrix, ks)
    summary["train_seconds"] = round(meter.train_seconds, 2)
    summary["train_sample_passes"] = float(meter.sample_passes)
    return summary


def _log_round(index: int, names: list[str], summary: dict[str, float]) -> None:
    logger.info(
        "after E%d (%s): M-Acc %.1f, F-Acc %.1f, D-Acc %.1f, D-Acc@3 %.1f (mean over seen test experiences)",
        index + 1,
        names[index] if index < len(names) else "?",
        summary["m_acc"],
        summary["f_acc"],
        summary["d_acc"],
        summary.get("d_acc_top3", float("nan")),
    )


def _close_loggers(evaluator: EvaluationPlugin) -> None:
    for avalanche_logger in evaluator.loggers:
        handle = getattr(avalanche_logger, "file", None)
        if handle is not None and hasattr(handle, "close") and handle not in (sys.stdout, sys.stderr):
            handle.close()


def _avalanche_loggers(output_dir: Path | None) -> list[Any]:
    loggers: list[Any] = [LoggingMetricsLogger()]
    if output_dir is not None:
        from avalanche.logging import TextLogger

        output_dir.mkdir(parents=True, exist_ok=True)
        loggers.append(TextLogger(open(output_dir / "avalanche.log", "a", encoding="utf-8")))  # noqa: SIM115
    return loggers
