"""Zero-shot retrieval over model cards: ``bm25`` and ``dense``. Neither strategy trains.

Both strategies walk the stream like a trainable one, so their accuracy matrix and summary are
comparable with every other strategy. ``train(experience)`` runs no epochs. It only adds the
experience's models to the candidate set. After experience ``i`` the candidates are the models
of the training experiences ``1..i``, and every other model gets a ``-inf`` score, exactly as
unseen rows do in a trained router's head.

- ``bm25`` scores the raw prompt text against each candidate's card text (model id, domain,
  functionality, description; see :meth:`cmrkit.data.registry.ModelCard.card_text`) with the
  ``bm25s`` package. Its minibatches carry the prompts as a :class:`PromptBatch` (a list of
  strings) instead of a tokenised ``BatchEncoding``, because BM25 needs the words. Decoding
  WordPiece ids back to text would lose words mapped to ``[UNK]`` and everything past
  ``max_length``.
  The index covers only the current candidates and is rebuilt whenever new models arrive, so
  its IDF statistics never include model cards from later experiences.
- ``dense`` is a :class:`cmrkit.router.Router` whose projection is the identity and whose head
  rows are the encoder's L2-normalised pooled embeddings of the card texts, with ``tau = 1``, so
  a logit is the cosine between the prompt and the card. The encoder is ``encoder.name`` with
  ``encoder.pooling`` (mean pooling for the default MiniLM) and no LoRA, and the ``router.*``
  options do not apply. Cards are truncated to ``encoder.max_length`` tokens. Because it is a
  plain router, its checkpoint works with ``cmrkit route``.

The paper's dense baseline ("Continual Model Routing in Evolving Model Hubs", Bell et al.,
ICML 2026) used BGE-M3 with a reranker; ``dense`` has no reranker.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bm25s
import torch
from avalanche.models import DynamicModule
from avalanche.training.plugins import EvaluationPlugin
from bm25s.tokenization import Tokenizer
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from cmrkit import __version__
from cmrkit.checkpoint import FORMAT_VERSION
from cmrkit.data.registry import ModelRegistry
from cmrkit.encoder import QueryEncoder, TextCollator
from cmrkit.extensions import RunContext, StrategyInfo
from cmrkit.router import CardRowInitializer, Router
from cmrkit.strategies.base import RoutingTemplate

logger = logging.getLogger("cmrkit.strategies.retrieval")

STOPWORD_CHOICES = ("en", "none")


@dataclass
class BM25Config:
    """Options of the ``bm25`` strategy (``strategies.bm25.*``)."""

    k1: float = field(default=1.5, metadata={"help": "BM25 term-frequency saturation k1."})
    b: float = field(default=0.75, metadata={"help": "BM25 document-length normalisation b."})
    stopwords: str = field(
        default="en", metadata={"help": "Stopword list: en (bm25s's English list) or none."}
    )


@dataclass
class DenseConfig:
    """The ``dense`` strategy has no options of its own; it reads ``encoder.*``."""


# -- minibatches ------------------------------------------------------------------------------


class PromptBatch(list[str]):
    """The prompts of a minibatch as plain strings.

    ``to()`` returns the batch itself, because Avalanche's ``_unpack_minibatch`` moves every
    minibatch element to the device.
    """

    def to(self, *args: Any, **kwargs: Any) -> PromptBatch:
        return self


class PromptCollator:
    """Collate ``[prompt, label, (weight,) task]`` samples into ``[PromptBatch, labels, weights, tasks]``.

    The layout matches :class:`cmrkit.encoder.TextCollator` except that the prompts stay text.
    """

    def __call__(self, samples: Sequence[Sequence[Any]]) -> list[Any]:
        labels = torch.tensor([int(sample[1]) for sample in samples], dtype=torch.long)
        weights = torch.tensor(
            [float(sample[2]) if len(sample) > 3 else 1.0 for sample in samples], dtype=torch.float32
        )
        tasks = torch.tensor([int(sample[-1]) for sample in samples], dtype=torch.long)
        return [PromptBatch(str(sample[0]) for sample in samples), labels, weights, tasks]


# -- candidate set and BM25 scorer ------------------------------------------------------------


class CandidateSet(DynamicModule):
    """The labels a retrieval model may return, grown by Avalanche model adaptation.

    It mirrors the ``seen`` mask of :class:`cmrkit.router.ModelEmbeddingHead`: ``num_rows`` is
    one more than the largest label added, and labels not added score ``-inf``.
    """

    seen: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("seen", torch.zeros(0, dtype=torch.bool))

    @property
    def num_rows(self) -> int:
        """Number of score columns, seen or not."""
        return int(self.seen.shape[0])

    def seen_labels(self) -> list[int]:
        """Labels added so far, in increasing order."""
        return torch.nonzero(self.seen).flatten().tolist()

    def adaptation(self, experience: object) -> None:
        """Add the experience's classes (called only while training, see ``RoutingTemplate``)."""
        labels = sorted(int(label) for label in getattr(experience, "classes_in_this_experience", []))
        self.add_labels(labels)

    def add_labels(self, labels: Sequence[int]) -> list[int]:
        """Mark ``labels`` as candidates and return the ones that were new."""
        if not labels:
            return []
        needed = max(labels) + 1
        if needed > self.num_rows:
            grown = torch.zeros(needed, dtype=torch.bool, device=self.seen.device)
            grown[: self.num_rows] = self.seen
            self.seen = grown
        new = [label for label in labels if not bool(self.seen[label])]
        self.seen[list(labels)] = True
        return new


