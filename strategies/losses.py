"""Candidate sets, hard-negative mining and the candidate-set contrastive loss of CARvE.

CARvE ("Continual Model Routing in Evolving Model Hubs", Bell, Carfì, Gramaglia, Lomonaco,
ICML 2026) trains the router with cross-entropy over a fixed-size candidate set per query
instead of a softmax over the whole registry. The set contains the positive model, hard negatives
(the highest-scoring wrong models under the current router), semantic negatives (models of the
positive's domain), far negatives (models of other domains) and random fill. The paper's code
uses 64 = 1 + 15 + 38 + 10.

Everything here works on label tensors with torch ops, so one call samples the candidate sets of
a whole minibatch without a Python loop over its queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

POSITIVE, HARD, SEMANTIC, FAR = 0, 1, 2, 3
"""Candidate categories, in the order they fill a candidate set."""

_UNSELECTED = 4.0


@dataclass(frozen=True)
class CandidateMix:
    """Size and composition of a candidate set.

    Attributes:
        size: Candidates per query (``K``), the positive included.
        hard: Hard negatives per query.
        semantic: Negatives from the positive's domain.
        far: Negatives from other domains.

    The rest, ``size - 1 - hard - semantic - far``, is random fill from all seen models.
    """

    size: int = 64
    hard: int = 15
    semantic: int = 38
    far: int = 10

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"invalid candidate set size {self.size}: it must be at least 1")
        for name in ("hard", "semantic", "far"):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"invalid {name} negative count {getattr(self, name)}: it must be 0 or more"
                )
        if 1 + self.hard + self.semantic + self.far > self.size:
            raise ValueError(
                f"invalid candidate mix: 1 positive + {self.hard} hard + "
                f"{self.semantic} semantic + "
                f"{self.far} far negatives exceed the candidate set size {self.size}"
            )

    @property
    def fill(self) -> int:
        """Random-fill negatives per query at full size."""
        return self.size - 1 - self.hard - self.semantic - self.far

    def counts_for(self, size: int) -> tuple[int, int, int]:
        """Return ``(hard, semantic, far)`` for a set shrunk to ``size`` candidates.

        At full size the configured counts are returned. A smaller set shares its ``size - 1``
        negatives in proportion to the configured counts (fill included), by largest remainder
        with ties going to hard, then semantic, then far, then fill.
        """
        if size >= self.size:
            return self.hard, self.semantic, self.far
        shares = _apportion(max(size - 1, 0), [self.hard, self.semantic, self.far, self.fill])
        return shares[0], shares[1], shares[2]


def _apportion(total: int, weights: Sequence[int]) -> list[int]:
    weight_sum = sum(weights)
    if weight_sum == 0 or total == 0:
        return [0] * len(weights)
    exact = [total * weight / weight_sum for weight in weights]
    shares = [int(value) for value in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    return shares


class DomainIndex:
    """The seen labels of the current experience, with a domain id per label.

    Built once per experience (the seen set only changes when the head grows), so sampling a
    minibatch's candidate sets needs no per-query lookups.

    Args:
        seen_labels: Labels the router can predict, in any order.
        domain_ids: Domain id per registry label, ``[num_labels]``; covers every seen label.
    """

    def __init__(self, seen_labels: Sequence[int] | Tensor, domain_ids: Tensor) -> None:
        labels = torch.as_tensor(seen_labels, dtype=torch.long).flatten().unique(sorted=True)
        if labels.numel() == 0:
            raise ValueError("a domain index needs at least one seen label")
        if int(labels.max()) >= domain_ids.numel():
            raise ValueError(
                f"label {int(labels.max())} has no domain id: "
                f"domain_ids covers {domain_ids.numel()} labels"
            )
        self.labels = labels
        """Seen labels in increasing order; label ``labels[i]`` is column ``i`` when sampling."""
        self.domains = domain_ids.to(torch.long).cpu()[labels]
        """Domain id of each seen label, aligned with :attr:`labels`."""
        self.column_of = torch.full((int(labels.max()) + 1,), -1, dtype=torch.long)
        """Column of each label in :attr:`labels`, ``-1`` for labels that are not seen."""
        self.column_of[labels] = torch.arange(labels.numel())

    @property
    def num_seen(self) -> int:
        """Number of seen labels."""
        return int(self.labels.numel())

    def columns(self, labels: Tensor) -> Tensor:
        """Map labels to columns; unseen or out-of-range labels map to ``-1``."""
        inside = (labels >= 0) & (labels < self.column_of.numel())
        columns = torch.full_like(labels, -1)
        columns[inside] = self.column_of[labels[inside]]
        return columns


def sample_candidates(
    labels: Tensor,
    index: DomainIndex,
    mix: CandidateMix,
    *,
    hard_pool: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sample one candidate set per query: positive first, then negatives, no duplicates.

    The set size is ``K = min(mix.size, index.num_seen)``, so while few models are seen the set
    shrinks and the negative counts shrink in proportion (:meth:`CandidateMix.counts_for`).
    Hard negatives are drawn uniformly from the query label's mined pool, semantic negatives from
    the other seen labels of the positive's domain, far negatives from the other domains. A
    category with too few labels leaves its share to the random fill, which draws from every
    seen label not yet in the set. Every candidate is a seen label.

    Inputs:
        +-----------------------------+-----------------------------------------------+
        | Argument                    | Shape and meaning                             |
        +=============================+===============================================+
        | ``labels``                  | ``[batch]`` true labels; each must be seen     |
        +-----------------------------+-----------------------------------------------+
        | ``hard_pool``               | ``[num_labels, pool]`` mined wrong labels per  |
        |                             | label, best first, ``-1`` for empty slots      |
        +-----------------------------+-----------------------------------------------+

    Args:
        labels: True label of each query.
        index: Seen labels and their domains for the current experience.
        mix: Candidate set size and composition.
        hard_pool: Output of :func:`mine_hard_negatives` stored by label; ``None`` turns the
            hard share into random fill.
        generator: Random generator, for reproducible sets.

    Returns:
        A LongTensor ``[batch, K]`` of labels with the positive in column 0.

    Raises:
        ValueError: A label of ``labels`` is not in ``index``.

    Reference:
        Candidate set of CARvE, "Continual Model Routing in Evolving Model Hubs" (Bell et al.,
        ICML 2026): K = 64 with 15 hard, 38 semantic and 10 far negatives.

    Example:
        ::

            index = DomainIndex([0, 1, 2, 3, 4], domain_ids=torch.tensor([0, 0, 0, 1, 1]))
            mix = CandidateMix(size=4, hard=0, semantic=2, far=1)
            sets = sample_candidates(torch.tensor([0, 3]), index, mix)
            # sets[0] == [0, <two of 1, 2>, <3 or 4>]; sets[1] == [3, <4 and one of 0-2>, ...]
    """
    labels = labels.detach().to("cpu", torch.long)
    batch, num_seen = labels.numel(), index.num_seen
    size = min(mix.size, num_seen)
    n_hard, n_semantic, n_far = mix.counts_for(size)

    positive_columns = index.columns(labels)
    if bool((positive_columns < 0).any()):
        unseen = labels[positive_columns < 0].unique().tolist()
        raise ValueError(f"labels {unseen} are not seen by the router, so they cannot be positives")

    rows = torch.arange(batch)
    same_domain = index.domains.unsqueeze(0) == index.domains[positive_columns].unsqueeze(1)
    category = torch.where(same_domain, SEMANTIC, FAR)
    if hard_pool is not None and n_hard > 0:
        _mark_hard(category, labels, positive_columns, index, hard_pool, n_hard, generator)
    category[rows, positive_columns] = POSITIVE

    quotas = torch.tensor([1, n_hard, n_semantic, n_far])
    noise = torch.rand(batch, num_seen, generator=generator)
    selected = _take_quotas(category, noise, quotas)

    # Quota picks first, by category (so the positive is column 0), then the random fill.
    keys = torch.where(selected, category.to(noise.dtype) + noise, _UNSELECTED + noise)
    columns = keys.argsort(dim=1)[:, :size]
    return index.labels[columns]


