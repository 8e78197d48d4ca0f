"""CMRBench data layer: records, the model registry, file sources and the Avalanche benchmark.

Typical use::

    from cmrkit.data import cmrbench

    scenario = cmrbench()  # CMRBench-lite, read from CMRKIT_DATA_DIR or the download cache
    for experience in scenario.train_stream:
        ...

The names below load their submodule on first access, so ``import cmrkit.data.records`` does
not import Avalanche, torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cmrkit.data.benchmark import (
        CMRBenchScenario,
        PromptDataset,
        cmrbench,
        make_classification_dataset,
    )
    from cmrkit.data.embeddings import embed_texts, resolve_encoder_path
    from cmrkit.data.records import (
        EXPERIENCES,
        INSTRUCTION_PREFIX,
        DataFormatError,
        RoutingRecord,
        read_records,
    )
    from cmrkit.data.registry import ModelCard, ModelRegistry, UnknownModelError
    from cmrkit.data.source import (
        REGISTRY_RELPATH,
        SHA256,
        UPSTREAM_BASE_URL,
        UPSTREAM_COMMIT,
        ChecksumError,
        DataNotFoundError,
        DataSource,
        split_relpath,
    )

_SUBMODULE_OF = {
    "CMRBenchScenario": "benchmark",
    "PromptDataset": "benchmark",
    "cmrbench": "benchmark",
    "make_classification_dataset": "benchmark",
    "embed_texts": "embeddings",
    "resolve_encoder_path": "embeddings",
    "EXPERIENCES": "records",
    "INSTRUCTION_PREFIX": "records",
    "DataFormatError": "records",
    "RoutingRecord": "records",
    "read_records": "records",
    "ModelCard": "registry",
    "ModelRegistry": "registry",
    "UnknownModelError": "registry",
    "REGISTRY_RELPATH": "source",
    "SHA256": "source",
    "UPSTREAM_BASE_URL": "source",
    "UPSTREAM_COMMIT": "source",
    "ChecksumError": "source",
    "DataNotFoundError": "source",
    "DataSource": "source",
    "split_relpath": "source",
}

__all__ = [
    "CMRBenchScenario",
    "ChecksumError",
    "DataFormatError",
    "DataNotFoundError",
    "DataSource",
    "EXPERIENCES",
    "INSTRUCTION_PREFIX",
    "ModelCard",
    "ModelRegistry",
    "PromptDataset",
    "REGISTRY_RELPATH",
    "RoutingRecord",
    "SHA256",
    "UPSTREAM_BASE_URL",
    "UPSTREAM_COMMIT",
    "UnknownModelError",
    "cmrbench",
    "embed_texts",
    "make_classification_dataset",
    "read_records",
    "resolve_encoder_path",
    "split_relpath",
]


def __getattr__(name: str) -> Any:
    submodule = _SUBMODULE_OF.get(name)
    if submodule is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{submodule}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SUBMODULE_OF))
