"""``replay``: a buffer of earlier prompts mixed into later experiences with a larger loss weight.

After each training experience a replay policy selects a share of that experience's training
prompts (``ratio`` times its size), and the plugin adds them to the buffer. In every later
experience the buffer is appended to the training data, each replayed sample carrying the loss
weight ``weight`` and each new sample 1.0.

Policies are looked up by name among those declared through the ``cmrkit_replay_policies`` hook.
cmrkit declares ``random`` and ``domain_coreset``, the structured replay of CARvE ("Continual
Model Routing in Evolving Model Hubs", Bell, Carfì, Gramaglia, Lomonaco, ICML 2026). A
third-party policy subclasses :class:`ReplayPolicy` and is declared the same way.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from avalanche.benchmarks.utils.classification_dataset import ClassificationDataset
from avalanche.benchmarks.utils.data_attribute import DataAttribute
from avalanche.core import SupervisedPlugin
from torch import Tensor
from torch.utils.data import Dataset

from cmrkit.encoder import QueryEncoder
from cmrkit.extensions import ReplayPolicyInfo, RunContext, TrainingPluginInfo
from cmrkit.hookspecs import hookimpl

logger = logging.getLogger("cmrkit.plugins.replay")

BUFFER_FILE = "replay_buffer.json"
BUFFER_FORMAT_VERSION = 1


@dataclass
class ReplayConfig:
    """Options of the ``replay`` plugin, under ``plugins.replay.*``."""

    policy: str = field(
        default="domain_coreset",
        metadata={"help": "Selection policy: random, domain_coreset or a plugin's."},
    )
    ratio: float = field(
        default=0.1,
        metadata={
            "help": "Buffer share of each finished experience, as a fraction of its training "
            "prompts."
        },
    )
    weight: float | None = field(
        default=None,
        metadata={
            "help": "Loss weight of replayed prompts; null uses the policy's default "
            "(5.0 for domain_coreset, 1.0 for random)."
        },
    )
    domain_floor: int = field(
        default=5,
        metadata={"help": "domain_coreset: minimum prompts per domain (when the budget allows)."},
    )
    per_model_cap: int = field(
        default=3,
        metadata={"help": "domain_coreset: maximum prompts per model before the leftover fill."},
    )
    embedding_encoder: str | None = field(
        default=None,
        metadata={
            "help": "Encoder of the fixed embedding space for coreset selection; null uses a "
            "frozen copy of the router's encoder taken before any training."
        },
    )
    embedding_batch_size: int = field(
        default=64, metadata={"help": "Prompts per batch when embedding candidates."}
    )
    seed: int | None = field(
        default=None, metadata={"help": "Seed of the policy's random choices; null uses run.seed."}
    )
    restore_from: str | None = field(
        default=None,
        metadata={
            "help": f"Checkpoint folder or {BUFFER_FILE} file to load the buffer from before "
            "training."
        },
    )


# -- policy interface --------------------------------------------------------------------------


@dataclass
class ReplayCandidates:
    """One finished experience's training samples, offered to a replay policy.

    ``embed`` maps prompts into a fixed embedding space (by default the frozen initial encoder),
    returning L2-normalised float rows ``[len(prompts), dim]`` on the CPU. Results are cached.
    """

    prompts: list[str]
    labels: list[int]
    domains: list[str]
    families: list[str]
    experience: int
    embed: Callable[[list[str]], torch.Tensor]

    def __len__(self) -> int:
        return len(self.prompts)


class ReplayPolicy(ABC):
    """Chooses which of an experience's samples enter the replay buffer.

    Subclasses set ``default_weight`` (the loss weight used when ``plugins.replay.weight`` is
    null) and ``uses_embeddings`` (``False`` lets the plugin skip the frozen encoder copy).

    Args:
        options: The ``plugins.replay`` config node; policies read their own keys from it.
    """

    default_weight: float = 1.0
    uses_embeddings: bool = True

    def __init__(self, options: Any) -> None:
        self.options = options

    @abstractmethod
    def select(self, candidates: ReplayCandidates, budget: int, rng: random.Random) -> list[int]:
        """Return at most ``budget`` distinct indices into ``candidates``."""


class RandomReplayPolicy(ReplayPolicy):
    """Uniform sample without replacement; replayed prompts weigh 1.0 by default (plain replay)."""

    default_weight = 1.0
    uses_embeddings = False

    def select(self, candidates: ReplayCandidates, budget: int, rng: random.Random) -> list[int]:
        return rng.sample(range(len(candidates)), min(max(budget, 0), len(candidates)))


class DomainCoresetPolicy(ReplayPolicy):
    """CARvE's structured replay: domain quotas, a per-model cap, farthest-point sampling.

    1. Each domain's quota is its proportional share of the budget, raised to ``domain_floor``
       and lowered to what the domain can supply under the cap. When the quotas sum to more
       than the budget, the shares above the floors shrink first. So while
       ``budget >= domain_floor * domains``, every domain gets at least ``domain_floor`` prompts
       or all it can supply (:func:`domain_quotas`).
    2. Within each domain, farthest-point sampling in the fixed embedding space picks the quota,
       starting from the prompt nearest the domain's mean, with at most ``per_model_cap``
       prompts per model.
    3. Budget left unused (small quotas, caps) is filled by farthest-point sampling over all
       remaining prompts, first among models under the cap, then among all.

    Replayed prompts weigh 5.0 by default, as in the CARvE paper's code release. Ties in every
    step go to the lower index, so the selection does not depend on ``rng``.
    """

    default_weight = 5.0
    uses_embeddings = True

    def __init__(self, options: Any) -> None:
        super().__init__(options)
        self.floor = int(_option(options, "domain_floor", 5))
        self.cap = int(_option(options, "per_model_cap", 3))
        if self.floor < 0 or self.cap < 1:
            raise ValueError(
                f"invalid domain_floor {self.floor} or per_model_cap {self.cap}: the floor must be "
                "0 or more and the cap at least 1"
            )

    def select(self, candidates: ReplayCandidates, budget: int, rng: random.Random) -> list[int]:
        budget = min(max(budget, 0), len(candidates))
        if budget == 0:
            return []
        by_domain: dict[str, list[int]] = {}
        for index, domain in enumerate(candidates.domains):
            by_domain.setdefault(domain, []).append(index)

        sizes = {domain: len(indices) for domain, indices in by_domain.items()}
        supply = {
            domain: capped_supply([candidates.labels[i] for i in indices], self.cap)
            for domain, indices in by_domain.items()
        }
        quotas = domain_quotas(sizes, supply, budget, self.floor)

        embeddings = candidates.embed(candidates.prompts)
        per_model: Counter[int] = Counter()
        chosen: list[int] = []
        for domain in sorted(by_domain):
            chosen += farthest_point_sample(
                embeddings,
                by_domain[domain],
                quotas[domain],
                groups=candidates.labels,
                group_counts=per_model,
                cap=self.cap,
            )

        for cap in (self.cap, None):  # first respect the cap, then use up what it left
            if len(chosen) >= budget:
                break
            already_chosen = set(chosen)
            remaining = [i for i in range(len(candidates)) if i not in already_chosen]
            chosen += farthest_point_sample(
                embeddings,
                remaining,
                budget - len(chosen),
                selected=chosen,
                groups=candidates.labels,
                group_counts=per_model,
                cap=cap,
            )
        return chosen


def capped_supply(labels: Sequence[int], cap: int) -> int:
    """Number of prompts a domain can give when each model gives at most ``cap``."""
    return sum(min(count, cap) for count in Counter(labels).values())


def domain_quotas(
    sizes: dict[str, int], supply: dict[str, int], budget: int, floor: int
) -> dict[str, int]:
    """Per-domain replay quotas: proportional share, at least ``floor``, at most ``supply``.

    ``want[d] = min(supply[d], max(floor, round(budget * sizes[d] / total)))``. If the wants
    fit the budget they are returned as they are (the caller fills what is left). Otherwise each
    domain keeps its floor, ``min(floor, supply[d])``, and the rest of the budget is split in
    proportion to ``want[d] - floor[d]``. When the floors alone exceed the budget, the budget is
    split in proportion to the floors. Splits use largest remainders with ties going to the
    domain that sorts first, so the quotas sum to ``budget`` and none exceeds its want.
    """
    total = sum(sizes.values())
    if total == 0 or budget <= 0:
        return dict.fromkeys(sizes, 0)
    want = {
        domain: min(supply[domain], max(floor, math.floor(budget * size / total + 0.5)))
        for domain, size in sizes.items()
    }
    if sum(want.values()) <= budget:
        return want

    floors = {domain: min(floor, supply[domain]) for domain in sizes}
    if sum(floors.values()) >= budget:
        return _apportion(budget, floors)
    extra = _apportion(budget - sum(floors.values()), {d: want[d] - floors[d] for d in sizes})
    return {domain: floors[domain] + extra[domain] for domain in sizes}


def _apportion(total: int, weights: dict[str, int]) -> dict[str, int]:
    """Split ``total`` in proportion to ``weights`` by largest remainder (``total <= sum``)."""
    weight_sum = sum(weights.values())
    if weight_sum == 0:
        return dict.fromkeys(weights, 0)
    names = sorted(weights)
    exact = {name: total * weights[name] / weight_sum for name in names}
    shares = {name: int(exact[name]) for name in names}
    by_remainder = sorted(
        names, key=lambda name: (-(exact[name] - shares[name]), names.index(name))
    )
    for name in by_remainder[: total - sum(shares.values())]:
        shares[name] += 1
    return shares


def farthest_point_sample(
    embeddings: Tensor,
    pool: Sequence[int],
    count: int,
    *,
    selected: Sequence[int] = (),
    groups: Sequence[int] | None = None,
    group_counts: Counter[int] | None = None,
    cap: int | None = None,
) -> list[int]:
    """Pick up to ``count`` indices of ``pool`` by farthest-point sampling (cosine distance).

    Each pick maximises the distance to the nearest index already picked or in ``selected``.
    With nothing selected yet, the first pick is the pool member closest to the pool's mean.
    With ``groups``, ``group_counts`` and ``cap``, a member whose group already has ``cap``
    picks is skipped; ``group_counts`` is updated in place. Ties go to the earlier pool member.

    Args:
        embeddings: L2-normalised rows for every candidate index.
        pool: Candidate indices to pick from.
        count: Picks wanted.
        selected: Indices already chosen elsewhere, which only set the initial distances.
    """
    pool = list(pool)
    if count <= 0 or not pool:
        return []
    points = embeddings[pool]
    if selected:
        score = (
            -(points @ embeddings[list(selected)].T).max(dim=1).values
        )  # minus the nearest cosine
    else:
        score = points @ F.normalize(
            points.mean(dim=0), dim=0
        )  # the first pick is nearest the mean

    counts = group_counts if group_counts is not None else Counter()
    picked_mask = torch.zeros(len(pool), dtype=torch.bool)
    picked: list[int] = []
    while len(picked) < count:
        eligible = ~picked_mask
        if groups is not None and cap is not None:
            eligible &= torch.tensor([counts[groups[i]] < cap for i in pool], dtype=torch.bool)
        if not bool(eligible.any()):
            break
        position = int(score.masked_fill(~eligible, float("-inf")).argmax())
        picked_mask[position] = True
        picked.append(pool[position])
        if groups is not None:
            counts[groups[pool[position]]] += 1
        # Score = minus the cosine to the nearest pick, so argmax is the farthest point.
        negated = -(points @ points[position])
        score = negated if len(picked) == 1 and not selected else torch.minimum(score, negated)
    return picked


BUILTIN_POLICIES: dict[str, ReplayPolicyInfo] = {
    "random": ReplayPolicyInfo(
        name="random",
        policy_class=RandomReplayPolicy,
        description="Uniform sample of each experience; replay weight 1.0 by default.",
    ),
    "domain_coreset": ReplayPolicyInfo(
        name="domain_coreset",
        policy_class=DomainCoresetPolicy,
        description="CARvE coreset: domain quotas with a floor, per-model cap, farthest-point "
        "sampling; replay weight 5.0 by default.",
    ),
}


def resolve_policy(name: str, options: Any, plugin_manager: Any = None) -> ReplayPolicy:
    """Build the policy called ``name`` from the plugin manager's table, or the built-in one.

    Raises:
        cmrkit.pm.UnknownNameError: No loaded plugin declares ``name``; the message lists the
            available policies.
    """
    if plugin_manager is not None:
        info = plugin_manager.replay_policy(name)
    elif name in BUILTIN_POLICIES:
        info = BUILTIN_POLICIES[name]
    else:
        from cmrkit.pm import UnknownNameError

        raise UnknownNameError(
            f"unknown replay policy {name!r} in plugins.replay.policy; available: "
            f"{', '.join(sorted(BUILTIN_POLICIES))}"
        )
    policy = info.policy_class(options)
    if not isinstance(policy, ReplayPolicy):
        raise TypeError(
            f"replay policy {name!r} ({info.policy_class.__name__}) is not a ReplayPolicy subclass"
        )
    return policy


# -- fixed embedding space ---------------------------------------------------------------------


class FixedEmbedder:
    """L2-normalised embeddings from a frozen encoder, cached by prompt text.

    Args:
        encoder: The encoder; it is put in eval mode and its gradients are switched off.
        batch_size: Prompts per forward pass.
        device: Device the encoder runs on; embeddings are returned on the CPU.
    """

    def __init__(
        self, encoder: QueryEncoder, *, batch_size: int = 64, device: str | torch.device = "cpu"
    ) -> None:
        self.encoder = encoder.to(device).eval()
        self.encoder.requires_grad_(False)
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.cache: dict[str, Tensor] = {}

    @classmethod
    def frozen_copy(cls, encoder: QueryEncoder, **kwargs: Any) -> FixedEmbedder:
        """Embed with a deep copy of ``encoder`` as it is now, unaffected by later training."""
        return cls(copy.deepcopy(encoder), **kwargs)

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> Tensor:
        missing = list(dict.fromkeys(prompt for prompt in prompts if prompt not in self.cache))
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            batch = self.encoder.tokenize(chunk).to(self.device)
            vectors = F.normalize(self.encoder(batch).float(), dim=-1).cpu()
            self.cache.update(zip(chunk, vectors, strict=True))
        if not prompts:
            return torch.zeros(0, self.encoder.hidden_size)
        return torch.stack([self.cache[prompt] for prompt in prompts])


# -- buffer and training data ------------------------------------------------------------------


@dataclass
class BufferEntry:
    """One replayed prompt with its label and where it came from."""

    prompt: str
    label: int
    model_id: str
    domain: str
    family: str
    experience: int


class ReplayBuffer:
    """The replayed prompts, in the order they were added, saved as JSON."""

    def __init__(self, entries: Iterable[BufferEntry] = ()) -> None:
        self.entries = list(entries)

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, entries: Iterable[BufferEntry]) -> None:
        """Append entries."""
        self.entries.extend(entries)

    def to_json(self, **meta: Any) -> dict[str, Any]:
        """Return a JSON-ready document with ``meta`` fields and the entries."""
        return {
            "format_version": BUFFER_FORMAT_VERSION,
            **meta,
            "entries": [vars(entry) for entry in self.entries],
        }

    def save(self, path: Path, **meta: Any) -> None:
        """Write the buffer to ``path`` as JSON."""
        Path(path).write_text(json.dumps(self.to_json(**meta), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path, registry: Any = None) -> ReplayBuffer:
        """Read a buffer written by :meth:`save`; a folder means ``<folder>/replay_buffer.json``.

        With ``registry``, labels are looked up again from the stored model ids, so a buffer
        stays valid for a registry that numbers models differently.

        Raises:
            FileNotFoundError: The file does not exist.
            ValueError: The file is not a replay buffer or has a newer format.
        """
        path = Path(path)
        if path.is_dir():
            path = path / BUFFER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"replay buffer not found: {path}")
        document = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(document, dict) or "entries" not in document:
            raise ValueError(f"invalid replay buffer {path}: no 'entries' list")
        if int(document.get("format_version", 0)) > BUFFER_FORMAT_VERSION:
            raise ValueError(
                f"replay buffer {path} has format {document['format_version']}, newer than "
                "this cmrkit reads. Upgrade cmrkit."
            )
        entries = [BufferEntry(**entry) for entry in document["entries"]]
        if registry is not None:
            for entry in entries:
                entry.label = registry.label(entry.model_id)
        return cls(entries)


class WeightedSamples(Dataset[tuple[Any, int, float, int]]):
    """The current experience's samples (weight 1.0) followed by replayed ones (``weight``).

    Every item is ``(prompt, label, weight, task_label)``, the four-element sample that
    :class:`cmrkit.encoder.TextCollator` reads.
    """

    def __init__(self, current: Any, replayed: Sequence[BufferEntry], weight: float) -> None:
        self.current = current
        self.replayed = list(replayed)
        self.weight = float(weight)

    def __len__(self) -> int:
        return len(self.current) + len(self.replayed)

    def __getitem__(self, index: int) -> tuple[Any, int, float, int]:
        if index < len(self.current):
            sample = self.current[index]
            weight = float(sample[2]) if len(sample) > 3 else 1.0
            return sample[0], int(sample[1]), weight, int(sample[-1])
        entry = self.replayed[index - len(self.current)]
        return entry.prompt, entry.label, self.weight, 0


def with_replay(
    current: Any, replayed: Sequence[BufferEntry], weight: float
) -> ClassificationDataset:
    """Wrap the current training dataset and the replayed entries into one Avalanche dataset."""
    samples = WeightedSamples(current, replayed, weight)
    labels = [int(label) for label in current.targets] + [entry.label for entry in replayed]
    return ClassificationDataset(
        [samples],
        data_attributes=[
            DataAttribute(labels, "targets"),
            DataAttribute([0] * len(labels), "targets_task_labels"),
        ],
    )


def replay_budget(size: int, ratio: float) -> int:
    """Return the buffer share of an experience: ``ratio * size``, rounded half up."""
    return int(math.floor(ratio * size + 0.5))


# -- the Avalanche plugin ----------------------------------------------------------------------


class RoutingReplayPlugin(SupervisedPlugin):
    """Avalanche plugin that keeps a replay buffer and mixes it into later experiences.

    Args:
        config: A :class:`ReplayConfig` or a config node with its fields; ``None`` uses defaults.
        policy: A ready policy; default builds ``config.policy`` with :func:`resolve_policy`.
        registry: The model registry, for the domain, family and model id of each label;
            default the strategy's ``registry`` attribute. Without one, every prompt is in
            domain "unknown".
        plugin_manager: Plugin manager whose replay-policy table resolves ``config.policy``.
        seed: Seed of the policy's random choices when ``config.seed`` is null.
    """

    def __init__(
        self,
        config: Any = None,
        *,
        policy: ReplayPolicy | None = None,
        registry: Any = None,
        plugin_manager: Any = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.config = config if config is not None else ReplayConfig()
        self.policy_name = str(self.config.policy) if policy is None else type(policy).__name__
        self.policy = (
            policy
            if policy is not None
            else resolve_policy(self.policy_name, self.config, plugin_manager)
        )
        self.ratio = float(self.config.ratio)
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"invalid plugins.replay.ratio {self.ratio}: it must be in [0, 1]")
        weight = self.config.weight
        self.weight = float(self.policy.default_weight if weight is None else weight)
        if self.weight < 0:
            raise ValueError(f"invalid plugins.replay.weight {self.weight}: it must be 0 or more")
        self.registry = registry
        self.rng = random.Random(seed if self.config.seed is None else int(self.config.seed))
        self.buffer = ReplayBuffer()
        self.embedder: FixedEmbedder | None = None
        if self.config.restore_from:
            self.load_buffer(str(self.config.restore_from))

    # Avalanche callbacks

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        if self.embedder is None and self.policy.uses_embeddings:
            self.embedder = self._make_embedder(strategy)

    def after_train_dataset_adaptation(self, strategy: Any, **kwargs: Any) -> None:
        if not self.buffer.entries:
            return
        current = strategy.adapted_dataset
        strategy.adapted_dataset = with_replay(current, self.buffer.entries, self.weight)
        logger.info(
            "experience %d trains on %d new and %d replayed prompts (replay weight %g)",
            _experience_index(strategy) + 1,
            len(current),
            len(self.buffer),
            self.weight,
        )

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        candidates = self.candidates(strategy)
        budget = replay_budget(len(candidates), self.ratio)
        picked = self.policy.select(candidates, budget, self.rng)
        if len(set(picked)) != len(picked) or len(picked) > budget:
            raise ValueError(
                f"replay policy {self.policy_name!r} returned {len(picked)} indices "
                f"({len(set(picked))} distinct) for a budget of {budget}"
            )
        registry = self._registry(strategy)
        entries = []
        for i in picked:
            label = candidates.labels[i]
            entries.append(
                BufferEntry(
                    prompt=candidates.prompts[i],
                    label=label,
                    model_id=registry.model_id(label) if registry is not None else str(label),
                    domain=candidates.domains[i],
                    family=candidates.families[i],
                    experience=candidates.experience,
                )
            )
        self.buffer.add(entries)
        logger.info(
            "replay buffer: added %d of %d prompts of experience %d (policy %s); "
            "it now contains %d prompts",
            len(picked),
            len(candidates),
            candidates.experience + 1,
            self.policy_name,
            len(self.buffer),
        )

    # Candidates and embeddings

    def candidates(self, strategy: Any) -> ReplayCandidates:
        """Collect the finished experience's training samples with their domains and families."""
        dataset = strategy.experience.dataset
        samples = [dataset[i] for i in range(len(dataset))]
        prompts = [sample[0] for sample in samples]
        if any(not isinstance(prompt, str) for prompt in prompts):
            raise TypeError(
                "the replay plugin needs text prompts; build the benchmark with inputs='text'"
            )
        labels = [int(sample[1]) for sample in samples]

        registry = self._registry(strategy)
        if registry is not None:
            cards = [registry.card(label) for label in labels]
            domains, families = [card.domain for card in cards], [card.family for card in cards]
        else:
            domains, families = ["unknown"] * len(labels), [str(label) for label in labels]
        return ReplayCandidates(
            prompts=prompts,
            labels=labels,
            domains=domains,
            families=families,
            experience=_experience_index(strategy),
            embed=self._embed(strategy),
        )

    def _embed(self, strategy: Any) -> Callable[[list[str]], Tensor]:
        def embed(prompts: list[str]) -> Tensor:
            if self.embedder is None:
                self.embedder = self._make_embedder(strategy)
            return self.embedder(prompts)

        return embed

    def _make_embedder(self, strategy: Any) -> FixedEmbedder:
        batch_size = int(self.config.embedding_batch_size)
        device = getattr(strategy, "device", "cpu")
        name = self.config.embedding_encoder
        if name:
            return FixedEmbedder(QueryEncoder(str(name)), batch_size=batch_size, device=device)
        # NOTE: a copy taken after training started (a plugin added mid-stream) embeds with
        # partly trained weights, so its space differs from a run that had replay throughout.
        logger.info(
            "replay: freezing a copy of the router's encoder as the coreset embedding space"
        )
        return FixedEmbedder.frozen_copy(
            strategy.model.encoder, batch_size=batch_size, device=device
        )

    def _registry(self, strategy: Any) -> Any:
        return self.registry if self.registry is not None else getattr(strategy, "registry", None)

    # Checkpointing

    def save_buffer(self, path: Path) -> None:
        """Write the buffer to ``path`` (a checkpoint extra writer)."""
        self.buffer.save(path, policy=self.policy_name, ratio=self.ratio, weight=self.weight)

    def load_buffer(self, path: str | Path) -> None:
        """Replace the buffer with one saved by :meth:`save_buffer`, from a file or a folder."""
        self.buffer = ReplayBuffer.load(path, self.registry)
        logger.info("replay buffer restored from %s: %d prompts", path, len(self.buffer))


