"""Model registry: stable labels, model cards, family and domain ids, persistence, listeners."""

from __future__ import annotations

import json

import pytest
import torch
from data_fixtures import card_row, write_jsonl

from cmrkit.data.records import DataFormatError
from cmrkit.data.registry import ModelRegistry, UnknownModelError, read_model_cards

STREAM = [
    # (experience, model id, family, domain)
    (0, "org/a", "fam-a", "Translation"),
    (0, "org/b", "fam-b", "Detection"),
    (0, "org/a", "fam-a", "Translation"),
    (0, "org/c", "fam-a", "Translation"),
    (1, "org/d", "fam-d", "Speech"),
    (1, "org/b", "fam-b2", "Segmentation"),
    (2, "org/e", "fam-e", "Detection"),
    (3, "org/a", "fam-a", "Translation"),
    (3, "org/f", "fam-f", "Text-to-Image"),
]


def add_stream(registry, rows):
    return [
        registry.add(model, family=family, domain=domain, experience=experience)
        for experience, model, family, domain in rows
    ]


@pytest.fixture()
def registry():
    registry = ModelRegistry()
    add_stream(registry, STREAM)
    return registry


def test_labels_follow_first_appearance():
    labels = add_stream(ModelRegistry(), STREAM)
    assert labels == [0, 1, 0, 2, 3, 1, 4, 0, 5]


def test_labels_stable_across_experiences():
    registry = ModelRegistry()
    add_stream(registry, [row for row in STREAM if row[0] == 0])
    first = {model: registry.label(model) for model in ("org/a", "org/b", "org/c")}

    add_stream(registry, [row for row in STREAM if row[0] > 0])

    assert {model: registry.label(model) for model in first} == first


def test_add_is_idempotent(registry):
    size = len(registry)
    label = registry.add("org/a", family="fam-a", domain="Translation", experience=0)
    assert label == 0
    assert len(registry) == size
    assert registry.card("org/a").experiences == [0, 3]


def test_add_records_extra_values(registry):
    card = registry.card("org/b")
    assert card.family == "fam-b"
    assert card.families == ["fam-b", "fam-b2"]
    assert card.domain == "Detection"
    assert card.domains == ["Detection", "Segmentation"]
    assert card.experiences == [0, 1]


def test_add_rejects_empty_id():
    with pytest.raises(ValueError, match="model id"):
        ModelRegistry().add("", family="f", domain="d", experience=0)


def test_lookups(registry):
    assert len(registry) == 6
    assert registry.model_id(3) == "org/d"
    assert registry.card(3) is registry.card("org/d")
    assert "org/f" in registry
    assert "org/zzz" not in registry
    assert 3 not in registry
    assert [card.model_id for card in registry] == ["org/a", "org/b", "org/c", "org/d", "org/e", "org/f"]


def test_unknown_id_raises(registry):
    with pytest.raises(UnknownModelError) as info:
        registry.label("org/missing")
    assert isinstance(info.value, KeyError)
    assert str(info.value) == "unknown model id 'org/missing': it is not in the model registry"


def test_unknown_id_error_names_location():
    error = UnknownModelError("org/x", relpath="data/x.json", line=7, field="model_name")
    assert str(error) == "data/x.json, line 7, field 'model_name': unknown model id 'org/x'"


def test_label_out_of_range_raises(registry):
    with pytest.raises(IndexError, match="invalid label 6"):
        registry.model_id(6)


def test_labels_in_experience(registry):
    assert registry.labels_in_experience(0) == [0, 1, 2]
    assert registry.labels_in_experience(1) == [1, 3]
    assert registry.labels_in_experience(3) == [0, 5]
    assert registry.labels_in_experience(9) == []


def test_family_and_domain_ids(registry):
    assert registry.family_ids().tolist() == [0, 1, 0, 2, 4, 5]
    assert registry.family_ids().dtype == torch.long
    assert registry.domain_ids().tolist() == [0, 1, 0, 2, 1, 4]
    assert registry.domain_ids().dtype == torch.long
    assert registry.family_index("fam-b2") == 3
    assert registry.family_index("nope") == -1
    assert registry.domain_index("Segmentation") == 3
    assert registry.domain_index("nope") == -1
    assert registry.domain_name(2) == "Speech"
    assert registry.family_name(5) == "fam-f"


