"""``merge``: train a fresh LoRA adapter per experience and merge all of them after each one.

The paper's TIES baseline ("Continual Model Routing in Evolving Model Hubs", Bell et al.,
ICML 2026) is ``cmrkit run --strategy naive --plugins merge`` with the defaults (TIES, density
0.3). Per experience:

1. Before the training dataset is adapted (so before the strategy builds its optimizer), a new
   adapter ``experience<k>`` is added to the encoder with the ``encoder.lora.*`` settings and
   made the active, trainable one. Every other adapter is frozen and inactive, so the
   experience trains the base encoder plus its own fresh adapter. The projection and the
   model-embedding head keep training as in the strategy.
2. After training, every per-experience adapter trained so far is merged into a frozen adapter
   named ``merged`` with peft's ``add_weighted_adapter`` (``ties``, ``dare_ties`` or
   ``linear``), which replaces the previous ``merged`` adapter and is the active one for
   evaluation and for the checkpoint.

If ``encoder.lora.enabled`` is false, the plugin wraps the encoder with LoRA itself (logged at
INFO), because merging needs adapters. The untrained adapter that ``encoder.lora.enabled=true``
creates at build time is deleted once the first experience's adapter exists.

NOTE: peft (0.17 and later) merges ``linear``, ``ties`` and ``dare_ties`` adapters factor by
factor (the A matrices together, the B matrices together), not as products ``B @ A``. Its own
documentation calls ``linear`` a rough approximation, so a merged adapter is not the average
of the adapters' weight updates.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

from avalanche.core import SupervisedPlugin

from cmrkit.encoder import LoraSettings
from cmrkit.extensions import RunContext, TrainingPluginInfo
from cmrkit.hookspecs import hookimpl

logger = logging.getLogger("cmrkit.plugins.merge")

MERGE_METHODS = ("ties", "dare_ties", "linear")
SIGN_METHODS = ("total", "frequency")
MERGED_ADAPTER = "merged"
ADAPTER_PREFIX = "experience"


@dataclass
class MergeConfig:
    """Options of the ``merge`` plugin (``plugins.merge.*``)."""

    method: str = field(default="ties", metadata={"help": "Merge rule: ties, dare_ties or linear."})
    density: float = field(
        default=0.3, metadata={"help": "Fraction of adapter weights kept by ties and dare_ties, in (0, 1]."}
    )
    weight: float | None = field(
        default=None,
        metadata={"help": "Weight of each adapter; default 1.0 for ties/dare_ties and 1/n for linear."},
    )
    majority_sign_method: str = field(
        default="total", metadata={"help": "Sign election of ties/dare_ties: total or frequency."}
    )


class LoraMergePlugin(SupervisedPlugin):
    """Train one LoRA adapter per experience and keep their merge active between experiences.

    Args:
        method: ``"ties"``, ``"dare_ties"`` or ``"linear"``.
        density: Fraction of weights kept by ``ties`` and ``dare_ties``; ignored by ``linear``.
        weight: Weight of every adapter in the merge. ``None`` means 1.0 for ``ties`` and
            ``dare_ties``, whose merge averages the kept values, and ``1/n`` for ``linear``,
            which sums the weighted adapters.
        lora: LoRA settings for the adapters when the encoder has none yet.
        majority_sign_method: Sign election of ``ties`` and ``dare_ties``.

    Raises:
        ValueError: For an unknown method or sign rule, or a density outside (0, 1].
    """

    def __init__(self, method: str = "ties", density: float = 0.3, weight: float | None = None, *,
                 lora: LoraSettings | Any = None, majority_sign_method: str = "total") -> None:
        super().__init__()
        if method not in MERGE_METHODS:
            raise ValueError(f"invalid merge method {method!r}: use one of {', '.join(MERGE_METHODS)}")
        if not 0.0 < density <= 1.0:
            raise ValueError(f"invalid merge density {density}: it must be in (0, 1]")
        if majority_sign_method not in SIGN_METHODS:
            raise ValueError(
                f"invalid majority_sign_method {majority_sign_method!r}: use one of {', '.join(SIGN_METHODS)}"
            )
        self.method = method
        self.density = density
        self.weight = weight
        self.lora = lora if lora is not None else LoraSettings()
        self.majority_sign_method = majority_sign_method
        self.trained_adapters: list[str] = []
        """Names of the per-experience adapters trained so far, in training order."""
        self.current_adapter: str | None = None
        self._adapter_config: Any = None

    # -- callbacks ----------------------------------------------------------------------------

    def before_train_dataset_adaptation(self, strategy: Any, **kwargs: Any) -> None:
        # Runs before make_optimizer (Avalanche 0.6 builds the optimizer before calling
        # before_training_exp), so the new adapter's weights are in this experience's optimizer.
        backbone = self._peft_backbone(strategy)
        name = f"{ADAPTER_PREFIX}{int(strategy.clock.train_exp_counter) + 1}"
        initial = None if self._adapter_config is not None else backbone.active_adapter
        if self._adapter_config is None:
            self._adapter_config = copy.deepcopy(backbone.peft_config[initial])

        backbone.add_adapter(name, copy.deepcopy(self._adapter_config))
        backbone.set_adapter(name)
        if initial is not None and initial != name:
            backbone.delete_adapter(initial)  # the untrained adapter created with the encoder
        self.current_adapter = name
        if getattr(strategy.settings, "freeze_encoder", False):
            logger.warning("merge: train.freeze_encoder is true, so adapter %s will not train", name)
        logger.info("merge: training LoRA adapter %s", name)

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        if self.current_adapter is None:
            return
        self.trained_adapters.append(self.current_adapter)
        self.current_adapter = None
        self.merge(strategy.router.encoder.backbone)

    # -- merging ------------------------------------------------------------------------------

    def merge(self, backbone: Any) -> None:
        """Replace the ``merged`` adapter with the merge of :attr:`trained_adapters` and activate it."""
        if MERGED_ADAPTER in backbone.peft_config:
            backbone.delete_adapter(MERGED_ADAPTER)
        count = len(self.trained_adapters)
        weight = self.weight
        if weight is None:
            weight = 1.0 / count if self.method == "linear" else 1.0
        backbone.add_weighted_adapter(
            adapters=list(self.trained_adapters),
            weights=[weight] * count,
            adapter_name=MERGED_ADAPTER,
            combination_type=self.method,
            density=None if self.method == "linear" else self.density,
            majority_sign_method=self.majority_sign_method,
        )
        backbone.set_adapter(MERGED_ADAPTER, inference_mode=True)
        logger.info(
            "merge: merged %d adapters (%s) with %s, weight %.3g each; %s is active",
            count, ", ".join(self.trained_adapters), self.method, weight, MERGED_ADAPTER,
        )

    def _peft_backbone(self, strategy: Any) -> Any:
        from peft import PeftModel

        encoder = strategy.router.encoder
        if not isinstance(encoder.backbone, PeftModel):
            logger.info("merge: encoder.lora.enabled is false; adding LoRA (r=%s)", self.lora.r)
            encoder.enable_lora(self.lora)
        return encoder.backbone


def build_merge(options: Any, context: RunContext) -> list[LoraMergePlugin]:
    """Build the ``merge`` plugin from ``plugins.merge`` and ``encoder.lora``."""
    weight = options.weight
    return [LoraMergePlugin(
        method=str(options.method),
        density=float(options.density),
        weight=None if weight is None else float(weight),
        lora=context.config.encoder.lora,
        majority_sign_method=str(options.majority_sign_method),
    )]


MERGE_PLUGIN = TrainingPluginInfo(
    name="merge",
    factory=build_merge,
    description="Train a LoRA adapter per experience and merge them (TIES by default) after each.",
    config_class=MergeConfig,
)


@hookimpl
def cmrkit_training_plugins() -> list[TrainingPluginInfo]:
    """Declare ``merge``."""
    return [MERGE_PLUGIN]