def _experience_index(strategy: Any) -> int:
    return int(getattr(strategy.experience, "current_experience", 0))


def _option(options: Any, key: str, default: Any) -> Any:
    value = options.get(key, default) if hasattr(options, "get") else getattr(options, key, default)
    return default if value is None else value


def build_replay(options: Any, context: RunContext) -> list[SupervisedPlugin]:
    """Build the ``replay`` plugin and register its buffer as a checkpoint extra."""
    plugin = RoutingReplayPlugin(
        options,
        registry=context.registry,
        plugin_manager=context.plugin_manager,
        seed=int(context.config.run.seed),
    )
    context.state.setdefault("checkpoint_extras", {})[BUFFER_FILE] = plugin.save_buffer
    return [plugin]


@hookimpl
def cmrkit_training_plugins() -> list[TrainingPluginInfo]:
    """Declare the ``replay`` training plugin."""
    return [
        TrainingPluginInfo(
            name="replay",
            factory=build_replay,
            description="Replay buffer of earlier prompts, weighted in the loss; policy chosen "
            "with plugins.replay.policy.",
            config_class=ReplayConfig,
        )
    ]


@hookimpl
def cmrkit_replay_policies() -> list[ReplayPolicyInfo]:
    """Declare the ``random`` and ``domain_coreset`` replay policies."""
    return list(BUILTIN_POLICIES.values())
