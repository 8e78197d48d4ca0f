"""Tests of the carve strategy: candidate sets, hard-negative mining, the loss and full runs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin

from cmrkit.config import TrainSettings
from cmrkit.data.benchmark import cmrbench
from cmrkit.encoder import QueryEncoder
from cmrkit.plugins.anchor import AnchorPlugin
from cmrkit.plugins.replay import ReplayConfig, RoutingReplayPlugin
from cmrkit.pm import UnknownNameError, load_plugin_manager
from cmrkit.router import Router
from cmrkit.runner import run_experiment
from cmrkit.strategies.base import RoutingTemplate
from cmrkit.strategies.carve import Carve, CarveConfig
from cmrkit.strategies.losses import (
    CandidateCrossEntropyLoss,
    CandidateMix,
    DomainIndex,
    mine_hard_negatives,
    sample_candidates,
    weighted_cross_entropy,
)
from cmrkit.strategies.naive import Naive

# 12 labels over 3 domains: 0-5 domain 0, 6-9 domain 1, 10-11 domain 2.
DOMAINS = torch.tensor([0] * 6 + [1] * 4 + [2] * 2)


def _index(seen: list[int] | None = None) -> DomainIndex:
    return DomainIndex(seen if seen is not None else list(range(12)), DOMAINS)


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- candidate mix ----------------------------------------------------------------------------


def test_mix_full_size_counts():
    mix = CandidateMix()
    assert mix.counts_for(64) == (15, 38, 10)
    assert mix.fill == 0


def test_mix_shrinks_in_proportion():
    hard, semantic, far = CandidateMix().counts_for(22)
    assert hard + semantic + far == 21
    assert (hard, semantic, far) == (5, 13, 3)


def test_mix_single_candidate():
    assert CandidateMix().counts_for(1) == (0, 0, 0)


def test_mix_rejects_overfull():
    with pytest.raises(ValueError, match="exceed"):
        CandidateMix(size=8, hard=4, semantic=4, far=1)


# -- candidate sets ---------------------------------------------------------------------------


def test_candidates_positive_first():
    labels = torch.tensor([0, 5, 7, 11, 3])
    sets = sample_candidates(
        labels, _index(), CandidateMix(size=6, hard=0, semantic=2, far=2), generator=_generator()
    )
    assert torch.equal(sets[:, 0], labels)


def test_candidates_no_duplicates():
    labels = torch.arange(12)
    sets = sample_candidates(
        labels, _index(), CandidateMix(size=8, hard=0, semantic=3, far=2), generator=_generator()
    )
    for row in sets:
        assert len(set(row.tolist())) == row.numel()


def test_candidates_domain_mix():
    labels = torch.tensor([0, 1, 2, 6, 7])
    mix = CandidateMix(size=6, hard=0, semantic=3, far=2)
    sets = sample_candidates(labels, _index(), mix, generator=_generator())
    for row in sets:
        negatives = row[1:]
        same = int((DOMAINS[negatives] == DOMAINS[row[0]]).sum())
        assert same == 3
        assert negatives.numel() - same == 2


def test_candidates_short_domain_goes_to_fill():
    # Domain 2 has only labels 10 and 11, so label 10 gets one semantic negative and fill.
    mix = CandidateMix(size=6, hard=0, semantic=3, far=2)
    sets = sample_candidates(torch.tensor([10]), _index(), mix, generator=_generator())
    assert sets.shape == (1, 6)
    assert 11 in sets[0].tolist()


def test_candidates_shrink_to_seen():
    seen = [0, 1, 6, 10]
    sets = sample_candidates(
        torch.tensor([0, 6]), _index(seen), CandidateMix(), generator=_generator()
    )
    assert sets.shape == (2, 4)
    for row in sets:
        assert sorted(row.tolist()) == seen


def test_candidates_only_seen_labels():
    seen = [0, 2, 4, 6, 8, 10]
    sets = sample_candidates(
        torch.tensor([0, 6, 10]),
        _index(seen),
        CandidateMix(size=5, hard=0, semantic=2, far=2),
        generator=_generator(),
    )
    assert set(sets.flatten().tolist()) <= set(seen)


def test_candidates_reject_unseen_positive():
    with pytest.raises(ValueError, match="not seen"):
        sample_candidates(
            torch.tensor([3]), _index([0, 1, 2]), CandidateMix(size=2, hard=0, semantic=1, far=0)
        )


def test_candidates_hard_from_pool():
    pool = torch.full((12, 3), -1)
    pool[0] = torch.tensor([9, 11, 4])
    mix = CandidateMix(size=4, hard=3, semantic=0, far=0)
    sets = sample_candidates(
        torch.tensor([0]), _index(), mix, hard_pool=pool, generator=_generator()
    )
    assert sets[0, 0] == 0
    assert sorted(sets[0, 1:].tolist()) == [4, 9, 11]


def test_candidates_hard_skips_unseen_pool_entries():
    pool = torch.full((12, 2), -1)
    pool[0] = torch.tensor([9, 11])
    mix = CandidateMix(size=3, hard=2, semantic=0, far=0)
    sets = sample_candidates(
        torch.tensor([0]), _index([0, 1, 2, 9]), mix, hard_pool=pool, generator=_generator()
    )
    assert 9 in sets[0].tolist()
    assert 11 not in sets[0].tolist()


def test_candidates_reproducible_with_seed():
    mix = CandidateMix(size=6, hard=0, semantic=2, far=2)
    first = sample_candidates(torch.arange(12), _index(), mix, generator=_generator(3))
    second = sample_candidates(torch.arange(12), _index(), mix, generator=_generator(3))
    assert torch.equal(first, second)


# -- hard-negative mining ---------------------------------------------------------------------


def _hand_built_rows() -> torch.Tensor:
    # Row i points at angle 0.3 * i on a circle, so row scores fall off with label distance.
    angles = torch.arange(8, dtype=torch.float32) * 0.3
    return torch.stack([angles.cos(), angles.sin()], dim=1)


def test_mine_highest_scoring_wrong():
    rows = _hand_built_rows()
    seen = torch.ones(8, dtype=torch.bool)
    pool = mine_hard_negatives(rows[[3]], torch.tensor([3]), rows, seen, pool_size=4)
    assert pool[0, :2].tolist() in ([2, 4], [4, 2])
    assert sorted(pool[0, 2:].tolist()) == [1, 5]


def test_mine_order_by_score():
    rows = _hand_built_rows()
    query = F.normalize(torch.tensor([[1.0, 0.05]]), dim=-1)
    pool = mine_hard_negatives(
        query, torch.tensor([0]), rows, torch.ones(8, dtype=torch.bool), pool_size=3
    )
    assert pool[0].tolist() == [1, 2, 3]


def test_mine_skips_unseen():
    rows = _hand_built_rows()
    seen = torch.ones(8, dtype=torch.bool)
    seen[[2, 4]] = False
    pool = mine_hard_negatives(rows[[3]], torch.tensor([3]), rows, seen, pool_size=2)
    assert sorted(pool[0].tolist()) == [1, 5]


def test_mine_pads_short_pools():
    rows = _hand_built_rows()
    seen = torch.zeros(8, dtype=torch.bool)
    seen[[0, 1]] = True
    pool = mine_hard_negatives(rows[[0]], torch.tensor([0]), rows, seen, pool_size=3)
    assert pool[0].tolist() == [1, -1, -1]


# -- loss ---------------------------------------------------------------------------------------


def test_candidate_loss_equals_full_softmax():
    logits = torch.randn(3, 5)
    labels = torch.tensor([1, 4, 0])
    others = [[c for c in range(5) if c != int(label)] for label in labels]
    candidates = torch.tensor(
        [[int(label), *rest] for label, rest in zip(labels, others, strict=True)]
    )
    full = weighted_cross_entropy(logits, labels)
    assert torch.allclose(CandidateCrossEntropyLoss()(logits, candidates), full)


def test_candidate_loss_weights():
    logits = torch.randn(2, 4)
    candidates = torch.tensor([[0, 1, 2], [3, 1, 0]])
    per_sample = F.cross_entropy(
        logits.gather(1, candidates), torch.zeros(2, dtype=torch.long), reduction="none"
    )
    expected = (per_sample[0] + 5.0 * per_sample[1]) / 6.0
    loss = CandidateCrossEntropyLoss()(logits, candidates, torch.tensor([1.0, 5.0]))
    assert torch.allclose(loss, expected)


def test_candidate_loss_ignores_other_rows():
    logits = torch.zeros(1, 4, requires_grad=True)
    CandidateCrossEntropyLoss()(logits, torch.tensor([[0, 2]])).backward()
    assert logits.grad is not None
    assert logits.grad[0, 1] == 0
    assert logits.grad[0, 3] == 0


# -- the strategy -----------------------------------------------------------------------------


def _train_settings(**changes) -> TrainSettings:
    settings = TrainSettings(epochs=1, batch_size=8, lr_encoder=1e-3, lr_router=1e-2)
    for key, value in changes.items():
        setattr(settings, key, value)
    return settings


def _router(encoder_path) -> Router:
    return Router(QueryEncoder(str(encoder_path), max_length=32), dim=16)


def _small_carve(**options) -> CarveConfig:
    config = CarveConfig(
        candidates=6, hard_negatives=2, semantic_negatives=2, far_negatives=1, hard_pool=3
    )
    for key, value in options.items():
        setattr(config, key, value)
    return config


def test_carve_mines_top_wrong_for_class_means(cmrkit_tiny_encoder, cmrkit_synthetic_data):
    scenario = cmrbench(cmrkit_synthetic_data)
    strategy = Carve(
        model=_router(cmrkit_tiny_encoder),
        train=_train_settings(),
        carve=_small_carve(),
        progress=False,
        registry=scenario.registry,
    )
    strategy.train(scenario.train_stream[0])
    strategy.adapted_dataset = scenario.train_stream[0].dataset

    strategy.refresh_hard_negatives()
    queries, labels = strategy.class_mean_queries()
    head = strategy.router.head
    scores = queries @ head.normalized_rows().T
    scores[torch.arange(labels.numel()), labels] = float("-inf")
    expected = scores.topk(3, dim=1).indices

    assert strategy.hard_pool is not None
    assert torch.equal(strategy.hard_pool[labels], expected)


def test_carve_head_only_fraction(cmrkit_tiny_encoder, cmrkit_synthetic_data):
    scenario = cmrbench(cmrkit_synthetic_data)
    strategy = Carve(
        model=_router(cmrkit_tiny_encoder),
        train=_train_settings(epochs=2),
        carve=_small_carve(head_only_fraction=0.5),
        progress=False,
        registry=scenario.registry,
    )
    strategy.train(scenario.train_stream[0])
    assert strategy.head_only_steps == 0
    strategy.train(scenario.train_stream[1])
    assert strategy.head_only_steps == round(0.5 * strategy.exp_steps)
    assert strategy.head_only_steps > 0


def test_carve_null_fraction_uses_train_setting(cmrkit_tiny_encoder, cmrkit_synthetic_data):
    scenario = cmrbench(cmrkit_synthetic_data)
    strategy = Carve(
        model=_router(cmrkit_tiny_encoder),
        train=_train_settings(head_only_fraction=1.0),
        carve=_small_carve(head_only_fraction=None),
        progress=False,
        registry=scenario.registry,
    )
    strategy.train(scenario.train_stream[0])
    strategy.train(scenario.train_stream[1])
    assert strategy.head_only_steps == strategy.exp_steps


def test_carve_full_softmax_loss(cmrkit_tiny_encoder, cmrkit_synthetic_data):
    scenario = cmrbench(cmrkit_synthetic_data)
    strategy = Carve(
        model=_router(cmrkit_tiny_encoder),
        train=_train_settings(),
        carve=_small_carve(full_softmax=True),
        progress=False,
        registry=scenario.registry,
    )
    losses: list[tuple[float, float]] = []

    class Probe(SupervisedPlugin):
        def before_backward(self, strategy, **kwargs):
            expected = weighted_cross_entropy(
                strategy.mb_output, strategy.mb_y, strategy.mb_weights
            )
            losses.append((float(strategy.loss.detach()), float(expected.detach())))

    strategy.plugins.insert(0, Probe())
    strategy.train(scenario.train_stream[0])
    assert losses
    for loss, expected in losses:
        assert loss == pytest.approx(expected)


def test_carve_rejects_bad_options(cmrkit_tiny_encoder):
    with pytest.raises(ValueError, match="mine_every"):
        Carve(
            model=_router(cmrkit_tiny_encoder),
            train=_train_settings(),
            carve=_small_carve(mine_every=0),
        )


# -- plain Avalanche use ----------------------------------------------------------------------


@pytest.mark.parametrize("strategy_class", [Naive, Carve])
def test_plugins_in_plain_avalanche(strategy_class, cmrkit_tiny_encoder, cmrkit_synthetic_data):
    scenario = cmrbench(cmrkit_synthetic_data)
    anchor = AnchorPlugin(lambda_emb=10.0, lambda_proj=100.0)
    replay = RoutingReplayPlugin(
        ReplayConfig(policy="domain_coreset", ratio=0.2), registry=scenario.registry
    )
    extra = {"carve": _small_carve()} if strategy_class is Carve else {}
    strategy = strategy_class(
        model=_router(cmrkit_tiny_encoder),
        train=_train_settings(),
        plugins=[anchor, replay],
        progress=False,
        registry=scenario.registry,
        **extra,
    )

    for experience in scenario.train_stream:
        strategy.train(experience)

    sizes = [len(experience.dataset) for experience in scenario.train_stream]
    assert len(replay.buffer) == sum(round(0.2 * size) for size in sizes)
    assert anchor.anchor is not None
    assert len(strategy.router.head.seen_labels()) == len(scenario.registry)


# -- runs through the plugin manager ----------------------------------------------------------


@pytest.fixture()
def manager():
    return load_plugin_manager(autoload=False)


def _config(cmrkit_config, manager, overrides):
    return cmrkit_config(
        overrides,
        strategy_classes={name: info.config_class for name, info in manager.strategies().items()},
        plugin_classes={
            name: info.config_class for name, info in manager.training_plugins().items()
        },
    )


SMALL_CARVE = [
    "strategies.carve.candidates=6",
    "strategies.carve.hard_negatives=2",
    "strategies.carve.semantic_negatives=2",
    "strategies.carve.far_negatives=1",
]


def test_run_carve_anchor_replay(cmrkit_config, manager):
    config = _config(
        cmrkit_config, manager, ["run.strategy=carve", "run.plugins=[anchor,replay]", *SMALL_CARVE]
    )
    result = run_experiment(config, manager=manager)

    assert result.complete
    rows = result.matrix.values["m_acc"]
    assert sorted(rows) == [0, 1, 2, 3]
    assert sorted(rows[3]) == [0, 1, 2, 3]
    assert "replay_buffer.json" in result.context.state["checkpoint_extras"]


@pytest.mark.parametrize("names", [["anchor", "replay"], ["replay", "anchor"]])
def test_plugin_order_follows_written_order(names, cmrkit_config, manager):
    from cmrkit.extensions import RunContext

    config = _config(
        cmrkit_config, manager, ["run.strategy=carve", f"run.plugins=[{','.join(names)}]"]
    )
    scenario = cmrbench(config.data.dir)
    context = RunContext(
        config=config,
        benchmark=scenario,
        registry=scenario.registry,
        device=torch.device("cpu"),
        plugin_manager=manager,
    )
    plugins = manager.build_training_plugins(names, context)
    strategy = manager.strategy("carve").factory(context, plugins, None)

    expected = {"anchor": AnchorPlugin, "replay": RoutingReplayPlugin}
    ours = [p for p in strategy.plugins if isinstance(p, AnchorPlugin | RoutingReplayPlugin)]
    assert [type(p) for p in plugins] == [expected[name] for name in names]
    assert [type(p) for p in ours] == [expected[name] for name in names]


def test_unknown_plugin_fails_before_training(cmrkit_config, manager, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr("cmrkit.runner.load_benchmark", lambda config: calls.append("load"))
    monkeypatch.setattr(
        RoutingTemplate, "train", lambda self, *args, **kwargs: calls.append("train")
    )
    config = _config(cmrkit_config, manager, ["run.strategy=carve", "run.plugins=[anchor,nope]"])

    with pytest.raises(UnknownNameError) as error:
        run_experiment(config, manager=manager)
    message = str(error.value)
    assert "'nope'" in message
    assert "anchor" in message.split("available:")[1]
    assert "replay" in message.split("available:")[1]
    assert calls == []
