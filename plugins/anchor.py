"""``anchor``: checkpoint-based anchoring of old model rows and of the projection (CARvE).

At the start of every training experience after the first, the plugin snapshots the embedding
rows of the models seen before that experience and the projection weight. Each training step
then adds

    lambda_emb * mean over old rows of (1 - cos(v, v_snapshot))
    + lambda_proj * mean((W - W_snapshot) ** 2)

to the loss. Rows of models new in the experience are not anchored. The encoder is not anchored
either. Source: "Continual Model Routing in Evolving Model Hubs" (Bell, Carfì, Gramaglia,
Lomonaco, ICML 2026), which uses lambda_emb = 1e4 and lambda_proj = 5e4 for a 7B LLM encoder
with a 1024-d router. cmrkit keeps those values for its MiniLM router (256-d): on a CMRBench
slice they forgot least of the weights tried, and weaker projection weights let the projection
drift. docs/carve.md gives the reasons and the measurements.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from torch import Tensor, nn

from cmrkit.extensions import RunContext, TrainingPluginInfo
from cmrkit.hookspecs import hookimpl
from cmrkit.router import Router

logger = logging.getLogger("cmrkit.plugins.anchor")

DEFAULT_LAMBDA_EMB = 1e4
DEFAULT_LAMBDA_PROJ = 5e4


@dataclass
class AnchorConfig:
    """Options of the ``anchor`` plugin, under ``plugins.anchor.*``."""

    lambda_emb: float = field(
        default=DEFAULT_LAMBDA_EMB,
        metadata={"help": "Weight of mean(1 - cos) between old model rows and their snapshot."},
    )
    lambda_proj: float = field(
        default=DEFAULT_LAMBDA_PROJ,
        metadata={
            "help": "Weight of the mean squared drift of the projection weight from its snapshot."
        },
    )


class AnchorLoss(nn.Module):
    """Penalty on the drift of old model rows (cosine) and of the projection (squared error).

    Inputs:
        +----------------+-----------------------------------------------------------+
        | Argument       | Shape and meaning                                         |
        +================+===========================================================+
        | ``rows``       | ``[num_rows, dim]`` the head's current rows (all of them) |
        +----------------+-----------------------------------------------------------+
        | ``projection`` | ``[dim, hidden]`` the current projection weight           |
        +----------------+-----------------------------------------------------------+

    Only the snapshot's labels enter the row term, so rows outside it (new models) move freely.
    The loss is zero at the snapshot and grows with drift.

    Args:
        labels: Labels of the anchored rows.
        rows: Snapshot of those rows, ``[len(labels), dim]``.
        projection: Snapshot of the projection weight.
        lambda_emb: Weight of ``mean(1 - cos(v, v_snapshot))`` over the anchored rows.
        lambda_proj: Weight of ``mean((W - W_snapshot) ** 2)``.

    Reference:
        Checkpoint-based anchoring of CARvE, "Continual Model Routing in Evolving Model Hubs"
        (Bell et al., ICML 2026): lambda_emb = 1e4, lambda_proj = 5e4 there.

    Example:
        ::

            anchor = AnchorLoss.from_router(router, [0, 1, 2], lambda_emb=10.0, lambda_proj=100.0)
            # Zero right after the snapshot:
            loss = anchor(router.head.weight, router.projection.weight)
    """

    labels: Tensor
    rows: Tensor
    projection: Tensor

    def __init__(
        self,
        labels: Sequence[int] | Tensor,
        rows: Tensor,
        projection: Tensor,
        *,
        lambda_emb: float,
        lambda_proj: float,
    ) -> None:
        super().__init__()
        labels_tensor = torch.as_tensor(labels, dtype=torch.long).flatten()
        if labels_tensor.numel() != rows.shape[0]:
            raise ValueError(
                f"got {labels_tensor.numel()} labels but {rows.shape[0]} snapshot rows"
            )
        if lambda_emb < 0 or lambda_proj < 0:
            raise ValueError(
                f"invalid anchor weights {lambda_emb}, {lambda_proj}: they must be 0 or more"
            )
        self.register_buffer("labels", labels_tensor.to(rows.device))
        self.register_buffer("rows", rows.detach().clone())
        self.register_buffer("projection", projection.detach().clone())
        self.lambda_emb = float(lambda_emb)
        self.lambda_proj = float(lambda_proj)

    @classmethod
    def from_router(
        cls, router: Router, labels: Sequence[int], *, lambda_emb: float, lambda_proj: float
    ) -> AnchorLoss:
        """Snapshot ``labels``' rows and the projection of ``router`` as they are now."""
        weight = router.head.weight.detach()
        return cls(
            labels,
            weight[list(labels)],
            router.projection.weight.detach(),
            lambda_emb=lambda_emb,
            lambda_proj=lambda_proj,
        )

    def drift(self, rows: Tensor, projection: Tensor) -> tuple[Tensor, Tensor]:
        """Return the unweighted terms ``(mean(1 - cos), mean squared projection drift)``."""
        if self.labels.numel():
            cosine = F.cosine_similarity(rows[self.labels], self.rows, dim=-1)
            row_drift = (1.0 - cosine).mean()
        else:
            row_drift = rows.new_zeros(())
        projection_drift = (projection - self.projection).pow(2).mean()
        return row_drift, projection_drift

    def forward(self, rows: Tensor, projection: Tensor) -> Tensor:
        row_drift, projection_drift = self.drift(rows, projection)
        return self.lambda_emb * row_drift + self.lambda_proj * projection_drift


