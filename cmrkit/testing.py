"""Test helpers for cmrkit and for plugin authors: a tiny encoder and a synthetic model hub.

Installed as a pytest plugin (entry point ``pytest11: cmrkit``), so these fixtures are available
in any test suite once cmrkit is installed:

- ``cmrkit_tiny_encoder``: path of a randomly initialised 1-layer BERT with a word-level
  vocabulary, usable anywhere an encoder name is (``encoder.name=<path>``).
- ``cmrkit_synthetic_data``: a folder laid out like the CMRBench release (four experiences,
  JSON Lines files, a model-card registry) with a small synthetic hub; pass it as ``data.dir``.
- ``cmrkit_config``: a factory of run configs wired to both, with one epoch and no progress bars.

Nothing here touches the network. Heavy imports happen inside the functions, so loading the
pytest plugin stays cheap.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cmrkit.data.records import EXPERIENCES

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
DOMAINS = (
    ("Natural Language Processing Translation", ["translate", "language", "spanish", "english"]),
    ("Computer Vision Object Detection", ["detect", "objects", "boxes", "image"]),
    ("Audio Automatic Speech Recognition", ["transcribe", "speech", "audio", "recording"]),
    ("Multimodal Text-to-Image", ["generate", "picture", "drawing", "prompt"]),
)
FILLER = ["please", "i", "need", "a", "model", "that", "can", "for", "my", "project", "the", "to"]


def synthetic_vocabulary(models_per_experience: int = 6) -> list[str]:
    """Every word the synthetic prompts and model cards use, plus BERT's special tokens."""
    words = {word for _, keywords in DOMAINS for word in keywords} | set(FILLER)
    words |= {f"m{e}x{i}" for e in range(len(EXPERIENCES)) for i in range(models_per_experience)}
    words |= {token.lower() for domain, _ in DOMAINS for token in domain.split()}
    return SPECIAL_TOKENS + sorted(words)


def make_tiny_encoder(directory: Path, *, hidden_size: int = 32, seed: int = 0,
                      models_per_experience: int = 6) -> Path:
    """Write a randomly initialised 1-layer BERT and its tokenizer to ``directory``.

    Returns the directory, which ``QueryEncoder(name=str(directory))`` loads like any local model.
    """
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab = synthetic_vocabulary(models_per_experience)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # transformers 5 takes the vocabulary as `vocab` (a mapping or a file path), not `vocab_file`.
    tokenizer = BertTokenizerFast(vocab={token: index for index, token in enumerate(vocab)}, do_lower_case=True)
    tokenizer.save_pretrained(directory)

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=hidden_size, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=2 * hidden_size, max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(directory)
    return directory


def _model_id(experience: int, index: int) -> str:
    return f"synthetic/m{experience}x{index}"


def write_synthetic_cmrbench(
    directory: Path,
    *,
    models_per_experience: int = 6,
    train_prompts_per_model: int = 4,
    test_prompts_per_model: int = 2,
    recurring_models: int = 1,
    seed: int = 0,
) -> Path:
    """Write a small CMRBench-shaped data folder and return it.

    Each experience brings ``models_per_experience`` new models spread over four domains, plus
    ``recurring_models`` models of the previous experience (as in CMRBench, where models recur).
    A prompt names its model's keyword and domain words, so a router can learn the task.
    E1 and E2 prompts carry the ``###Instruction: `` prefix like the real files.
    """
    rng = random.Random(seed)
    processed = directory / "data" / "processed"
    processed.mkdir(parents=True, exist_ok=True)
    (directory / "data" / "model_indices").mkdir(parents=True, exist_ok=True)

    cards: list[dict[str, Any]] = []
    for experience, name in enumerate(EXPERIENCES):
        models = [(experience, index) for index in range(models_per_experience)]
        if experience > 0:
            models += [(experience - 1, index) for index in range(recurring_models)]
        for split, count in (("val", train_prompts_per_model), ("eval", test_prompts_per_model)):
            rows = [
                _synthetic_row(experience, owner, index, rng)
                for owner, index in models
                for _ in range(count)
            ]
            rng.shuffle(rows)
            lines = "".join(json.dumps(row) + "\n" for row in rows)
            (processed / f"cleaned-{name}-{split}.json").write_text(lines, encoding="utf-8")
        cards += [_synthetic_card(experience, index) for index in range(models_per_experience)]

    registry = "".join(json.dumps(card) + "\n" for card in cards)
    (directory / "data" / "model_indices" / "e1_e2_e3_e4.json").write_text(registry, encoding="utf-8")
    return directory


def _domain(index: int) -> tuple[str, list[str]]:
    return DOMAINS[index % len(DOMAINS)]


def _synthetic_row(experience: int, owner: int, index: int, rng: random.Random) -> dict[str, Any]:
    domain, keywords = _domain(index)
    words = [f"m{owner}x{index}", *rng.sample(keywords, 2), *rng.sample(FILLER, 3)]
    rng.shuffle(words)
    prompt = " ".join(words)
    if experience < 2:
        prompt = "###Instruction: " + prompt
    return {
        "model_name": _model_id(owner, index),
        "model_family": f"family-{owner}-{index // 2}",
        "created_at": 0,
        "instruction": prompt,
        "domain": domain,
        "original_dataset": "synthetic",
        "model_source": "synthetic",
        "api_data": _synthetic_card(owner, index),
        "explanation": "",
    }


def _synthetic_card(experience: int, index: int) -> dict[str, Any]:
    domain, keywords = _domain(index)
    return {
        "domain": domain,
        "framework": "synthetic",
        "functionality": " ".join(keywords[:2]),
        "api_name": _model_id(experience, index),
        "api_call": "",
        "performance": {},
        "description": f"m{experience}x{index} can {' '.join(keywords)}",
        "model_name": _model_id(experience, index),
    }


def tiny_run_config(encoder: Path, data_dir: Path, overrides: list[str] | None = None,
                    **build_kwargs: Any) -> Any:
    """A run config for quick tests: the tiny encoder, the synthetic data, one epoch, no bars."""
    from cmrkit.config import build_config

    base = [
        f"encoder.name={json.dumps(str(encoder))}",
        f"data.dir={json.dumps(str(data_dir))}",
        "encoder.max_length=32",
        "router.dim=16",
        "train.epochs=1",
        "train.batch_size=8",
        "train.lr_encoder=1e-3",
        "train.lr_router=1e-2",
        "run.progress=false",
    ]
    return build_config(overrides=[*base, *(overrides or [])], **build_kwargs)


@pytest.fixture(scope="session")
def cmrkit_tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a tiny random BERT encoder that matches the synthetic vocabulary."""
    return make_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder"))


@pytest.fixture(scope="session")
def cmrkit_synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a synthetic CMRBench-shaped data folder."""
    return write_synthetic_cmrbench(tmp_path_factory.mktemp("synthetic-cmrbench"))


@pytest.fixture()
def cmrkit_config(cmrkit_tiny_encoder: Path, cmrkit_synthetic_data: Path) -> Callable[..., Any]:
    """Factory: ``cmrkit_config(["run.strategy=naive", ...])`` returns a quick run config."""

    def make(overrides: list[str] | None = None, **build_kwargs: Any) -> Any:
        return tiny_run_config(cmrkit_tiny_encoder, cmrkit_synthetic_data, overrides, **build_kwargs)

    return make
