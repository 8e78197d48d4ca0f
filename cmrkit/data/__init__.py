"""CMRBench data layer: records, the model registry, file sources and the Avalanche benchmark.

Typical use::

    from cmrkit.data import cmrbench

    scenario = cmrbench()  # CMRBench-lite; files from CMRKIT_DATA_DIR or the download cache
    for experience in scenario.train_stream:
        ...
"""

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

__all__ = [
    "EXPERIENCES",
    "INSTRUCTION_PREFIX",
    "REGISTRY_RELPATH",
    "SHA256",
    "UPSTREAM_BASE_URL",
    "UPSTREAM_COMMIT",
    "CMRBenchScenario",
    "ChecksumError",
    "DataFormatError",
    "DataNotFoundError",
    "DataSource",
    "ModelCard",
    "ModelRegistry",
    "PromptDataset",
    "RoutingRecord",
    "UnknownModelError",
    "cmrbench",
    "embed_texts",
    "make_classification_dataset",
    "read_records",
    "resolve_encoder_path",
    "split_relpath",
]
