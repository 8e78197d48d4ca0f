"""Router checkpoints: a folder with safetensors weights, the registry, and the config as YAML.

Layout (no pickled objects anywhere)::

    router.safetensors   encoder, projection and head weights (LoRA adapters merged in)
    router.json          architecture, the labels the router trained on, cmrkit version
    registry.json        the model registry (label -> model id, family, domain, card)
    config.yaml          the resolved run configuration
    tokenizer/           the encoder's tokenizer files
    encoder_config/      the encoder's transformers config
    <extra files>        written by plugins, e.g. replay_buffer.json

The folder is written to a temporary sibling and renamed into place, so an interrupted save
never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from cmrkit import __version__
from cmrkit.data.registry import ModelRegistry
from cmrkit.encoder import QueryEncoder
from cmrkit.router import Router

logger = logging.getLogger("cmrkit.checkpoint")

FORMAT_VERSION = 1
ExtraWriter = Callable[[Path], None]


class CheckpointError(ValueError):
    """A checkpoint folder that is missing files or does not match this cmrkit version."""


def save_checkpoint(
    directory: Path,
    router: Router,
    registry: ModelRegistry,
    config: DictConfig,
    *,
    extras: dict[str, ExtraWriter] | None = None,
    complete: bool = True,
) -> Path:
    """Write a checkpoint folder and return its path.

    Args:
        directory: Target folder; replaced if it exists.
        router: The trained router.
        registry: The registry whose labels index the head's rows.
        config: The resolved run configuration.
        extras: ``{file name: writer(path)}`` for plugin state such as the replay buffer.
        complete: ``False`` marks a checkpoint saved after an interruption.
    """
    directory = Path(directory)
    staging = directory.with_name(directory.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)

    save_file(_flat_state(router), str(staging / "router.safetensors"))
    router.encoder.save_pretrained_parts(staging)
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": "router",
        "cmrkit_version": __version__,
        "complete": complete,
        "encoder": {
            "name": router.encoder.name,
            "max_length": router.encoder.max_length,
            "pooling": router.encoder.pooling,
        },
        "dim": router.dim,
        "tau": router.head.tau,
        "num_rows": router.head.num_rows,
        "seen_labels": router.head.seen_labels(),
    }
    (staging / "router.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    registry.save(staging / "registry.json")
    (staging / "config.yaml").write_text(OmegaConf.to_yaml(config, resolve=True), encoding="utf-8")
    for name, writer in (extras or {}).items():
        writer(staging / name)
    for path in staging.rglob("*"):
        # Temporary-file writers create files readable by the owner only; a checkpoint is shared.
        path.chmod(0o755 if path.is_dir() else 0o644)

    if directory.exists():
        shutil.rmtree(directory)
    staging.rename(directory)
    logger.info("checkpoint written to %s (%d models routable)", directory, len(meta["seen_labels"]))
    return directory


def _flat_state(router: Router) -> dict[str, torch.Tensor]:
    backbone: Any = router.encoder.backbone
    if hasattr(backbone, "merge_and_unload"):  # peft model: save plain weights with adapters merged
        backbone = copy.deepcopy(backbone).merge_and_unload()
    state = {f"encoder.backbone.{key}": value for key, value in backbone.state_dict().items()}
    for key, value in router.state_dict().items():
        if not key.startswith("encoder."):
            state[key] = value
    # safetensors rejects tensors that share storage, so every tensor gets its own copy.
    return {key: value.detach().cpu().contiguous().clone() for key, value in state.items()}


def load_checkpoint(directory: str | Path) -> tuple[Router, ModelRegistry, DictConfig]:
    """Load a checkpoint folder written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: When the folder or one of its files is missing, or its format is newer.
    """
    directory = Path(directory)
    meta_path = directory / "router.json"
    if not meta_path.is_file():
        raise CheckpointError(
            f"not a cmrkit checkpoint: {meta_path} is missing; pass the checkpoint folder that "
            "`cmrkit run` wrote (its output folder's checkpoint/ subfolder)"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        message = f"checkpoint file {meta_path} is damaged ({error}); rerun `cmrkit run`"
        raise CheckpointError(message) from error
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {directory} has format {meta['format_version']}, newer than this cmrkit "
            f"({__version__}) reads; upgrade cmrkit"
        )
    if meta.get("kind", "router") != "router":
        # NOTE: bm25 checkpoints store the registry and BM25 settings, but no loader rebuilds them yet.
        raise CheckpointError(
            f"checkpoint {directory} contains a {meta['kind']!r} index, which `cmrkit route` cannot "
            "load; route with the checkpoint of a trained strategy or of the dense strategy"
        )
    for name in ("router.safetensors", "registry.json", "config.yaml"):
        if not (directory / name).is_file():
            raise CheckpointError(f"checkpoint {directory} is incomplete: {name} is missing")

    encoder_meta = meta["encoder"]
    encoder = QueryEncoder.from_saved_parts(
        directory,
        name=encoder_meta["name"],
        max_length=int(encoder_meta["max_length"]),
        pooling=encoder_meta["pooling"],
    )
    router = Router(encoder, dim=int(meta["dim"]), tau=float(meta["tau"]))
    router.head.add_labels(list(range(int(meta["num_rows"]))))
    router.head.seen.zero_()
    weights_path = directory / "router.safetensors"
    try:
        state = load_file(str(weights_path))
    except Exception as error:  # safetensors raises its own SafetensorError type for bad files
        message = f"checkpoint file {weights_path} is damaged ({error}); rerun `cmrkit run`"
        raise CheckpointError(message) from error
    router.load_state_dict(state, strict=True)
    router.eval()

    registry = ModelRegistry.load(directory / "registry.json")
    config = OmegaConf.load(directory / "config.yaml")
    assert isinstance(config, DictConfig)
    if not meta.get("complete", True):
        logger.warning("checkpoint %s was saved after an interrupted run", directory)
    return router, registry, config


def read_extra(directory: str | Path, name: str) -> Any:
    """Read a JSON extra file from a checkpoint, or ``None`` if absent."""
    path = Path(directory) / name
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