class BM25Router(nn.Module):
    """Score prompts against the candidates' model cards with BM25 (``bm25s``, Lucene variant).

    ``forward`` takes a sequence of prompt strings and returns float32 scores
    ``[batch, num_rows]``: the BM25 score of each candidate's card (0 when no query term occurs
    in it) and ``-inf`` for labels that are not candidates. Query terms absent from every
    candidate card are dropped.

    Args:
        card_texts: Card text per registry label.
        k1: BM25 term-frequency saturation.
        b: BM25 document-length normalisation.
        stopwords: ``"en"`` for bm25s's English stopword list or ``"none"``.
    """

    def __init__(self, card_texts: Sequence[str], *, k1: float = 1.5, b: float = 0.75,
                 stopwords: str = "en") -> None:
        super().__init__()
        if stopwords not in STOPWORD_CHOICES:
            raise ValueError(f"invalid stopwords {stopwords!r}: use one of {', '.join(STOPWORD_CHOICES)}")
        if k1 < 0 or not 0.0 <= b <= 1.0:
            raise ValueError(f"invalid BM25 parameters k1={k1}, b={b}: need k1 >= 0 and 0 <= b <= 1")
        self.card_texts = list(card_texts)
        self.k1 = k1
        self.b = b
        self.stopwords = stopwords
        self.head = CandidateSet()
        self._index: bm25s.BM25 | None = None
        self._tokenizer: Tokenizer | None = None
        self._indexed_labels: list[int] = []

    def forward(self, prompts: Sequence[str]) -> Tensor:
        labels = self.head.seen_labels()
        scores = torch.full((len(prompts), self.head.num_rows), float("-inf"))
        if not labels:
            return scores.to(self.head.seen.device)
        if labels != self._indexed_labels:
            self._build_index(labels)
        assert self._tokenizer is not None and self._index is not None

        queries = self._tokenizer.tokenize(
            list(prompts), update_vocab=False, return_as="string", show_progress=False
        )
        columns = torch.tensor(labels, dtype=torch.long)
        for row, tokens in enumerate(queries):
            # bm25s 0.3 turns a query without known words into [""], whose id lies past its score
            # matrix, and it rejects an empty query. Such a query scores 0 for every candidate.
            words = [token for token in tokens if token]
            if words:
                scores[row, columns] = torch.from_numpy(self._index.get_scores(words)).float()
            else:
                scores[row, columns] = 0.0
        return scores.to(self.head.seen.device)

    def _build_index(self, labels: list[int]) -> None:
        stopwords: str | None = None if self.stopwords == "none" else self.stopwords
        self._tokenizer = Tokenizer(stopwords=stopwords)
        corpus = self._tokenizer.tokenize(
            [self.card_texts[label] for label in labels], return_as="string", show_progress=False
        )
        self._index = bm25s.BM25(k1=self.k1, b=self.b)
        self._index.index(corpus, show_progress=False)
        self._indexed_labels = list(labels)
        logger.info("BM25 index rebuilt over %d model cards", len(labels))


# -- the template -----------------------------------------------------------------------------


