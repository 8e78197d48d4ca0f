"""Regularisation baselines as training plugins: ``ewc`` and ``lwf``.

Both wrap Avalanche 0.6's plugins (``avalanche.training.plugins.EWCPlugin`` and ``LwFPlugin``)
and work with any trainable strategy, e.g. ``cmrkit run --strategy naive --plugins ewc``.
Where the wrappers change Avalanche's behaviour, the reason is given at the override.

- EWC (Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks", PNAS 2017):
  after each experience, the diagonal empirical Fisher (squared gradients of the cross-entropy,
  averaged over the experience's minibatches) weighs a quadratic penalty
  ``ewc_lambda * sum(F * (theta - theta_old) ** 2)`` on later experiences. Only the parameters
  the strategy's optimizer updates are tracked; head rows added later start with zero importance.
- LwF (Li and Hoiem, "Learning without Forgetting", ECCV 2016): a copy of the router after each
  experience is the teacher. The loss gains ``alpha * KL(teacher || student)`` at temperature
  ``temperature``, computed over the logits of the models of earlier experiences. Those rows are seen in both
  routers, so their logits are finite even though unseen rows are ``-inf``.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from avalanche.training.plugins import EWCPlugin, LwFPlugin
from avalanche.training.utils import ParamData
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cmrkit.extensions import RunContext, TrainingPluginInfo
from cmrkit.hookspecs import hookimpl

logger = logging.getLogger("cmrkit.plugins.regularization")

EWC_MODES = ("separate", "online")


@dataclass
class EWCConfig:
    """Options of the ``ewc`` plugin (``plugins.ewc.*``)."""

    ewc_lambda: float = field(
        default=1000.0,
        metadata={"help": "Weight of the EWC penalty (not tuned on CMRBench; scale it with the loss)."},
    )
    mode: str = field(
        default="separate",
        metadata={"help": "separate: one penalty per earlier experience (memory grows with the "
                          "stream); online: one running importance, decayed by decay_factor."},
    )
    decay_factor: float | None = field(
        default=None, metadata={"help": "Decay of the running importance; required by mode=online only."}
    )


@dataclass
class LwFConfig:
    """Options of the ``lwf`` plugin (``plugins.lwf.*``)."""

    alpha: float = field(default=1.0, metadata={"help": "Weight of the distillation loss."})
    temperature: float = field(default=2.0, metadata={"help": "Softmax temperature of the distillation."})


class RoutingEWCPlugin(EWCPlugin):
    """Avalanche's ``EWCPlugin`` for text minibatches and growing routers.

    Args:
        ewc_lambda: Weight of the penalty.
        mode: ``"separate"`` or ``"online"``.
        decay_factor: Importance decay for ``"online"``; must be ``None`` for ``"separate"``.

    Raises:
        ValueError: For an unknown mode or a decay factor that does not fit the mode.
    """

    def __init__(self, ewc_lambda: float, mode: str = "separate", decay_factor: float | None = None) -> None:
        # Avalanche checks these with assert; a ValueError reaches the user as a plugin error.
        if mode not in EWC_MODES:
            raise ValueError(f"invalid EWC mode {mode!r}: use one of {', '.join(EWC_MODES)}")
        if mode == "online" and decay_factor is None:
            raise ValueError("EWC mode 'online' needs plugins.ewc.decay_factor, e.g. 0.9")
        if mode == "separate" and decay_factor is not None:
            raise ValueError("plugins.ewc.decay_factor applies to mode=online only; set it to null")
        if ewc_lambda < 0:
            raise ValueError(f"invalid ewc_lambda {ewc_lambda}: it must be 0 or more")
        super().__init__(ewc_lambda, mode=mode, decay_factor=decay_factor)
        self.last_penalty = 0.0
        """Penalty added to the loss of the latest minibatch (already multiplied by lambda)."""

    def before_backward(self, strategy: Any, **kwargs: Any) -> None:
        # Avalanche pads grown parameters with ParamData.expand, which indexes with a list, a form
        # that torch deprecates. Slicing the current tensor to the saved shape gives the same
        # penalty, because rows added later have zero importance.
        penalty = self.penalty(strategy)
        self.last_penalty = float(penalty.detach())
        strategy.loss += penalty

    def penalty(self, strategy: Any) -> torch.Tensor:
        """Return ``ewc_lambda * sum(F * (theta - theta_old) ** 2)`` over the tracked parameters.

        Zero during the first experience. ``separate`` mode sums one term per earlier experience,
        ``online`` mode uses the running importance of the previous one.
        """
        counter = int(strategy.clock.train_exp_counter)
        total = torch.zeros((), device=strategy.device)
        if counter == 0:
            return total
        experiences = range(counter) if self.mode == "separate" else [counter - 1]
        current = dict(strategy.model.named_parameters())
        for experience in experiences:
            importances = self.importances[experience]
            for name, saved in self.saved_params[experience].items():
                parameter = current.get(name)
                if parameter is None:
                    continue
                window = tuple(slice(0, size) for size in saved.shape)
                drift = parameter[window] - saved.data
                total = total + (importances[name].data * drift.pow(2)).sum()
        return self.ewc_lambda * total

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        # Avalanche's version loads the experience with the dataset's own collate function (text
        # prompts have none) and calls the strategy's unreduced criterion, so it is redone here.
        exp_counter = int(strategy.clock.train_exp_counter)
        importances = self.fisher_diagonal(strategy)
        self.update_importances(importances, exp_counter)
        self.saved_params[exp_counter] = {
            name: ParamData(name, init_tensor=parameter.detach().clone(), device=parameter.device)
            for name, parameter in _optimized_parameters(strategy).items()
        }
        if exp_counter > 0 and not self.keep_importance_data:
            del self.saved_params[exp_counter - 1]

    def fisher_diagonal(self, strategy: Any) -> dict[str, ParamData]:
        """Average the squared minibatch gradients of the experience's cross-entropy.

        The router runs in eval mode (no dropout). Gradients are cleared afterwards.
        """
        model = strategy.model
        parameters = _optimized_parameters(strategy)
        sums = {name: torch.zeros_like(parameter) for name, parameter in parameters.items()}
        loader = DataLoader(
            strategy.experience.dataset, batch_size=strategy.train_mb_size, shuffle=False,
            collate_fn=strategy.collator,
        )

        was_training = model.training
        model.eval()
        batches = 0
        progress = bool(getattr(strategy, "progress", False))
        for batch in tqdm(loader, desc="EWC importances", leave=False, disable=not progress):
            model.zero_grad(set_to_none=True)
            logits = model(batch[0].to(strategy.device))
            F.cross_entropy(logits, batch[1].to(strategy.device)).backward()
            for name, parameter in parameters.items():
                if parameter.grad is not None:
                    sums[name] += parameter.grad.detach() ** 2
            batches += 1
        model.zero_grad(set_to_none=True)
        model.train(was_training)

        return {
            name: ParamData(f"imp_{name}", init_tensor=total / max(batches, 1), device=total.device)
            for name, total in sums.items()
        }

    @torch.no_grad()
    def update_importances(self, importances: dict[str, ParamData], t: int) -> None:
        # Avalanche's online update pairs old and new importances by position, which breaks when
        # the set of optimised parameters changes (a new LoRA adapter). This one pairs by name.
        if self.mode == "separate" or t == 0:
            self.importances[t] = importances
            return
        assert self.decay_factor is not None
        previous = self.importances[t - 1]
        merged: dict[str, ParamData] = {}
        for name, old in previous.items():
            if name not in importances:
                decayed_old = self.decay_factor * old.data
                merged[name] = ParamData(f"imp_{name}", init_tensor=decayed_old, device=old.device)
        for name, current in importances.items():
            decayed = current.data.clone()
            if name in previous:
                old = previous[name].data
                decayed[tuple(slice(0, size) for size in old.shape)] += self.decay_factor * old
            merged[name] = ParamData(f"imp_{name}", init_tensor=decayed, device=current.device)
        self.importances[t] = merged
        if not self.keep_importance_data:
            del self.importances[t - 1]


class RoutingLwFPlugin(LwFPlugin):
    """Avalanche's ``LwFPlugin`` with the teacher in eval mode and the penalty recorded.

    Args:
        alpha: Weight of the distillation loss.
        temperature: Softmax temperature of the distillation.

    Raises:
        ValueError: For a negative ``alpha`` or a non-positive ``temperature``.
    """

    def __init__(self, alpha: float = 1.0, temperature: float = 2.0) -> None:
        if alpha < 0:
            raise ValueError(f"invalid LwF alpha {alpha}: it must be 0 or more")
        if temperature <= 0:
            raise ValueError(f"invalid LwF temperature {temperature}: it must be positive")
        super().__init__(alpha=alpha, temperature=temperature)
        self.last_penalty = 0.0
        """Distillation loss added to the latest minibatch (already multiplied by alpha)."""

    def before_backward(self, strategy: Any, **kwargs: Any) -> None:
        penalty = self.lwf(strategy.mb_x, strategy.mb_output, strategy.model)
        self.last_penalty = float(penalty.detach()) if isinstance(penalty, torch.Tensor) else float(penalty)
        strategy.loss += penalty

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        # Avalanche's post_adapt reads exp.dataset.task_set, which cmrkit's datasets lack (every
        # CMRBench sample has task 0), and keeps the teacher in training mode, where dropout
        # would perturb the soft targets.
        teacher = copy.deepcopy(strategy.model)
        teacher.eval()
        teacher.requires_grad_(False)
        self.lwf.prev_model = teacher
        self.lwf.expcount += 1
        classes = {int(label) for label in strategy.experience.classes_in_this_experience}
        self.lwf.prev_classes_by_task[0] |= classes


def _optimized_parameters(strategy: Any) -> dict[str, torch.nn.Parameter]:
    """Named parameters of the strategy's model that its current optimizer updates."""
    optimizer = getattr(strategy, "optimizer", None)
    if optimizer is None:
        return {}
    ids = {id(parameter) for group in optimizer.param_groups for parameter in group["params"]}
    return {name: parameter for name, parameter in strategy.model.named_parameters() if id(parameter) in ids}


