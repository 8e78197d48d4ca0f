"""Test helpers for cmrkit and for plugin authors: a tiny encoder and a synthetic model hub.

Installed as a pytest plugin (entry point ``pytest11: cmrkit``), so these fixtures are available
in any test suite once cmrkit is installed:

- ``cmrkit_tiny_encoder``: path of a randomly initialised 1-layer BERT with a word-level
  vocabulary, usable anywhere an encoder name is (``encoder.name=<path>``).
- ``cmrkit_synthetic_data``: a folder laid out like the CMRBench release (four experiences,
  JSON Lines files, a model-card registry) with a small synthetic hub; pass it as ``data.dir``.
- ``cmrkit_config``: a factory of run configs wired to both, with one epoch and no progress bars.
- ``cmrkit_plugin_manager``: a fresh plugin manager with cmrkit's own plugins only. Plugins a test
  registers on it are unregistered at teardown, and during the test
  :func:`cmrkit.pm.load_plugin_manager` returns it, so ``cmrkit.cli.main([...])`` and
  :func:`cmrkit.runner.run_experiment` see them without an install.
- ``cmrkit_run``: a factory that trains a strategy with training plugins over the synthetic
  stream on the tiny encoder and returns the :class:`cmrkit.runner.RunResult`.

Helpers for plugin authors: :class:`ModelsAddedRecorder` (a plugin that records
``cmrkit_models_added`` calls), :func:`quick_run_config`, :func:`run_quick_experiment`,
:func:`make_run_context` (a run context for calling a factory without training) and
:func:`synthetic_replay_candidates` (input for a replay policy's ``select``).

Nothing here touches the network. Heavy imports happen inside the functions, so loading the
pytest plugin stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from cmrkit.data.records import EXPERIENCES
from cmrkit.hookspecs import hookimpl
from cmrkit.pm import CmrkitPluginManager, load_plugin_manager, use_plugin_manager

if TYPE_CHECKING:
    import torch
    from omegaconf import DictConfig

    from cmrkit.extensions import RunContext
    from cmrkit.plugins.replay import ReplayCandidates
    from cmrkit.runner import RunResult

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
DOMAINS = (
    ("Natural Language Processing Translation", ["translate", "language", "spanish", "english"]),
    ("Computer Vision Object Detection", ["detect", "objects", "boxes", "image"]),
    ("Audio Automatic Speech Recognition", ["transcribe", "speech", "audio", "recording"]),
    ("Multimodal Text-to-Image", ["generate", "picture", "drawing", "prompt"]),
)
FILLER = ["please", "i", "need", "a", "model", "that", "can", "for", "my", "project", "the", "to"]


def synthetic_vocabulary(models_per_experience: int = 6) -> list[str]:
    """Return every word the synthetic prompts and model cards use, plus BERT's special tokens."""
    words = {word for _, keywords in DOMAINS for word in keywords} | set(FILLER)
    words |= {f"m{e}x{i}" for e in range(len(EXPERIENCES)) for i in range(models_per_experience)}
    words |= {token.lower() for domain, _ in DOMAINS for token in domain.split()}
    return SPECIAL_TOKENS + sorted(words)


def make_tiny_encoder(
    directory: Path, *, hidden_size: int = 32, seed: int = 0, models_per_experience: int = 6
) -> Path:
    """Write a randomly initialised 1-layer BERT and its tokenizer to ``directory``.

    Returns the directory, which ``QueryEncoder(name=str(directory))`` loads like any local model.
    """
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab = synthetic_vocabulary(models_per_experience)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # transformers 5 takes the vocabulary as `vocab` (a mapping or a file path), not `vocab_file`.
    # Its BertTokenizer is the fast tokenizer: BertTokenizerFast is the same class in 5.25.
    word_ids = {token: index for index, token in enumerate(vocab)}
    tokenizer = BertTokenizer(vocab=word_ids, do_lower_case=True)
    tokenizer.save_pretrained(directory)

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=64,
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
                _synthetic_row(experience, owner, index, rng) for owner, index in models for _ in range(count)
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


def tiny_run_config(
    encoder: Path, data_dir: Path, overrides: list[str] | None = None, **build_kwargs: Any
) -> Any:
    """Build a run config for quick tests: the tiny encoder, the synthetic data, one epoch, no bars."""
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


# -- plugin authors ------------------------------------------------------------------------------


