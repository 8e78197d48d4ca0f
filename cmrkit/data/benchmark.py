"""CMRBench as an Avalanche class-incremental benchmark whose classes are model ids.

``cmrbench()`` reads the four experiences (E1 apibench-hf, E2 mllm, E3 hugging-bench-1,
E4 hugging-bench-2) from a ``DataSource``, builds the ``ModelRegistry`` that assigns labels, and
returns a ``CMRBenchScenario`` with a train and a test stream. Each sample reads
``[x, label, task_label]`` with task label 0, where ``x`` is the prompt string or its frozen
encoder embedding.

Variants: "lite" trains on the upstream ``val`` split, and "full" trains on the upstream ``train``
split followed by ``val``. Both test on the ``eval`` split.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.scenarios.generic_scenario import CLScenario, CLStream
from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
from avalanche.benchmarks.utils.classification_dataset import ClassificationDataset
from avalanche.benchmarks.utils.data_attribute import DataAttribute
from torch.utils.data import Dataset

from cmrkit.data.embeddings import embed_texts
from cmrkit.data.records import EXPERIENCES, RoutingRecord, read_records
from cmrkit.data.registry import ModelRegistry, UnknownModelError, read_model_cards
from cmrkit.data.source import REGISTRY_RELPATH, DataNotFoundError, DataSource, split_relpath

logger = logging.getLogger("cmrkit.data")

VARIANTS: tuple[str, ...] = ("lite", "full")
INPUTS: tuple[str, ...] = ("text", "embeddings")
TRAIN_FILE_SPLITS: dict[str, tuple[str, ...]] = {"lite": ("val",), "full": ("train", "val")}
"""Upstream split files that make up the train stream of each variant, in reading order."""
TEST_FILE_SPLIT = "eval"

SampleInputs = Sequence[Any] | torch.Tensor
"""Inputs of one experience: prompt strings, or a tensor with one embedding row per sample."""

StreamRecords = dict[str, list[list[RoutingRecord]]]
"""Records by stream name ("train", "test"), then by experience."""


class PromptDataset(Dataset[tuple[Any, int]]):
    """Plain PyTorch dataset of ``(x, label)`` pairs.

    Args:
        xs: One input per sample: prompt strings, or a float tensor with one row per sample.
        labels: Registry label per sample.
    """

    def __init__(self, xs: SampleInputs, labels: Sequence[int]) -> None:
        if len(xs) != len(labels):
            raise ValueError(f"got {len(xs)} inputs but {len(labels)} labels")
        self.xs = xs
        self.labels = [int(label) for label in labels]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.xs[index], self.labels[index]


def make_classification_dataset(xs: SampleInputs, labels: Sequence[int]) -> ClassificationDataset:
    """Wrap inputs and labels into an Avalanche dataset with ``targets`` and task label 0."""
    dataset = PromptDataset(xs, labels)
    return ClassificationDataset(
        [dataset],
        data_attributes=[
            DataAttribute(dataset.labels, "targets"),
            DataAttribute([0] * len(dataset), "targets_task_labels", use_in_getitem=True),
        ],
    )


class CMRBenchScenario(CLScenario):
    """Avalanche scenario of CMRBench with its model registry and source records.

    Experiences of both streams carry ``classes_in_this_experience``, ``previous_classes`` and
    ``classes_seen_so_far`` (sets of registry labels) from Avalanche's ``with_classes_timeline``.
    """

    train_stream: CLStream
    test_stream: CLStream

    def __init__(
        self,
        streams: Iterable[CLStream],
        *,
        registry: ModelRegistry,
        variant: str,
        inputs: str,
        records: StreamRecords,
        new_labels: list[list[int]],
    ) -> None:
        super().__init__(list(streams))
        self.registry = registry
        """Label space: every model id of the stream, labelled by first appearance."""
        self.variant = variant
        self.inputs = inputs
        """``"text"`` (samples hold prompt strings) or ``"embeddings"`` (float32 tensors)."""
        self.records = records
        """Source records per stream and experience, aligned with the samples."""
        self.new_labels = new_labels
        """Labels that each experience added to the registry, for replaying ``notify_added``."""
        self.experience_names: list[str] = list(EXPERIENCES)

    @property
    def n_classes(self) -> int:
        """Number of registry labels (all experiences together)."""
        return len(self.registry)


def cmrbench(
    data_dir: str | Path | None = None,
    *,
    variant: str = "lite",
    inputs: str = "text",
    source: DataSource | None = None,
    encoder: str | None = None,
    embedding_cache_dir: str | Path | None = None,
    max_models_per_experience: int | None = None,
    max_prompts_per_model: int | None = None,
    seed: int = 0,
) -> CMRBenchScenario:
    """Build the CMRBench scenario.

    Args:
        data_dir: Local copy of the release (see ``DataSource``). Mutually exclusive with ``source``.
        variant: ``"lite"`` (train on ``val``) or ``"full"`` (train on ``train`` then ``val``;
            the upstream ``train`` files are not in every local copy).
        inputs: ``"text"`` for prompt strings or ``"embeddings"`` for frozen-encoder vectors.
        source: Ready-made data source, e.g. one with a custom cache or base URL.
        encoder: Encoder for ``inputs="embeddings"``, as ``embeddings.resolve_encoder_path`` takes it.
            Ignored for text inputs.
        embedding_cache_dir: Cache folder for embeddings, as in ``embed_texts``.
        max_models_per_experience: Keep, per experience, only the first N distinct models of its
            train split (in file order) and their records in both streams.
        max_prompts_per_model: Keep at most this many train prompts per model and experience,
            sampled with ``seed`` and kept in file order. Test prompts are not capped.
        seed: Seed of the prompt sampling for ``max_prompts_per_model``.

    Raises:
        ValueError: An option has an invalid value.
        DataNotFoundError: A release file is missing (see ``DataSource.path``).
        DataFormatError: A data file line is malformed.
        UnknownModelError: A record names a model id that the registry file lacks.
    """
    _check_options(variant, inputs, max_models_per_experience, max_prompts_per_model)
    if source is not None and data_dir is not None:
        raise ValueError("pass either data_dir or source, not both")
    if source is None:
        source = DataSource(data_dir)
    if inputs == "text" and encoder is not None:
        logger.debug("encoder %r is ignored because inputs='text'", encoder)

    records = read_stream_records(source, variant)
    records = slice_records(
        records,
        max_models_per_experience=max_models_per_experience,
        max_prompts_per_model=max_prompts_per_model,
        seed=seed,
    )
    registry, new_labels = build_registry(records, source)

    xs = _stream_inputs(records, inputs, encoder, embedding_cache_dir)
    datasets = {
        stream: [
            make_classification_dataset(stream_xs, [registry.label(r.model_id) for r in exp_records])
            for stream_xs, exp_records in zip(xs[stream], records[stream], strict=True)
        ]
        for stream in ("train", "test")
    }
    timeline = with_classes_timeline(benchmark_from_datasets(train=datasets["train"], test=datasets["test"]))
    logger.info(
        "CMRBench-%s: %d train and %d test prompts over %d experiences, %d models",
        variant,
        sum(len(r) for r in records["train"]),
        sum(len(r) for r in records["test"]),
        len(EXPERIENCES),
        len(registry),
    )
    return CMRBenchScenario(
        timeline.streams.values(),
        registry=registry,
        variant=variant,
        inputs=inputs,
        records=records,
        new_labels=new_labels,
    )


def _check_options(variant: str, inputs: str, max_models: int | None, max_prompts: int | None) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"invalid variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    if inputs not in INPUTS:
        raise ValueError(f"invalid inputs {inputs!r}: expected one of {', '.join(INPUTS)}")
    for name, value in (
        ("max_models_per_experience", max_models),
        ("max_prompts_per_model", max_prompts),
    ):
        if value is not None and value < 1:
            raise ValueError(f"invalid {name} {value}: expected None or 1 or more")


def read_stream_records(source: DataSource, variant: str) -> StreamRecords:
    """Read the train and test records of every experience for a variant.

    Raises:
        DataNotFoundError: A file is missing. For the upstream ``train`` files of the full
            variant, the message explains that only the full variant needs them.
    """
    records: StreamRecords = {"train": [], "test": []}
    for experience, name in enumerate(EXPERIENCES):
        train: list[RoutingRecord] = []
        for file_split in TRAIN_FILE_SPLITS[variant]:
            relpath = split_relpath(name, file_split)
            path = _train_file_path(source, relpath, variant, file_split)
            train += read_records(path, relpath=relpath, experience=experience, split="train")

        relpath = split_relpath(name, TEST_FILE_SPLIT)
        test = read_records(source.path(relpath), relpath=relpath, experience=experience, split="test")
        records["train"].append(train)
        records["test"].append(test)
    return records


def _train_file_path(source: DataSource, relpath: str, variant: str, file_split: str) -> Path:
    try:
        return source.path(relpath)
    except DataNotFoundError as exc:
        if file_split != "train":
            raise
        raise DataNotFoundError(
            f"variant {variant!r} needs the upstream training splits "
            f"(data/processed/cleaned-<experience>-train.json), which {source} does not provide; "
            f"use variant='lite', a local copy of the full upstream release, or no data dir so "
            f"the files are downloaded. Details: {exc}"
        ) from exc


def slice_records(
    records: StreamRecords,
    *,
    max_models_per_experience: int | None,
    max_prompts_per_model: int | None,
    seed: int,
) -> StreamRecords:
    """Keep the first models of each experience and cap train prompts per model.

    See ``cmrbench`` for the rules. Every experience gets an INFO log line with what was kept.
    """
    rng = random.Random(seed)
    sliced: StreamRecords = {"train": [], "test": []}
    for experience, (train, test) in enumerate(zip(records["train"], records["test"], strict=True)):
        kept_train, kept_test = train, test
        if max_models_per_experience is not None:
            train_models = list(dict.fromkeys(r.model_id for r in train))
            kept_models = set(train_models[:max_models_per_experience])
            kept_train = [r for r in train if r.model_id in kept_models]
            kept_test = [r for r in test if r.model_id in kept_models]
        if max_prompts_per_model is not None:
            kept_train = _cap_prompts_per_model(kept_train, max_prompts_per_model, rng)

        label = f"E{experience + 1} {EXPERIENCES[experience]}"
        models = len({r.model_id for r in chain(kept_train, kept_test)})
        if max_models_per_experience is None and max_prompts_per_model is None:
            logger.info(
                "%s: %d train prompts, %d test prompts, %d models",
                label,
                len(train),
                len(test),
                models,
            )
        else:
            logger.info(
                "%s: kept %d of %d train prompts and %d of %d test prompts, %d models "
                "(max_models_per_experience=%s, max_prompts_per_model=%s)",
                label,
                len(kept_train),
                len(train),
                len(kept_test),
                len(test),
                models,
                max_models_per_experience,
                max_prompts_per_model,
            )
        sliced["train"].append(kept_train)
        sliced["test"].append(kept_test)
    return sliced


def _cap_prompts_per_model(records: list[RoutingRecord], cap: int, rng: random.Random) -> list[RoutingRecord]:
    positions: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        positions.setdefault(record.model_id, []).append(index)

    keep: set[int] = set()
    for indices in positions.values():
        keep.update(indices if len(indices) <= cap else rng.sample(indices, cap))
    return [record for index, record in enumerate(records) if index in keep]


def build_registry(records: StreamRecords, source: DataSource) -> tuple[ModelRegistry, list[list[int]]]:
    """Label every model id by first appearance and attach its model card.

    Experiences are visited in order, and within one, train records come before test records.
    After each experience the new models get their first card from ``REGISTRY_RELPATH``.
    Listeners are not called here: a routing strategy calls ``notify_added`` when its router
    gains the rows of an experience's new models.

    Returns:
        The registry and, per experience, the labels it added.

    Raises:
        UnknownModelError: A record's ``model_name`` is not in the registry file.
    """
    cards = read_model_cards(source.path(REGISTRY_RELPATH), relpath=REGISTRY_RELPATH)
    registry = ModelRegistry()
    new_labels: list[list[int]] = []

    for experience, (train, test) in enumerate(zip(records["train"], records["test"], strict=True)):
        added: list[int] = []
        for record in chain(train, test):
            if record.model_id not in cards:
                raise UnknownModelError(
                    record.model_id,
                    relpath=record.source,
                    line=record.line,
                    field="model_name",
                    known_from=f"the registry file {REGISTRY_RELPATH}",
                )
            size_before = len(registry)
            label = registry.add(
                record.model_id, family=record.family, domain=record.domain, experience=experience
            )
            if label == size_before:
                added.append(label)

        for label in added:
            model_id = registry.model_id(label)
            for card in cards[model_id]:
                registry.set_card(model_id, card)
        new_labels.append(added)

    _log_registry_summary(registry, cards)
    return registry, new_labels


def _log_registry_summary(registry: ModelRegistry, cards: dict[str, list[dict[str, Any]]]) -> None:
    multi_card_ids = sum(1 for card in registry if len(cards[card.model_id]) > 1)
    unused = sum(1 for model_id in cards if model_id not in registry)
    logger.info(
        "registry: %d models; %d of them have more than one card in %s (kept the first, "
        "ignored %d later variants); %d model ids of that file appear in no record and get "
        "no label",
        len(registry),
        multi_card_ids,
        REGISTRY_RELPATH,
        registry.ignored_cards,
        unused,
    )


def _stream_inputs(
    records: StreamRecords,
    inputs: str,
    encoder: str | None,
    embedding_cache_dir: str | Path | None,
) -> dict[str, list[SampleInputs]]:
    """Return the sample inputs per stream and experience: prompts, or their embeddings.

    All prompts go through one ``embed_texts`` call, so the encoder loads once and the whole
    scenario shares one cache file.
    """
    prompts = {stream: [[r.prompt for r in exp] for exp in records[stream]] for stream in ("train", "test")}
    if inputs == "text":
        return {stream: list(per_exp) for stream, per_exp in prompts.items()}

    flat = [prompt for stream in ("train", "test") for exp in prompts[stream] for prompt in exp]
    embeddings = embed_texts(flat, encoder, cache_dir=embedding_cache_dir)
    result: dict[str, list[SampleInputs]] = {"train": [], "test": []}
    offset = 0
    for stream in ("train", "test"):
        for exp in prompts[stream]:
            result[stream].append(embeddings[offset : offset + len(exp)].clone())
            offset += len(exp)
    return result