class AnchorPlugin(SupervisedPlugin):
    """Avalanche plugin that adds :class:`AnchorLoss` to every training step after experience 1.

    Works with any strategy whose ``model`` is a :class:`cmrkit.router.Router`. The snapshot
    is taken in ``before_training_exp``, which Avalanche calls after model adaptation. The head
    then already has the experience's new rows, and the snapshot leaves them out.

    Args:
        lambda_emb: See :class:`AnchorConfig`.
        lambda_proj: See :class:`AnchorConfig`.
    """

    def __init__(
        self, lambda_emb: float = DEFAULT_LAMBDA_EMB, lambda_proj: float = DEFAULT_LAMBDA_PROJ
    ) -> None:
        super().__init__()
        self.lambda_emb = float(lambda_emb)
        self.lambda_proj = float(lambda_proj)
        self.anchor: AnchorLoss | None = None
        self.seen_before: list[int] | None = None
        self._drift_sums = [0.0, 0.0]
        self._steps = 0

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        router = _router_of(strategy)
        self.anchor = None
        self._drift_sums, self._steps = [0.0, 0.0], 0
        if _experience_index(strategy) == 0:
            return

        old = self.old_labels(strategy, router)
        if not old:
            return
        self.anchor = AnchorLoss.from_router(
            router, old, lambda_emb=self.lambda_emb, lambda_proj=self.lambda_proj
        )
        logger.info("anchoring %d old model rows and the projection", len(old))

    def old_labels(self, strategy: Any, router: Router) -> list[int]:
        """Return the labels seen before the current experience.

        They are the head's seen labels recorded at the end of the previous training
        experience. If this plugin did not see that experience, they are the labels of the
        experience's ``previous_classes`` (Avalanche's class timeline) that the head has seen.
        """
        if self.seen_before is not None:
            return list(self.seen_before)
        previous = getattr(strategy.experience, "previous_classes", None) or []
        seen = set(router.head.seen_labels())
        return sorted(int(label) for label in previous if int(label) in seen)

    def before_backward(self, strategy: Any, **kwargs: Any) -> None:
        if self.anchor is None:
            return
        router = _router_of(strategy)
        anchor = self.anchor
        row_drift, projection_drift = anchor.drift(router.head.weight, router.projection.weight)
        penalty = anchor.lambda_emb * row_drift + anchor.lambda_proj * projection_drift
        strategy.loss = strategy.loss + penalty

        self._drift_sums[0] += float(row_drift.detach())
        self._drift_sums[1] += float(projection_drift.detach())
        self._steps += 1

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self.seen_before = _router_of(strategy).head.seen_labels()
        if self.anchor is not None and self._steps:
            logger.info(
                "anchor over the experience: mean row drift (1 - cos) %.2e, mean projection drift "
                "(squared) %.2e",
                self._drift_sums[0] / self._steps,
                self._drift_sums[1] / self._steps,
            )


def _router_of(strategy: Any) -> Router:
    model = strategy.model
    if not isinstance(model, Router):
        raise TypeError(
            "the anchor plugin needs a cmrkit Router as the strategy's model, got "
            f"{type(model).__name__}"
        )
    return model


def _experience_index(strategy: Any) -> int:
    return int(getattr(strategy.experience, "current_experience", 0))


def build_anchor(options: Any, context: RunContext) -> list[SupervisedPlugin]:
    """Build the ``anchor`` plugin from its ``plugins.anchor`` options."""
    return [
        AnchorPlugin(lambda_emb=float(options.lambda_emb), lambda_proj=float(options.lambda_proj))
    ]


@hookimpl
def cmrkit_training_plugins() -> list[TrainingPluginInfo]:
    """Declare the ``anchor`` training plugin."""
    return [
        TrainingPluginInfo(
            name="anchor",
            factory=build_anchor,
            description="CARvE anchoring: keep old model rows and the projection near their "
            "snapshot from the start of each experience.",
            config_class=AnchorConfig,
        )
    ]