def _mark_hard(
    category: Tensor,
    labels: Tensor,
    positive_columns: Tensor,
    index: DomainIndex,
    hard_pool: Tensor,
    n_hard: int,
    generator: torch.Generator | None,
) -> None:
    """Mark ``n_hard`` labels drawn uniformly from each query's hard pool as ``HARD``."""
    pool = hard_pool.detach().to("cpu", torch.long)
    if int(labels.max()) >= pool.shape[0] or pool.shape[1] == 0:
        return
    pool_columns = index.columns(pool[labels])
    valid = (pool_columns >= 0) & (pool_columns != positive_columns.unsqueeze(1))

    keys = torch.rand(pool_columns.shape, generator=generator).masked_fill(~valid, -1.0)
    take = keys.topk(min(n_hard, pool_columns.shape[1]), dim=1).indices
    chosen = pool_columns.gather(1, take)
    chosen_valid = valid.gather(1, take)

    query_rows = torch.arange(labels.numel()).unsqueeze(1).expand_as(chosen)
    category[query_rows[chosen_valid], chosen[chosen_valid]] = HARD


def _take_quotas(category: Tensor, noise: Tensor, quotas: Tensor) -> Tensor:
    """Select, per row, ``quotas[c]`` random columns of each category ``c``."""
    order = (category.to(noise.dtype) + noise).argsort(dim=1)
    sorted_category = category.gather(1, order)

    counts = F.one_hot(category, num_classes=len(quotas)).sum(dim=1)
    starts = counts.cumsum(dim=1) - counts
    rank = torch.arange(category.shape[1]).unsqueeze(0) - starts.gather(1, sorted_category)
    picked_sorted = rank < quotas[sorted_category]

    selected = torch.zeros_like(picked_sorted)
    selected.scatter_(1, order, picked_sorted)
    return selected