class RetrievalTemplate(RoutingTemplate):
    """Walk the stream without training: ``train`` only adds the experience's models.

    ``train_epochs`` is 0, so Avalanche still runs dataset adaptation, model adaptation (which
    grows the candidate set and notifies ``cmrkit_models_added``) and the experience callbacks,
    but no iteration. ``fit_stream`` and evaluation are the ones of :class:`RoutingTemplate`.

    Args:
        model: A :class:`BM25Router`, or a :class:`Router` whose head rows are card embeddings.
        collator: Collate function of the evaluation minibatches.
        train: Training settings; only ``eval_batch_size`` and ``batch_size`` are read.
        device: Torch device.
        plugins: Avalanche plugins (the run's meter; training plugins are rejected earlier).
        evaluator: Avalanche evaluation plugin.
        progress: Show tqdm bars during evaluation.
        seed: Unused by retrieval; kept for the dataloader shared with ``RoutingTemplate``.
        plugin_manager: Notified through ``cmrkit_models_added`` when candidates are added.
        registry: The model registry passed to ``cmrkit_models_added``.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        collator: Any,
        train: Any,
        device: str | torch.device = "cpu",
        plugins: Sequence[Any] | None = None,
        evaluator: EvaluationPlugin | None = None,
        progress: bool = True,
        seed: int = 0,
        plugin_manager: Any = None,
        registry: Any = None,
    ) -> None:
        super().__init__(
            model=model,
            train=train,
            device=device,
            plugins=plugins,
            evaluator=evaluator,
            progress=progress,
            seed=seed,
            plugin_manager=plugin_manager,
            registry=registry,
            collator=collator,
            train_epochs=0,
        )

    @property
    def router(self) -> Any:
        """The retrieval model; both kinds expose ``head.seen_labels()`` for model adaptation."""
        return self.model

    def make_optimizer(self, **kwargs: Any) -> None:
        # Retrieval has no trainable state.
        self.exp_steps = 0
        self.head_only_steps = 0

    def forward(self) -> Tensor:
        return self.model(self.mb_x)


# -- dense ------------------------------------------------------------------------------------


def build_dense_router(config: DictConfig, registry: ModelRegistry) -> Router:
    """Build the ``dense`` model: identity projection, ``tau = 1``, rows from card embeddings.

    Rows are filled by :class:`cmrkit.router.CardRowInitializer` when model adaptation adds them,
    so only cards of models that reach the candidate set are embedded.
    """
    settings = config.encoder
    if settings.lora.enabled:
        logger.info("dense retrieval ignores encoder.lora.enabled: it has nothing to train")
    encoder = QueryEncoder(settings.name, max_length=int(settings.max_length), pooling=str(settings.pooling))
    hidden = encoder.hidden_size
    router = Router(encoder, dim=hidden, tau=1.0)
    with torch.no_grad():
        router.projection.weight.copy_(torch.eye(hidden))
    for parameter in router.parameters():
        parameter.requires_grad_(False)

    texts = [registry.card(label).card_text() for label in range(len(registry))]
    router.head.row_initializer = CardRowInitializer(
        router, texts, batch_size=int(config.train.eval_batch_size)
    )
    return router


def build_dense(context: RunContext, plugins: list[Any], evaluator: Any) -> RetrievalTemplate:
    """Build the ``dense`` strategy for a run; its checkpoint is an ordinary router checkpoint."""
    config = context.config
    router = build_dense_router(config, context.registry)
    return RetrievalTemplate(
        model=router,
        collator=TextCollator(router.encoder),
        train=config.train,
        device=context.device,
        plugins=plugins,
        evaluator=evaluator,
        progress=bool(config.run.progress),
        seed=int(config.run.seed),
        plugin_manager=context.plugin_manager,
        registry=context.registry,
    )


# -- bm25 -------------------------------------------------------------------------------------


def build_bm25(context: RunContext, plugins: list[Any], evaluator: Any) -> RetrievalTemplate:
    """Build the ``bm25`` strategy for a run and register its checkpoint writer."""
    config = context.config
    options = _strategy_options(config, "bm25", BM25Config)
    registry = context.registry
    model = BM25Router(
        [registry.card(label).card_text() for label in range(len(registry))],
        k1=float(options.k1), b=float(options.b), stopwords=str(options.stopwords),
    )

    def write(directory: Path, run_config: DictConfig) -> Path:
        return save_bm25_checkpoint(directory, model, registry, run_config)

    context.state["checkpoint_writer"] = write
    return RetrievalTemplate(
        model=model,
        collator=PromptCollator(),
        train=config.train,
        device=context.device,
        plugins=plugins,
        evaluator=evaluator,
        progress=bool(config.run.progress),
        seed=int(config.run.seed),
        plugin_manager=context.plugin_manager,
        registry=registry,
    )


def save_bm25_checkpoint(directory: Path, model: BM25Router, registry: ModelRegistry,
                         config: DictConfig) -> Path:
    """Write a ``bm25`` checkpoint: ``router.json`` (kind ``bm25``), the registry and the config.

    The folder has the layout of :func:`cmrkit.checkpoint.save_checkpoint` without weights, so
    the BM25 index can be rebuilt from the registry's cards and the candidate labels.
    ``cmrkit.checkpoint.load_checkpoint`` rejects it with a message naming the kind.
    """
    directory = Path(directory)
    staging = directory.with_name(directory.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)

    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": "bm25",
        "cmrkit_version": __version__,
        "bm25": {"k1": model.k1, "b": model.b, "stopwords": model.stopwords},
        "num_rows": model.head.num_rows,
        "seen_labels": model.head.seen_labels(),
    }
    (staging / "router.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    registry.save(staging / "registry.json")
    (staging / "config.yaml").write_text(OmegaConf.to_yaml(config, resolve=True), encoding="utf-8")

    if directory.exists():
        shutil.rmtree(directory)
    staging.rename(directory)
    logger.info("bm25 checkpoint written to %s (%d models routable)", directory, len(meta["seen_labels"]))
    return directory


def _strategy_options(config: DictConfig, name: str, config_class: type) -> Any:
    strategies = config.get("strategies")
    if strategies is not None and name in strategies:
        return strategies[name]
    return OmegaConf.structured(config_class)


BM25_STRATEGY = StrategyInfo(
    name="bm25",
    factory=build_bm25,
    description="Zero-shot BM25 retrieval of prompts over model-card text (no training).",
    config_class=BM25Config,
    trainable=False,
)

DENSE_STRATEGY = StrategyInfo(
    name="dense",
    factory=build_dense,
    description="Zero-shot cosine retrieval of prompts over encoder embeddings of model cards.",
    config_class=DenseConfig,
    trainable=False,
)
