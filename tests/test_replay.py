"""Tests of the replay plugin: policies, coreset rules, weighted training data, buffer file."""

from __future__ import annotations

import json
import random
from dataclasses import fields
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from cmrkit.config import TrainSettings
from cmrkit.data.benchmark import cmrbench, make_classification_dataset
from cmrkit.encoder import QueryEncoder, TextCollator
from cmrkit.extensions import ReplayPolicyInfo, RunContext
from cmrkit.hookspecs import hookimpl
from cmrkit.plugins.replay import (
    BUFFER_FILE,
    BufferEntry,
    DomainCoresetPolicy,
    FixedEmbedder,
    RandomReplayPolicy,
    ReplayBuffer,
    ReplayCandidates,
    ReplayConfig,
    ReplayPolicy,
    RoutingReplayPlugin,
    build_replay,
    domain_quotas,
    farthest_point_sample,
    replay_budget,
    resolve_policy,
    with_replay,
)
from cmrkit.pm import UnknownNameError, load_plugin_manager
from cmrkit.router import Router
from cmrkit.strategies.naive import Naive


def _candidates(
    domains: list[str], labels: list[int], vectors: torch.Tensor | None = None
) -> ReplayCandidates:
    prompts = [f"prompt {i}" for i in range(len(labels))]
    if vectors is None:
        vectors = F.normalize(
            torch.randn(len(labels), 8, generator=torch.Generator().manual_seed(0)), dim=-1
        )
    table = dict(zip(prompts, vectors, strict=True))
    return ReplayCandidates(
        prompts=prompts,
        labels=labels,
        domains=domains,
        families=[str(label) for label in labels],
        experience=0,
        embed=lambda batch: torch.stack([table[prompt] for prompt in batch]),
    )


def _coreset(floor: int = 5, cap: int = 3) -> DomainCoresetPolicy:
    return DomainCoresetPolicy(ReplayConfig(domain_floor=floor, per_model_cap=cap))


# -- random policy ----------------------------------------------------------------------------


def test_random_respects_budget():
    candidates = _candidates(["a"] * 20, list(range(20)))
    picked = RandomReplayPolicy(ReplayConfig()).select(candidates, 7, random.Random(0))
    assert len(picked) == 7
    assert len(set(picked)) == 7
    assert all(0 <= i < 20 for i in picked)


def test_random_budget_above_size():
    candidates = _candidates(["a"] * 4, list(range(4)))
    picked = RandomReplayPolicy(ReplayConfig()).select(candidates, 10, random.Random(0))
    assert sorted(picked) == [0, 1, 2, 3]


def test_budget_rounds_half_up():
    assert replay_budget(25, 0.1) == 3
    assert replay_budget(24, 0.1) == 2
    assert replay_budget(0, 0.1) == 0


# -- domain quotas ----------------------------------------------------------------------------


def test_quotas_proportional():
    quotas = domain_quotas({"a": 60, "b": 40}, {"a": 60, "b": 40}, budget=20, floor=0)
    assert quotas == {"a": 12, "b": 8}


def test_quotas_floor():
    quotas = domain_quotas({"a": 95, "b": 5}, {"a": 95, "b": 5}, budget=40, floor=5)
    assert quotas["b"] == 5
    assert sum(quotas.values()) == 40


def test_quotas_scaled_down_to_budget():
    # Wants: a 16, b 5 (floor), c 5 (floor) = 26 > 20: the floors stay and a gets the rest.
    quotas = domain_quotas(
        {"a": 80, "b": 10, "c": 10}, {"a": 80, "b": 10, "c": 10}, budget=20, floor=5
    )
    assert quotas == {"a": 10, "b": 5, "c": 5}


def test_quotas_floors_above_budget():
    # Floors 5 + 5 + 5 exceed the budget 10: it is split over the floors, the tie going to "a".
    quotas = domain_quotas(
        {"a": 80, "b": 10, "c": 10}, {"a": 80, "b": 10, "c": 10}, budget=10, floor=5
    )
    assert quotas == {"a": 4, "b": 3, "c": 3}


