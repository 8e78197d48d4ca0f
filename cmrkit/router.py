"""The router network: query encoder, bias-free projection, and a growing model-embedding head.

Scores are cosine similarities between the L2-normalised projected query and one learned
embedding per model id, divided by a temperature ``tau``. This is the scoring rule of CARvE
("Continual Model Routing in Evolving Model Hubs", Bell et al., ICML 2026), which every trainable
cmrkit strategy shares so that strategies differ only in how they train.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from avalanche.models import DynamicModule
from torch import Tensor, nn

from cmrkit.encoder import QueryEncoder

logger = logging.getLogger("cmrkit.router")


class ModelEmbeddingHead(DynamicModule):
    """One learned embedding row per model label; logits are ``cos(query, row) / tau``.

    Row ``i`` belongs to registry label ``i``. Rows are appended when an experience brings labels
    beyond the current size and are never re-indexed. A boolean ``seen`` buffer marks the rows of
    models the router has trained on; unseen rows get ``-inf`` logits, so they are out of the
    training loss and can never be predicted.

    Args:
        dim: Width of the router space.
        tau: Softmax temperature of the cosine scores.
        init_std: Standard deviation of the random initialisation of new rows.
    """

    def __init__(self, dim: int, *, tau: float = 0.08, init_std: float = 0.02) -> None:
        super().__init__()
        if tau <= 0:
            raise ValueError(f"invalid tau {tau}: the temperature must be positive")
        self.dim = dim
        self.tau = tau
        self.init_std = init_std
        self.weight = nn.Parameter(torch.empty(0, dim))
        self.seen: Tensor
        self.register_buffer("seen", torch.zeros(0, dtype=torch.bool))
        self.row_initializer: RowInitializer | None = None

    @property
    def num_rows(self) -> int:
        """Number of rows, seen or not."""
        return int(self.weight.shape[0])

    def seen_labels(self) -> list[int]:
        """Labels of the rows the router has trained on, in increasing order."""
        return torch.nonzero(self.seen).flatten().tolist()

    def adaptation(self, experience: object) -> None:
        """Grow the head to cover the experience's classes and mark them seen.

        Only called during training (see ``RoutingTemplate.model_adaptation``), because a router
        must not gain rows for models it never trained on just by being evaluated.
        """
        labels = sorted(int(label) for label in getattr(experience, "classes_in_this_experience", []))
        if labels:
            self.add_labels(labels)

    def add_labels(self, labels: Sequence[int]) -> list[int]:
        """Ensure rows exist for ``labels``, mark them seen, and return the labels that were new."""
        if not labels:
            return []
        needed = max(labels) + 1
        if needed > self.num_rows:
            self._grow(needed)
        new = [label for label in labels if not bool(self.seen[label])]
        self.seen[list(labels)] = True
        return new

    def _grow(self, num_rows: int) -> None:
        old = self.weight.data
        start = old.shape[0]
        fresh = torch.randn(num_rows - start, self.dim, device=old.device, dtype=old.dtype) * self.init_std
        if self.row_initializer is not None:
            fresh = self.row_initializer(list(range(start, num_rows)), fresh)
        self.weight = nn.Parameter(torch.cat([old, fresh], dim=0))
        seen = torch.zeros(num_rows, dtype=torch.bool, device=self.seen.device)
        seen[:start] = self.seen
        self.seen = seen
        logger.debug("model-embedding head grew from %d to %d rows", start, num_rows)

    def normalized_rows(self) -> Tensor:
        """Return the L2-normalised embedding rows, shape ``[num_rows, dim]``."""
        return F.normalize(self.weight, dim=-1)

    def forward(self, query: Tensor) -> Tensor:
        """Score L2-normalised ``query`` vectors ``[batch, dim]`` against every row.

        Returns logits of shape ``[batch, num_rows]`` with ``-inf`` in unseen rows.
        """
        logits = query @ self.normalized_rows().T / self.tau
        return logits.masked_fill(~self.seen.unsqueeze(0), float("-inf"))


class RowInitializer:
    """Callable that fills new head rows: ``(labels, random_rows) -> rows``.

    The default head keeps random rows; :class:`CardRowInitializer` starts them from model-card
    embeddings instead.
    """

    def __call__(self, labels: list[int], rows: Tensor) -> Tensor:
        return rows


class Router(nn.Module):
    """Encoder, then a bias-free linear projection, then L2 normalisation, then the head.

    ``forward`` takes a tokenised batch (a mapping with ``input_ids`` and ``attention_mask``)
    or a float tensor of pre-computed encoder outputs ``[batch, hidden]``, and returns logits over
    the head's rows.
    """

    def __init__(self, encoder: QueryEncoder, *, dim: int = 256, tau: float = 0.08) -> None:
        super().__init__()
        self.encoder = encoder
        self.projection = nn.Linear(encoder.hidden_size, dim, bias=False)
        nn.init.normal_(self.projection.weight, std=1.0 / math.sqrt(encoder.hidden_size))
        self.head = ModelEmbeddingHead(dim, tau=tau)

    @property
    def dim(self) -> int:
        """Width of the router space."""
        return self.head.dim

    def embed(self, batch: Mapping[str, Tensor] | Tensor) -> Tensor:
        """Return L2-normalised router-space query vectors ``[batch, dim]``."""
        features = batch if isinstance(batch, Tensor) else self.encoder(batch)
        return F.normalize(self.projection(features), dim=-1)

    def forward(self, batch: Mapping[str, Tensor] | Tensor) -> Tensor:
        return self.head(self.embed(batch))

    def router_parameters(self) -> list[nn.Parameter]:
        """Parameters of the projection and the head (everything but the encoder)."""
        return [*self.projection.parameters(), *self.head.parameters()]


class CardRowInitializer(RowInitializer):
    """Start new head rows from the projected encoder embedding of each model's card text.

    Args:
        router: The router whose encoder and projection embed the cards.
        card_texts: Card text per registry label.
    """

    def __init__(self, router: Router, card_texts: Sequence[str], *, batch_size: int = 64) -> None:
        self.router = router
        self.card_texts = list(card_texts)
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, labels: list[int], rows: Tensor) -> Tensor:
        was_training = self.router.training
        self.router.eval()
        out = rows.clone()
        for start in range(0, len(labels), self.batch_size):
            chunk = labels[start : start + self.batch_size]
            texts = [self.card_texts[label] for label in chunk]
            batch = self.router.encoder.tokenize(texts).to(rows.device)
            out[start : start + len(chunk)] = self.router.embed(batch).to(rows.dtype)
        self.router.train(was_training)
        return out
