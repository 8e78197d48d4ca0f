"""``nearest_mean``: a nearest-class-mean router over the frozen encoder.

Each model's row in the router head is the mean router-space embedding (encoder, then the fixed
random projection, then L2 normalisation) of every prompt the strategy has seen for that model.
A prompt is routed to the rows with the highest cosine similarity. No weight is ever updated by
a gradient, so earlier models are not forgotten, and a recurring model's row moves towards the
mean of all its prompts: a nearest-class-mean classifier on a fixed pretrained encoder.

The projection keeps its random initialisation. A random Gaussian projection approximately
preserves inner products when ``router.dim`` is large enough (Johnson-Lindenstrauss lemma), so
keep ``router.dim`` close to the encoder width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from cmrkit.extensions import RunContext, StrategyInfo
from cmrkit.strategies.base import RoutingTemplate, build_routing_strategy
from omegaconf import OmegaConf
from torch import Tensor
from tqdm.auto import tqdm


@dataclass
class NearestMeanConfig:
    """Options of the ``nearest_mean`` strategy, under ``strategies.nearest_mean.*``."""

    weighted: bool = field(
        default=True,
        metadata={"help": "Weight each prompt by its loss weight (replayed prompts can weigh more)."},
    )


class NearestMean(RoutingTemplate):
    """Routing template whose training pass accumulates per-model embedding sums instead of steps.

    Training plugins still get ``before_training_iteration`` and ``after_training_iteration``
    and every experience-level callback; the forward, backward and update callbacks never fire
    because there is no update. Replayed prompts join the sums again each time they are replayed.

    Args:
        weighted: Use each sample's loss weight as its weight in the mean.
        **kwargs: Passed to :class:`RoutingTemplate`.
    """

    def __init__(self, *, weighted: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.weighted = weighted
        # One pass computes the means; a second epoch would count every prompt twice.
        self.train_epochs = 1
        self.sums = torch.zeros(0, self.router.dim)
        self.totals = torch.zeros(0)

    def training_epoch(self, **kwargs: Any) -> None:
        # Replaces the SGD epoch of RoutingTemplate: eval mode, so dropout does not blur the means.
        self.model.eval()
        batches = tqdm(
            self.dataloader, desc=f"means E{self._exp_index() + 1}", leave=False, disable=not self.progress
        )
        for self.mbatch in batches:
            if self._stop_training:
                break
            self._unpack_minibatch()
            self._before_training_iteration(**kwargs)
            with torch.no_grad():
                queries = self.router.embed(self.mb_x)
            weights = self.mb_weights if self.weighted else torch.ones_like(self.mb_weights)
            self.accumulate(queries, self.mb_y, weights)
            self.loss = self._make_empty_loss()
            self._after_training_iteration(**kwargs)
        self.write_rows()

    def accumulate(self, queries: Tensor, labels: Tensor, weights: Tensor) -> None:
        """Add weighted ``queries`` ``[batch, dim]`` to the running sums of their ``labels``."""
        rows = self.router.head.num_rows
        if self.sums.shape[0] < rows:
            grown = rows - self.sums.shape[0]
            self.sums = torch.cat([self.sums, torch.zeros(grown, self.sums.shape[1])])
            self.totals = torch.cat([self.totals, torch.zeros(grown)])
        cpu_labels = labels.cpu()
        self.sums.index_add_(0, cpu_labels, queries.detach().cpu() * weights.cpu().unsqueeze(1))
        self.totals.index_add_(0, cpu_labels, weights.detach().cpu())

    def write_rows(self) -> None:
        """Set every row with a positive total to its model's mean embedding."""
        labels = torch.nonzero(self.totals > 0).flatten()
        means = self.sums[labels] / self.totals[labels].unsqueeze(1)
        head = self.router.head.weight
        with torch.no_grad():
            head[labels.to(head.device)] = means.to(head.device, head.dtype)


def build_nearest_mean(context: RunContext, plugins: list[Any], evaluator: Any) -> NearestMean:
    """Build the ``nearest_mean`` strategy for a run."""
    weighted = OmegaConf.select(context.config, "strategies.nearest_mean.weighted", default=True)
    strategy = build_routing_strategy(NearestMean, context, plugins, evaluator, weighted=bool(weighted))
    assert isinstance(strategy, NearestMean)
    return strategy


STRATEGY = StrategyInfo(
    name="nearest_mean",
    factory=build_nearest_mean,
    description="Nearest-class-mean router over the frozen encoder: rows are mean prompt embeddings.",
    config_class=NearestMeanConfig,
)
