"""``carve``: CARvE's contrastive training over candidate sets with mined hard negatives.

CARvE ("Continual Anchored Router via contrastive Embeddings", from "Continual Model Routing in
Evolving Model Hubs", Bell, Carfì, Gramaglia, Lomonaco, ICML 2026) trains the shared cmrkit
router (encoder, bias-free projection, L2 norm, one embedding row per model, ``cos / tau``)
with cross-entropy over a candidate set per query rather than over every model. The anchor and
replay parts of CARvE are the ``anchor`` and ``replay`` training plugins; the full method is
``--strategy carve --plugins anchor,replay``.

Hard negatives come from a per-label cache that is rebuilt every ``mine_every`` steps. The
strategy embeds the experience's training prompts (replayed ones included) with the current
router and no gradients, and averages them per label into class-mean query vectors. For each
label it keeps the ``hard_pool`` wrong seen models whose rows score highest against that mean.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cmrkit.extensions import RunContext, StrategyInfo
from cmrkit.router import Router
from cmrkit.strategies.base import RoutingTemplate, build_routing_strategy
from cmrkit.strategies.losses import (
    CandidateCrossEntropyLoss,
    CandidateMix,
    DomainIndex,
    mine_hard_negatives,
    sample_candidates,
    weighted_cross_entropy,
)

logger = logging.getLogger("cmrkit.strategies.carve")


@dataclass
class CarveConfig:
    """Options of the ``carve`` strategy, under ``strategies.carve.*``."""

    candidates: int = field(
        default=64, metadata={"help": "Candidate set size K per query, the positive included."}
    )
    hard_negatives: int = field(
        default=15,
        metadata={"help": "Hard negatives per candidate set (mined top-scoring wrong models)."},
    )
    semantic_negatives: int = field(
        default=38,
        metadata={"help": "Negatives from the positive model's domain per candidate set."},
    )
    far_negatives: int = field(
        default=10,
        metadata={
            "help": "Negatives from other domains per candidate set; the rest is random fill."
        },
    )
    hard_pool: int = field(
        default=50,
        metadata={"help": "Mined wrong models kept per label; hard negatives are drawn from it."},
    )
    mine_every: int = field(
        default=100,
        metadata={"help": "Re-mine hard negatives every N training steps (and at step 0)."},
    )
    full_softmax: bool = field(
        default=False,
        metadata={"help": "Use cross-entropy over all seen models instead of candidate sets."},
    )
    head_only_fraction: float | None = field(
        default=0.4,
        metadata={
            "help": "Fraction of each later experience's steps that train only projection "
            "and head; "
            "null uses train.head_only_fraction."
        },
    )


class Carve(RoutingTemplate):
    """CARvE training: candidate-set cross-entropy with mined hard negatives.

    Args:
        model: The router to train.
        train: Training settings (``cmrkit.config.TrainSettings`` or a config node).
        carve: A :class:`CarveConfig` or a config node with its fields; ``None`` uses defaults.
        domain_ids: Domain id per registry label; default ``registry.domain_ids()``. Without
            either, every model is in one domain, so far negatives become random fill.
        **kwargs: The other arguments of :class:`RoutingTemplate` (``device``, ``plugins``,
            ``evaluator``, ``progress``, ``seed``, ``plugin_manager``, ``registry``).
    """

    def __init__(
        self,
        *,
        model: Router,
        train: Any,
        carve: Any = None,
        domain_ids: Tensor | None = None,
        **kwargs: Any,
    ) -> None:
        options = carve if carve is not None else CarveConfig()
        self.mix = CandidateMix(
            size=int(options.candidates),
            hard=int(options.hard_negatives),
            semantic=int(options.semantic_negatives),
            far=int(options.far_negatives),
        )
        self.hard_pool_size = int(options.hard_pool)
        self.mine_every = int(options.mine_every)
        if self.hard_pool_size < 0:
            raise ValueError(
                f"invalid strategies.carve.hard_pool {self.hard_pool_size}: it must be 0 or more"
            )
        if self.mine_every < 1:
            raise ValueError(
                f"invalid strategies.carve.mine_every {self.mine_every}: it must be at least 1"
            )
        self.full_softmax = bool(options.full_softmax)
        fraction = options.head_only_fraction
        self.head_only_fraction = None if fraction is None else float(fraction)
        if self.head_only_fraction is not None and not 0.0 <= self.head_only_fraction <= 1.0:
            raise ValueError(
                f"invalid strategies.carve.head_only_fraction {fraction}: "
                "it must be in [0, 1] or null"
            )

        super().__init__(model=model, train=train, **kwargs)

        if domain_ids is None and self.registry is not None:
            domain_ids = self.registry.domain_ids()
        self.domain_ids = domain_ids
        self.candidate_loss = CandidateCrossEntropyLoss()
        self.generator = torch.Generator().manual_seed(self.seed)
        self.domain_index: DomainIndex | None = None
        self.hard_pool: Tensor | None = None

    # -- experience setup ---------------------------------------------------------------------

    def model_adaptation(self, model: nn.Module | None = None) -> nn.Module:
        adapted = super().model_adaptation(model)
        if self.is_training:
            self.start_experience()
        return adapted

    def start_experience(self) -> None:
        """Index the seen labels by domain and clear the hard-negative cache.

        Called after the head grew for a training experience; the seen set is then fixed until
        the next experience.
        """
        seen = self.router.head.seen_labels()
        self.hard_pool = None
        if not seen:
            self.domain_index = None
            return
        domain_ids = self.domain_ids
        if domain_ids is None or domain_ids.numel() <= max(seen):
            if domain_ids is None:
                logger.warning("no registry or domain ids given: far negatives become random fill")
            else:
                logger.warning(
                    "domain ids cover %d labels but the head has label %d: "
                    "treating all models as one domain",
                    domain_ids.numel(),
                    max(seen),
                )
            domain_ids = torch.zeros(max(seen) + 1, dtype=torch.long)
        self.domain_index = DomainIndex(seen, domain_ids)

        size = min(self.mix.size, len(seen))
        hard, semantic, far = self.mix.counts_for(size)
        logger.info(
            "experience %d: %s over %d seen models (K=%d: %d hard, %d semantic, %d far, %d fill)",
            self._exp_index() + 1,
            "full softmax" if self.full_softmax else "candidate sets",
            len(seen),
            size,
            hard,
            semantic,
            far,
            size - 1 - hard - semantic - far,
        )

    def make_optimizer(self, **kwargs: Any) -> None:
        super().make_optimizer(**kwargs)
        # Replaces the steps RoutingTemplate derived from train.head_only_fraction.
        if self.head_only_fraction is not None:
            fraction = 0.0 if self._exp_index() == 0 else self.head_only_fraction
            self.head_only_steps = int(round(fraction * self.exp_steps))

    # -- training step ------------------------------------------------------------------------

    def forward(self) -> Tensor:
        if (
            self.is_training
            and self.uses_hard_negatives()
            and self.clock.train_exp_iterations % self.mine_every == 0
        ):
            self.refresh_hard_negatives()
        return super().forward()

    def criterion(self) -> Tensor:
        if not self.is_training:
            return super().criterion()
        if self.full_softmax or self.domain_index is None:
            return weighted_cross_entropy(self.mb_output, self.mb_y, self.mb_weights)
        candidates = sample_candidates(
            self.mb_y,
            self.domain_index,
            self.mix,
            hard_pool=self.hard_pool,
            generator=self.generator,
        )
        return self.candidate_loss(self.mb_output, candidates, self.mb_weights)

    def uses_hard_negatives(self) -> bool:
        """Return whether training samples hard negatives (candidate sets with a hard share)."""
        return not self.full_softmax and self.mix.hard > 0 and self.hard_pool_size > 0

    # -- hard-negative mining -----------------------------------------------------------------

    @torch.no_grad()
    def refresh_hard_negatives(self) -> None:
        """Re-mine the hard-negative pool of every label in the experience's training data."""
        started = time.perf_counter()
        queries, labels = self.class_mean_queries()
        head = self.router.head
        pool = mine_hard_negatives(
            queries, labels, head.normalized_rows(), head.seen, self.hard_pool_size
        )

        cache = torch.full((head.num_rows, self.hard_pool_size), -1, dtype=torch.long)
        cache[labels.cpu()] = pool
        self.hard_pool = cache
        logger.debug(
            "mined hard negatives for %d labels at step %d in %.1fs",
            labels.numel(),
            self.clock.train_exp_iterations,
            time.perf_counter() - started,
        )

    @torch.no_grad()
    def class_mean_queries(self) -> tuple[Tensor, Tensor]:
        """Embed the training data with the current router; return L2-normalised class means.

        Returns ``(queries [n, dim], labels [n])`` for the ``n`` labels present in
        ``adapted_dataset``. Runs in eval mode (no dropout) and restores the training mode.
        """
        router = self.router
        was_training = router.training
        router.eval()
        sums = torch.zeros(router.head.num_rows, router.dim, device=self.device)
        counts = torch.zeros(router.head.num_rows, device=self.device)
        loader = DataLoader(
            self.adapted_dataset,
            batch_size=self.eval_mb_size,
            shuffle=False,
            collate_fn=self.collator,
        )
        try:
            for batch in tqdm(
                loader, desc="mine hard negatives", leave=False, disable=not self.progress
            ):
                features, targets = batch[0].to(self.device), batch[1].to(self.device)
                sums.index_add_(0, targets, router.embed(self.frozen_features(features)))
                counts.index_add_(0, targets, torch.ones_like(targets, dtype=counts.dtype))
        finally:
            router.train(was_training)

        labels = torch.nonzero(counts > 0).flatten()
        return F.normalize(sums[labels], dim=-1), labels


def build_carve(context: RunContext, plugins: list[Any], evaluator: Any) -> Carve:
    """Build the ``carve`` strategy for a run."""
    config = context.config
    strategies = config.get("strategies") or {}
    options = strategies.get("carve") if "carve" in strategies else None
    if options is None:
        options = OmegaConf.structured(CarveConfig)
    strategy = build_routing_strategy(Carve, context, plugins, evaluator, carve=options)
    assert isinstance(strategy, Carve)
    return strategy


STRATEGY = StrategyInfo(
    name="carve",
    factory=build_carve,
    description="CARvE: cross-entropy over candidate sets with mined hard negatives "
    "(add --plugins anchor,replay for the full method).",
    config_class=CarveConfig,
)