class ModelsAddedRecorder:
    """Plugin object that records every ``cmrkit_models_added`` call as ``(labels, experience)``.

    Register it to check that a strategy announces the models it adds, or to compare with what a
    listener under test did.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[list[int], int]] = []

    @hookimpl
    def cmrkit_models_added(self, registry: Any, labels: list[int], experience: int) -> None:
        """Record the call."""
        self.calls.append((list(labels), experience))


def quick_run_config(
    encoder: Path,
    data_dir: Path,
    *,
    manager: CmrkitPluginManager | None = None,
    strategy: str = "naive",
    plugins: Sequence[str] = (),
    overrides: Sequence[str] = (),
) -> DictConfig:
    """Build a :func:`tiny_run_config` for ``strategy`` and ``plugins`` with their option defaults.

    The option dataclasses of every strategy and training plugin that ``manager`` provides are merged
    in (as ``cmrkit run`` does), so ``overrides`` may set ``strategies.<name>.*`` and
    ``plugins.<name>.*`` keys and typos in them are rejected.
    """
    manager = manager if manager is not None else load_plugin_manager()
    selected = [f"run.strategy={strategy}", f"run.plugins=[{','.join(plugins)}]"]
    return tiny_run_config(
        encoder,
        data_dir,
        [*selected, *overrides],
        strategy_classes={name: info.config_class for name, info in manager.strategies().items()},
        plugin_classes={name: info.config_class for name, info in manager.training_plugins().items()},
    )


def run_quick_experiment(
    encoder: Path,
    data_dir: Path,
    *,
    strategy: str = "naive",
    plugins: Sequence[str] = (),
    overrides: Sequence[str] = (),
    manager: CmrkitPluginManager | None = None,
    output_dir: Path | None = None,
) -> RunResult:
    """Train ``strategy`` with ``plugins`` over the synthetic stream and return the result.

    With the defaults of :func:`tiny_run_config` (one epoch, a 1-layer encoder) a run over the
    default synthetic data takes a few seconds on a CPU.
    """
    from cmrkit.runner import run_experiment

    manager = manager if manager is not None else load_plugin_manager()
    config = quick_run_config(
        encoder, data_dir, manager=manager, strategy=strategy, plugins=plugins, overrides=overrides
    )
    return run_experiment(config, manager=manager, output_dir=output_dir)


def make_run_context(config: DictConfig, manager: CmrkitPluginManager | None = None) -> RunContext:
    """Load the benchmark of ``config.data`` and return the run context a factory receives.

    Use it to call a training plugin's or strategy's factory directly, without training.
    """
    import torch

    from cmrkit.extensions import RunContext
    from cmrkit.runner import load_benchmark, seed_everything

    seed_everything(int(config.run.seed))
    benchmark = load_benchmark(config)
    return RunContext(
        config=config,
        benchmark=benchmark,
        registry=benchmark.registry,
        device=torch.device(str(config.run.device)),
        plugin_manager=manager if manager is not None else load_plugin_manager(),
    )


def synthetic_replay_candidates(
    experience: int = 0, *, models: int = 6, prompts_per_model: int = 4, dim: int = 64, seed: int = 0
) -> ReplayCandidates:
    """Candidates shaped like one finished synthetic experience, for testing a replay policy.

    Prompts come from the same generator as :func:`write_synthetic_cmrbench`; label ``i`` is the
    experience's ``i``-th model. ``embed`` is a hashed bag of words (:func:`hashed_embeddings`),
    so no encoder is loaded.
    """
    from cmrkit.plugins.replay import ReplayCandidates

    rng = random.Random(seed)
    rows = [
        (index, _synthetic_row(experience, experience, index, rng))
        for index in range(models)
        for _ in range(prompts_per_model)
    ]
    return ReplayCandidates(
        prompts=[row["instruction"] for _, row in rows],
        labels=[index for index, _ in rows],
        domains=[row["domain"] for _, row in rows],
        families=[row["model_family"] for _, row in rows],
        experience=experience,
        embed=lambda prompts: hashed_embeddings(prompts, dim),
    )


def hashed_embeddings(prompts: Sequence[str], dim: int = 64) -> torch.Tensor:
    """L2-normalised hashed bag-of-words rows ``[len(prompts), dim]``: a stand-in encoder."""
    import torch

    rows = torch.zeros(len(prompts), dim)
    for row, prompt in enumerate(prompts):
        for word in prompt.lower().split():
            bucket = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "little")
            rows[row, bucket % dim] += 1.0
    return torch.nn.functional.normalize(rows, dim=1)


@pytest.fixture()
def cmrkit_plugin_manager() -> Iterator[CmrkitPluginManager]:
    """Provide a plugin manager with cmrkit's own plugins, used by the CLI and runner during the test.

    Register the plugin under test with ``cmrkit_plugin_manager.register_plugin(plugin)``, and it
    is unregistered at teardown. Installed third-party plugins are not loaded; call
    ``cmrkit_plugin_manager.load_entry_points(autoload=True)`` to test through an entry point.
    """
    manager = load_plugin_manager(autoload=False)
    own = set(manager.records)
    with use_plugin_manager(manager):
        yield manager
    for name in [name for name in manager.records if name not in own]:
        manager.unregister_plugin(name)


@pytest.fixture()
def cmrkit_run(
    cmrkit_tiny_encoder: Path, cmrkit_synthetic_data: Path, cmrkit_plugin_manager: CmrkitPluginManager
) -> Callable[..., RunResult]:
    """Factory: ``cmrkit_run("naive", ["replay"], ["plugins.replay.ratio=0.5"])`` returns a RunResult.

    Runs with the ``cmrkit_plugin_manager`` of the test, so plugins registered there take part.
    """

    def run(
        strategy: str = "naive",
        plugins: Sequence[str] = (),
        overrides: Sequence[str] = (),
        output_dir: Path | None = None,
    ) -> RunResult:
        return run_quick_experiment(
            cmrkit_tiny_encoder,
            cmrkit_synthetic_data,
            strategy=strategy,
            plugins=plugins,
            overrides=overrides,
            manager=cmrkit_plugin_manager,
            output_dir=output_dir,
        )

    return run