def test_domains_sorted(registry):
    assert registry.domains == ["Detection", "Segmentation", "Speech", "Text-to-Image", "Translation"]


def test_set_card_first_wins(registry):
    registry.set_card("org/a", card_row("org/a", description="first"))
    registry.set_card("org/a", card_row("org/a", description="second"))

    assert registry.card("org/a").description == "first"
    assert registry.ignored_cards == 1


def test_set_card_normalises_fields(registry):
    registry.set_card("org/b", {"functionality": ["Translation", "Summarization"], "framework": None})
    card = registry.card("org/b")
    assert card.functionality == "Translation, Summarization"
    assert card.framework == ""
    assert card.description == ""


def test_set_card_unknown_id_raises(registry):
    with pytest.raises(UnknownModelError, match="org/missing"):
        registry.set_card("org/missing", card_row("org/missing"))


def test_card_text(registry):
    registry.set_card("org/a", card_row("org/a", functionality="", description="Translates."))
    assert registry.card("org/a").card_text() == "org/a\nTranslation\nTranslates."


def test_save_load_round_trip(registry, tmp_path):
    registry.set_card("org/a", card_row("org/a"))
    registry.set_card("org/a", card_row("org/a", description="ignored"))
    path = tmp_path / "nested" / "registry.json"

    registry.save(path)
    loaded = ModelRegistry.load(path)

    assert list(loaded) == list(registry)
    assert loaded.family_ids().tolist() == registry.family_ids().tolist()
    assert loaded.domain_ids().tolist() == registry.domain_ids().tolist()
    assert loaded.family_index("fam-b2") == registry.family_index("fam-b2")
    assert loaded.ignored_cards == registry.ignored_cards
    assert [p.name for p in path.parent.iterdir()] == ["registry.json"]


def test_loaded_registry_keeps_growing(registry, tmp_path):
    registry.set_card("org/a", card_row("org/a"))
    registry.save(tmp_path / "registry.json")
    loaded = ModelRegistry.load(tmp_path / "registry.json")

    loaded.set_card("org/a", card_row("org/a", description="later"))
    label = loaded.add("org/new", family="fam-a", domain="Speech", experience=4)

    assert label == 6
    assert loaded.card("org/a").description == "org/a translates text."
    assert loaded.family_ids().tolist()[-1] == 0


def test_load_rejects_other_json(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"models": []}), encoding="utf-8")
    with pytest.raises(ValueError, match="not a cmrkit model registry"):
        ModelRegistry.load(path)


def test_listener_receives_new_labels(registry):
    calls = []
    registry.add_listener(lambda reg, labels, experience: calls.append((reg, labels, experience)))

    registry.notify_added([6, 7], 4)

    assert calls == [(registry, [6, 7], 4)]


def test_removed_listener_not_called(registry):
    calls = []

    def listener(reg, labels, experience):
        calls.append(labels)

    registry.add_listener(listener)
    registry.remove_listener(listener)
    registry.notify_added([1], 0)

    assert calls == []


def test_read_model_cards_groups_variants(tmp_path):
    path = write_jsonl(
        tmp_path / "cards.json",
        [card_row("org/a"), card_row("org/b"), card_row("org/a", api_call="variant")],
    )

    cards = read_model_cards(path, relpath="cards.json")

    assert list(cards) == ["org/a", "org/b"]
    assert [card["api_call"] for card in cards["org/a"]] == ["pipeline(model='org/a')", "variant"]


def test_read_model_cards_requires_model_name(tmp_path):
    path = write_jsonl(tmp_path / "cards.json", [card_row("org/a"), {"domain": "x"}])
    with pytest.raises(DataFormatError, match=r"cards.json, line 2, field 'model_name'"):
        read_model_cards(path, relpath="cards.json")
