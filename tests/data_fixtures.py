"""Shared helpers for the data-layer tests: the mirror path, JSON Lines writers, a tiny encoder."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

MIRROR = Path(
    os.environ.get("CMRKIT_TEST_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "cmrbench"
)
"""Local mirror of the CMRBench release files: $CMRKIT_TEST_DATA_DIR, else beside the repository."""

requires_mirror = pytest.mark.skipif(
    not (MIRROR / "data" / "processed").is_dir(),
    reason=f"CMRBench mirror not found at {MIRROR}",
)

TINY_VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "a", "an", "the", "i", "my", "to", "of", "in", "for", "and", "is", "this", "that", "with",
    "need", "want", "model", "text", "image", "images", "audio", "video", "translate", "detect",
    "objects", "speech", "generate", "classify", "summarize", "question", "answer", "spanish",
    "english", "photo", "picture", "sound", "please", "can", "you", "find", "help", "me",
    "##s", "##ed", "##ing", "##er", "##ly", "##e", "##a", "##o", "##i", ".", ",", "?", "!",
]  # fmt: skip
"""Word-piece vocabulary of the tiny test encoder. Unknown words map to [UNK]."""


def record_row(
    model: str = "org/model-a",
    instruction: str = "###Instruction: translate this text",
    *,
    family: str = "model-a",
    domain: str = "Natural Language Processing Translation",
    **extra: Any,
) -> dict[str, Any]:
    """Return one processed-file row with the fields the loader reads, plus ``extra``."""
    return {
        "model_name": model,
        "model_family": family,
        "instruction": instruction,
        "domain": domain,
        "created_at": 0,
        **extra,
    }


def card_row(model: str, **fields: Any) -> dict[str, Any]:
    """Return one registry-file row (an ``api_data``-like model card)."""
    return {
        "domain": "Natural Language Processing Translation",
        "framework": "Transformers",
        "functionality": "Translation",
        "api_call": f"pipeline(model='{model}')",
        "description": f"{model} translates text.",
        "model_name": model,
        **fields,
    }


def write_jsonl(path: Path, rows: Iterable[dict[str, Any] | str]) -> Path:
    """Write rows as JSON Lines. A ``str`` row is written verbatim, for malformed lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def make_tiny_encoder(directory: Path, *, hidden_size: int = 32, seed: int = 0) -> Path:
    """Save a randomly initialised 1-layer BERT and its word-piece tokenizer, and return the folder."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    # transformers 5 takes the vocabulary file as ``vocab`` and ignores ``vocab_file``.
    tokenizer = BertTokenizerFast(vocab=str(vocab_file))
    tokenizer.save_pretrained(directory)

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(TINY_VOCAB),
        hidden_size=hidden_size,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
    )
    BertModel(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a tiny random BERT encoder with hidden size 32."""
    return make_tiny_encoder(tmp_path_factory.mktemp("tiny-bert"))


def write_release(
    root: Path,
    splits: dict[str, dict[str, list[dict[str, Any] | str]]],
    cards: list[dict[str, Any]],
) -> Path:
    """Write a CMRBench-shaped folder: ``splits[experience][split]`` rows and a registry file.

    Experiences or splits left out of ``splits`` get empty files, so every lite file exists.
    """
    from cmrkit.data.records import EXPERIENCES
    from cmrkit.data.source import REGISTRY_RELPATH, split_relpath

    for name in EXPERIENCES:
        for split in ("val", "eval"):
            rows = splits.get(name, {}).get(split, [])
            write_jsonl(root / split_relpath(name, split), rows)
        if "train" in splits.get(name, {}):
            write_jsonl(root / split_relpath(name, "train"), splits[name]["train"])
    write_jsonl(root / REGISTRY_RELPATH, cards)
    return root


def small_release(root: Path) -> Path:
    """Write a release with four models over four experiences, one recurring and one unused.

    org/a (E1 and E3), org/b (E1), org/c (E2), org/d (E4). The registry file has two cards for
    org/a and a card for org/unused that no record names.
    """
    splits: dict[str, dict[str, list[dict[str, Any] | str]]] = {
        "apibench-hf": {
            "val": [
                record_row("org/a", "###Instruction: translate the text"),
                record_row("org/b", "###Instruction: detect objects", domain="CV Detection"),
                record_row("org/a", "###Instruction: translate to english"),
            ],
            "eval": [record_row("org/b", "###Instruction: find objects", domain="CV Detection")],
        },
        "mllm": {
            "val": [record_row("org/c", "###Instruction: transcribe audio", domain="Audio ASR")],
            "eval": [record_row("org/c", "###Instruction: speech to text", domain="Audio ASR")],
        },
        "hugging-bench-1": {
            "val": [record_row("org/a", "translate this text please")],
            "eval": [record_row("org/a", "can you translate this")],
        },
        "hugging-bench-2": {
            "val": [record_row("org/d", "generate a picture", domain="Multimodal Text-to-Image")],
            "eval": [record_row("org/d", "make an image", domain="Multimodal Text-to-Image")],
        },
    }
    cards = [
        card_row("org/a"),
        card_row("org/b", domain="CV Detection"),
        card_row("org/a", api_call="variant"),
        card_row("org/c", domain="Audio ASR"),
        card_row("org/unused"),
        card_row("org/d", domain="Multimodal Text-to-Image"),
    ]
    return write_release(root, splits, cards)