def build_ewc(options: Any, context: RunContext) -> list[RoutingEWCPlugin]:
    """Build the ``ewc`` plugin from ``plugins.ewc``."""
    decay = None if options.decay_factor is None else float(options.decay_factor)
    return [RoutingEWCPlugin(float(options.ewc_lambda), mode=str(options.mode), decay_factor=decay)]


def build_lwf(options: Any, context: RunContext) -> list[RoutingLwFPlugin]:
    """Build the ``lwf`` plugin from ``plugins.lwf``."""
    return [RoutingLwFPlugin(alpha=float(options.alpha), temperature=float(options.temperature))]


EWC_PLUGIN = TrainingPluginInfo(
    name="ewc",
    factory=build_ewc,
    description="Elastic weight consolidation: Fisher-weighted penalty on drift from earlier experiences.",
    config_class=EWCConfig,
)

LWF_PLUGIN = TrainingPluginInfo(
    name="lwf",
    factory=build_lwf,
    description="Learning without Forgetting: distil the previous router's scores over earlier models.",
    config_class=LwFConfig,
)


@hookimpl
def cmrkit_training_plugins() -> list[TrainingPluginInfo]:
    """Declare ``ewc`` and ``lwf``."""
    return [EWC_PLUGIN, LWF_PLUGIN]