def test_quotas_tie_goes_to_first_domain():
    quotas = domain_quotas({"b": 10, "a": 10}, {"a": 10, "b": 10}, budget=3, floor=5)
    assert quotas == {"a": 2, "b": 1}


def test_quotas_limited_by_supply():
    quotas = domain_quotas({"a": 50, "b": 50}, {"a": 50, "b": 2}, budget=20, floor=5)
    assert quotas["b"] == 2
    assert quotas["a"] == 10


# -- domain coreset ---------------------------------------------------------------------------


def test_coreset_floor():
    domains = ["big"] * 40 + ["small"] * 6
    labels = list(range(40)) + [100 + i for i in range(6)]
    picked = _coreset(floor=5).select(_candidates(domains, labels), 10, random.Random(0))
    small = [i for i in picked if domains[i] == "small"]
    assert len(picked) == 10
    assert len(small) == 5


def test_coreset_quota_proportional():
    domains = ["a"] * 30 + ["b"] * 10
    picked = _coreset(floor=0).select(_candidates(domains, list(range(40))), 8, random.Random(0))
    assert sum(domains[i] == "a" for i in picked) == 6
    assert sum(domains[i] == "b" for i in picked) == 2


def test_coreset_per_model_cap():
    # Domain "a" has one model with 10 prompts and 10 models with 1 prompt each.
    domains = ["a"] * 20
    labels = [0] * 10 + list(range(1, 11))
    picked = _coreset(floor=0, cap=3).select(_candidates(domains, labels), 12, random.Random(0))
    assert len(picked) == 12
    assert sum(labels[i] == 0 for i in picked) == 3


def test_coreset_fills_budget_left_by_cap():
    # One model only: the cap leaves 7 of 10 slots, which the fill then uses.
    domains = ["a"] * 12
    labels = [0] * 12
    picked = _coreset(floor=0, cap=3).select(_candidates(domains, labels), 10, random.Random(0))
    assert len(picked) == 10
    assert len(set(picked)) == 10


def test_coreset_fill_prefers_models_under_cap():
    # Domain a: model 0 has 6 prompts; domain b: 4 models with 1 prompt. Quotas a 4, b 1 leave
    # 3 slots after the cap; the fill takes b's models before going over model 0's cap.
    domains = ["a"] * 6 + ["b"] * 4
    labels = [0] * 6 + [1, 2, 3, 4]
    picked = _coreset(floor=0, cap=3).select(_candidates(domains, labels), 7, random.Random(0))
    assert len(picked) == 7
    assert sum(labels[i] == 0 for i in picked) == 3
    assert sorted(labels[i] for i in picked if labels[i] != 0) == [1, 2, 3, 4]