def mine_hard_negatives(
    queries: Tensor,
    query_labels: Tensor,
    rows: Tensor,
    seen: Tensor,
    pool_size: int,
) -> Tensor:
    """Return the highest-scoring wrong seen models for each query, best first.

    Scores are dot products, which are cosine similarities when ``queries`` and ``rows`` are
    L2-normalised (as :meth:`cmrkit.router.ModelEmbeddingHead.normalized_rows` returns them).
    CARvE mines once per label from the label's class-mean query vector; any query vectors work.

    Inputs:
        +-------------------+------------------------------------------------------+
        | Argument          | Shape and meaning                                    |
        +===================+======================================================+
        | ``queries``       | ``[n, dim]`` query vectors, one per mined label      |
        +-------------------+------------------------------------------------------+
        | ``query_labels``  | ``[n]`` the true label of each query                 |
        +-------------------+------------------------------------------------------+
        | ``rows``          | ``[num_rows, dim]`` model embedding rows             |
        +-------------------+------------------------------------------------------+
        | ``seen``          | ``[num_rows]`` bool, rows that may be negatives      |
        +-------------------+------------------------------------------------------+

    Args:
        pool_size: Negatives to keep per query.

    Returns:
        A LongTensor ``[n, pool_size]`` of labels in decreasing score order, ``-1`` where fewer
        than ``pool_size`` wrong seen models exist.

    Reference:
        Hard negatives of CARvE (Bell et al., ICML 2026): a pool of 50 per model, re-mined
        without gradients every 100 steps.

    Example:
        ::

            rows = F.normalize(torch.randn(10, 8), dim=-1)
            seen = torch.ones(10, dtype=torch.bool)
            pool = mine_hard_negatives(rows[:2], torch.tensor([0, 1]), rows, seen, pool_size=3)
            # pool[0] contains the 3 rows other than 0 closest to row 0
    """
    num_rows = rows.shape[0]
    out = torch.full((queries.shape[0], pool_size), -1, dtype=torch.long)
    width = min(pool_size, num_rows)
    if queries.shape[0] == 0 or width == 0:
        return out

    scores = (queries @ rows.T).float()
    scores = scores.masked_fill(~seen.to(torch.bool).unsqueeze(0), float("-inf"))
    scores[torch.arange(queries.shape[0]), query_labels] = float("-inf")

    top_scores, top_labels = scores.topk(width, dim=1)
    top_labels = top_labels.cpu().masked_fill(~torch.isfinite(top_scores).cpu(), -1)
    out[:, :width] = top_labels
    return out


class CandidateCrossEntropyLoss(nn.Module):
    """Cross-entropy over a candidate set per query, weighted per sample.

    Each query's logits are gathered at its candidates and the loss is the cross-entropy with
    target column 0 (the positive, as :func:`sample_candidates` places it). Sample weights make
    replayed prompts count more; the result is ``sum(w_i * ce_i) / sum(w_i)``.

    Inputs:
        +----------------+-------------------------------------------------------------+
        | Argument       | Shape and meaning                                           |
        +================+=============================================================+
        | ``logits``     | ``[batch, num_rows]`` router scores ``cos / tau``           |
        +----------------+-------------------------------------------------------------+
        | ``candidates`` | ``[batch, K]`` labels, positive in column 0, all finite     |
        +----------------+-------------------------------------------------------------+
        | ``weights``    | ``[batch]`` sample weights, or ``None`` for 1.0 each        |
        +----------------+-------------------------------------------------------------+

    Reference:
        CARvE's training loss, "Continual Model Routing in Evolving Model Hubs" (Bell et al.,
        ICML 2026). With every seen model as a candidate it equals the full-softmax
        cross-entropy of :class:`cmrkit.strategies.base.RoutingTemplate`.

    Related:
        :func:`weighted_cross_entropy` is the full-softmax counterpart.

    Example:
        ::

            loss_fn = CandidateCrossEntropyLoss()
            logits = torch.randn(2, 5)
            loss = loss_fn(logits, torch.tensor([[1, 0, 4], [3, 2, 0]]), torch.tensor([1.0, 5.0]))
    """

    def forward(self, logits: Tensor, candidates: Tensor, weights: Tensor | None = None) -> Tensor:
        candidate_logits = logits.gather(1, candidates.to(logits.device))
        target = torch.zeros(candidates.shape[0], dtype=torch.long, device=logits.device)
        losses = F.cross_entropy(candidate_logits, target, reduction="none")
        return weighted_mean(losses, weights)


def weighted_cross_entropy(logits: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
    """Cross-entropy over all logits (``-inf`` for unseen rows), weighted per sample."""
    return weighted_mean(F.cross_entropy(logits, labels, reduction="none"), weights)


def weighted_mean(losses: Tensor, weights: Tensor | None) -> Tensor:
    """Return ``sum(w * losses) / sum(w)``, or the plain mean when ``weights`` is ``None``."""
    if weights is None:
        return losses.mean()
    weights = weights.to(losses.device, losses.dtype)
    return (losses * weights).sum() / weights.sum().clamp(min=1e-8)
