import json
import math

import pytest
import torch
import torch.nn.functional as F

from cmrkit.checkpoint import CheckpointError, load_checkpoint
from cmrkit.cli import main
from cmrkit.config import ConfigError
from cmrkit.pm import load_plugin_manager
from cmrkit.route import route_prompts
from cmrkit.runner import load_benchmark, run_experiment
from cmrkit.strategies.retrieval import (
    BM25Router,
    CandidateSet,
    PromptBatch,
    PromptCollator,
    build_dense_router,
)

SUMMARY_KEYS = ("m_acc", "f_acc", "d_acc", "d_acc_top3", "d_forgetting", "train_seconds",
                "train_sample_passes")


@pytest.fixture(scope="module")
def manager():
    return load_plugin_manager()


def make_config(cmrkit_config, manager, overrides):
    return cmrkit_config(
        overrides,
        strategy_classes={name: info.config_class for name, info in manager.strategies().items()},
        plugin_classes={name: info.config_class for name, info in manager.training_plugins().items()},
    )


def tiny_overrides(encoder, data):
    return [
        f"encoder.name={json.dumps(str(encoder))}", f"data.dir={json.dumps(str(data))}",
        "encoder.max_length=32", "router.dim=16", "train.epochs=1", "train.batch_size=8",
    ]


CARDS = [
    "openai/whisper-small\nAudio Automatic Speech Recognition\ntranscribe speech\n"
    "turns a speech recording into text",
    "google/vit-base\nComputer Vision Image Classification\nclassify images\nlabels the content of a photo",
    "t5-small\nNatural Language Processing Translation\ntranslate text\ntranslates english into french",
]


# -- bm25 -------------------------------------------------------------------------------------


def test_bm25_ranks_matching_card_first():
    model = BM25Router(CARDS)
    model.head.add_labels([0, 1, 2])
    scores = model(["please transcribe this speech recording"])
    assert scores.shape == (1, 3)
    assert int(scores.argmax(dim=1)) == 0


def test_bm25_masks_non_candidates():
    model = BM25Router(CARDS)
    model.head.add_labels([0, 2])
    scores = model(["classify my images"])
    assert math.isinf(float(scores[0, 1]))
    assert torch.isfinite(scores[0, [0, 2]]).all()


def test_bm25_query_without_known_words():
    model = BM25Router(CARDS)
    model.head.add_labels([0, 1, 2])
    scores = model(["zzz qqq"])
    assert torch.equal(scores, torch.zeros(1, 3))


def test_bm25_index_follows_candidates():
    model = BM25Router(CARDS)
    model.head.add_labels([1])
    model(["translate text"])
    model.head.add_labels([2])
    scores = model(["translate text"])
    assert int(scores.argmax(dim=1)) == 2


def test_bm25_rejects_bad_stopwords():
    with pytest.raises(ValueError, match="stopwords"):
        BM25Router(CARDS, stopwords="klingon")


def test_candidate_set_grows_and_reports_new():
    candidates = CandidateSet()
    assert candidates.add_labels([0, 3]) == [0, 3]
    assert candidates.add_labels([3, 4]) == [4]
    assert candidates.num_rows == 5
    assert candidates.seen_labels() == [0, 3, 4]


def test_prompt_collator_keeps_text():
    batch = PromptCollator()([["hello there", 3, 0], ["general kenobi", 1, 0]])
    assert isinstance(batch[0], PromptBatch)
    assert list(batch[0]) == ["hello there", "general kenobi"]
    assert batch[0].to("cpu") is batch[0]
    assert batch[1].tolist() == [3, 1]
    assert batch[2].tolist() == [1.0, 1.0]


def test_bm25_stream_smoke(cmrkit_config, manager):
    result = run_experiment(make_config(cmrkit_config, manager, ["run.strategy=bm25"]), manager=manager)
    table = result.matrix.as_table("m_acc", 4)
    for i in range(4):
        for j in range(4):
            assert math.isnan(table[i][j]) == (j > i), (i, j)
    for key in SUMMARY_KEYS:
        assert key in result.summary
        assert math.isfinite(result.summary[key]), key
    assert result.summary["train_sample_passes"] == 0
    assert result.summary["m_acc"] > 50  # synthetic prompts name their model, so BM25 finds it


def test_bm25_rejects_training_plugins(cmrkit_config, manager):
    config = make_config(cmrkit_config, manager, ["run.strategy=bm25", "run.plugins=[ewc]"])
    with pytest.raises(ConfigError, match="does not train"):
        run_experiment(config, manager=manager)


def test_bm25_cli_writes_metrics_and_checkpoint(cmrkit_tiny_encoder, cmrkit_synthetic_data, tmp_path):
    output = tmp_path / "bm25"
    code = main([
        "run", "--strategy", "bm25", "--output", str(output), "--no-progress",
        *tiny_overrides(cmrkit_tiny_encoder, cmrkit_synthetic_data),
    ])
    assert code == 0
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["strategy"] == "bm25"
    assert len(metrics["accuracy_matrix"]["d_acc"]) == 4
    meta = json.loads((output / "checkpoint" / "router.json").read_text())
    assert meta["kind"] == "bm25"
    assert len(meta["seen_labels"]) > 0
    with pytest.raises(CheckpointError, match="bm25"):
        load_checkpoint(output / "checkpoint")


# -- dense ------------------------------------------------------------------------------------


def test_dense_scores_are_cosines(cmrkit_config, manager):
    config = make_config(cmrkit_config, manager, ["run.strategy=dense"])
    registry = load_benchmark(config).registry
    router = build_dense_router(config, registry)
    router.head.add_labels([0, 1, 2])
    router.eval()

    prompt = "detect objects boxes image"
    with torch.no_grad():
        logits = router(router.encoder.tokenize([prompt]))[0, :3]
        query = router.encoder(router.encoder.tokenize([prompt]))
        card_texts = [registry.card(label).card_text() for label in range(3)]
        cards = router.encoder(router.encoder.tokenize(card_texts))
    expected = F.cosine_similarity(query, cards, dim=-1)
    assert torch.allclose(logits, expected, atol=1e-5)


def test_dense_stream_smoke(cmrkit_config, manager):
    result = run_experiment(make_config(cmrkit_config, manager, ["run.strategy=dense"]), manager=manager)
    table = result.matrix.as_table("d_acc", 4)
    assert all(not math.isnan(table[3][j]) for j in range(4))
    assert math.isnan(table[0][1])
    for key in SUMMARY_KEYS:
        assert math.isfinite(result.summary[key]), key
    assert result.summary["train_sample_passes"] == 0


def test_dense_checkpoint_routes(cmrkit_tiny_encoder, cmrkit_synthetic_data, tmp_path):
    output = tmp_path / "dense"
    code = main([
        "run", "--strategy", "dense", "--output", str(output), "--no-progress",
        *tiny_overrides(cmrkit_tiny_encoder, cmrkit_synthetic_data),
    ])
    assert code == 0
    router, registry, _ = load_checkpoint(output / "checkpoint")
    answers = route_prompts(router, registry, ["transcribe speech audio"], top_k=3)
    scores = [model["score"] for model in answers[0]["models"]]
    assert len(scores) == 3
    assert all(-1.0 - 1e-5 <= score <= 1.0 + 1e-5 for score in scores)