def test_coreset_no_duplicates_and_budget():
    domains = [random.Random(i).choice("abcd") for i in range(60)]
    labels = [i // 3 for i in range(60)]
    picked = _coreset().select(_candidates(domains, labels), 13, random.Random(0))
    assert len(picked) == 13
    assert len(set(picked)) == 13


def test_coreset_ignores_rng():
    domains = ["a"] * 10 + ["b"] * 10
    candidates = _candidates(domains, list(range(20)))
    first = _coreset(floor=0).select(candidates, 6, random.Random(1))
    second = _coreset(floor=0).select(candidates, 6, random.Random(2))
    assert first == second


def test_farthest_point_spreads_picks():
    # Two tight clusters: picking 2 must take one from each.
    vectors = F.normalize(
        torch.tensor([[1.0, 0.0], [1.0, 0.05], [1.0, -0.05], [0.0, 1.0], [0.05, 1.0]]), dim=-1
    )
    picked = farthest_point_sample(vectors, range(5), 2)
    assert {0, 1, 2} & set(picked)
    assert {3, 4} & set(picked)


def test_farthest_point_starts_near_mean():
    vectors = F.normalize(torch.tensor([[1.0, 0.0], [0.7, 0.7], [0.0, 1.0]]), dim=-1)
    assert farthest_point_sample(vectors, range(3), 1) == [1]


# -- policy lookup ----------------------------------------------------------------------------


def test_default_weights():
    assert DomainCoresetPolicy.default_weight == 5.0
    assert RandomReplayPolicy.default_weight == 1.0
    assert RoutingReplayPlugin(ReplayConfig(policy="domain_coreset")).weight == 5.0
    assert RoutingReplayPlugin(ReplayConfig(policy="random")).weight == 1.0
    assert RoutingReplayPlugin(ReplayConfig(policy="random", weight=2.5)).weight == 2.5


def test_unknown_policy_lists_available():
    with pytest.raises(UnknownNameError, match="available: domain_coreset, random"):
        resolve_policy("nope", ReplayConfig())


class EveryOtherPolicy(ReplayPolicy):
    uses_embeddings = False

    def select(self, candidates, budget, rng):
        return list(range(0, len(candidates), 2))[:budget]


class EveryOtherPlugin:
    @hookimpl
    def cmrkit_replay_policies(self):
        return [
            ReplayPolicyInfo(name="every_other", policy_class=EveryOtherPolicy, description="test")
        ]


def test_third_party_policy_through_manager():
    manager = load_plugin_manager(autoload=False)
    manager.register_plugin(EveryOtherPlugin(), name="every-other")
    plugin = RoutingReplayPlugin(ReplayConfig(policy="every_other"), plugin_manager=manager)
    assert isinstance(plugin.policy, EveryOtherPolicy)
    assert "every_other" in manager.replay_policies()


def test_config_fields_have_help():
    for item in fields(ReplayConfig):
        assert item.metadata.get("help")


# -- training data ----------------------------------------------------------------------------


def _entry(prompt: str, label: int, experience: int = 0) -> BufferEntry:
    return BufferEntry(
        prompt=prompt,
        label=label,
        model_id=f"m{label}",
        domain="d",
        family="f",
        experience=experience,
    )


def test_with_replay_samples_and_weights():
    current = make_classification_dataset(["new a", "new b"], [5, 6])
    mixed = with_replay(current, [_entry("old", 1)], weight=5.0)
    assert len(mixed) == 3
    assert tuple(mixed[0]) == ("new a", 5, 1.0, 0)
    assert tuple(mixed[2]) == ("old", 1, 5.0, 0)
    assert list(mixed.targets) == [5, 6, 1]


def test_with_replay_collates_weights(cmrkit_tiny_encoder):
    current = make_classification_dataset(["detect objects", "translate"], [5, 6])
    mixed = with_replay(current, [_entry("transcribe speech", 1)], weight=5.0)
    batch = TextCollator(QueryEncoder(str(cmrkit_tiny_encoder)))([mixed[i] for i in range(3)])
    assert batch[1].tolist() == [5, 6, 1]
    assert batch[2].tolist() == [1.0, 1.0, 5.0]


def test_plugin_replaces_adapted_dataset():
    plugin = RoutingReplayPlugin(ReplayConfig(policy="random"))
    plugin.buffer.add([_entry("old", 1)])
    strategy = SimpleNamespace(
        adapted_dataset=make_classification_dataset(["new"], [4]),
        experience=SimpleNamespace(current_experience=1),
    )
    plugin.after_train_dataset_adaptation(strategy)
    assert len(strategy.adapted_dataset) == 2
    assert tuple(strategy.adapted_dataset[1]) == ("old", 1, 1.0, 0)


# -- fixed embedding space --------------------------------------------------------------------


def test_frozen_copy_ignores_training(cmrkit_tiny_encoder):
    encoder = QueryEncoder(str(cmrkit_tiny_encoder))
    embedder = FixedEmbedder.frozen_copy(encoder)
    before = embedder(["detect objects"]).clone()
    embedder.cache.clear()
    with torch.no_grad():
        for parameter in encoder.parameters():
            parameter.add_(1.0)
    after = embedder(["detect objects"])
    assert torch.allclose(before, after)
    assert torch.allclose(after.norm(dim=-1), torch.ones(1))


def test_embedder_caches(cmrkit_tiny_encoder):
    embedder = FixedEmbedder(QueryEncoder(str(cmrkit_tiny_encoder)))
    embedder(["detect objects", "translate"])
    assert set(embedder.cache) == {"detect objects", "translate"}


# -- the plugin over a stream, and the buffer file --------------------------------------------


def _train_two(encoder_path, data_dir, config: ReplayConfig):
    scenario = cmrbench(data_dir)
    plugin = RoutingReplayPlugin(config, registry=scenario.registry)
    strategy = Naive(
        model=Router(QueryEncoder(str(encoder_path), max_length=32), dim=16),
        train=TrainSettings(epochs=1, batch_size=8),
        plugins=[plugin],
        progress=False,
        registry=scenario.registry,
    )
    strategy.train(scenario.train_stream[0])
    strategy.train(scenario.train_stream[1])
    return scenario, plugin


def test_plugin_buffer_shares(cmrkit_tiny_encoder, cmrkit_synthetic_data):
    scenario, plugin = _train_two(
        cmrkit_tiny_encoder, cmrkit_synthetic_data, ReplayConfig(ratio=0.25)
    )
    sizes = [len(scenario.train_stream[i].dataset) for i in range(2)]
    per_experience = [
        sum(entry.experience == i for entry in plugin.buffer.entries) for i in range(2)
    ]
    assert per_experience == [replay_budget(size, 0.25) for size in sizes]
    for entry in plugin.buffer.entries:
        assert scenario.registry.card(entry.label).domain == entry.domain
        assert scenario.registry.model_id(entry.label) == entry.model_id


def test_buffer_round_trip(cmrkit_tiny_encoder, cmrkit_synthetic_data, tmp_path):
    scenario, plugin = _train_two(
        cmrkit_tiny_encoder, cmrkit_synthetic_data, ReplayConfig(ratio=0.25)
    )
    plugin.save_buffer(tmp_path / BUFFER_FILE)

    restored = RoutingReplayPlugin(
        ReplayConfig(restore_from=str(tmp_path)), registry=scenario.registry
    )
    assert [vars(e) for e in restored.buffer.entries] == [vars(e) for e in plugin.buffer.entries]
    document = json.loads((tmp_path / BUFFER_FILE).read_text(encoding="utf-8"))
    assert document["policy"] == "domain_coreset"
    assert document["weight"] == 5.0


def test_buffer_load_relabels_by_model_id(tmp_path):
    ReplayBuffer([_entry("old", 7)]).save(tmp_path / BUFFER_FILE)
    registry = SimpleNamespace(label=lambda model_id: {"m7": 2}[model_id])
    assert ReplayBuffer.load(tmp_path, registry).entries[0].label == 2


def test_buffer_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="replay buffer not found"):
        ReplayBuffer.load(tmp_path / "absent.json")


def test_factory_registers_checkpoint_extra(cmrkit_config, tmp_path):
    config = cmrkit_config(["run.plugins=[replay]"])
    scenario = cmrbench(config.data.dir)
    context = RunContext(
        config=config, benchmark=scenario, registry=scenario.registry, device=torch.device("cpu")
    )
    [plugin] = build_replay(ReplayConfig(), context)
    plugin.buffer.add([_entry("old", 1)])

    writer = context.state["checkpoint_extras"][BUFFER_FILE]
    writer(tmp_path / BUFFER_FILE)
    assert len(ReplayBuffer.load(tmp_path / BUFFER_FILE).entries) == 1
