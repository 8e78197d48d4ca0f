"""Tests of the anchor loss and the anchor plugin."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from cmrkit.config import TrainSettings
from cmrkit.data.benchmark import cmrbench
from cmrkit.encoder import QueryEncoder
from cmrkit.plugins.anchor import AnchorConfig, AnchorLoss, AnchorPlugin, build_anchor
from cmrkit.router import Router
from cmrkit.strategies.naive import Naive


def _snapshot(labels=(0, 1, 2), rows=5, dim=4, hidden=6, lambda_emb=10.0, lambda_proj=100.0):
    torch.manual_seed(0)
    weight = torch.randn(rows, dim)
    projection = torch.randn(dim, hidden)
    anchor = AnchorLoss(
        list(labels),
        weight[list(labels)],
        projection,
        lambda_emb=lambda_emb,
        lambda_proj=lambda_proj,
    )
    return anchor, weight, projection


def test_anchor_zero_at_snapshot():
    anchor, weight, projection = _snapshot()
    assert float(anchor(weight, projection)) == pytest.approx(0.0, abs=1e-6)


def test_anchor_positive_after_row_drift():
    anchor, weight, projection = _snapshot()
    moved = weight.clone()
    moved[1] = torch.randn(4)
    assert float(anchor(moved, projection)) > 0.0


def test_anchor_positive_after_projection_drift():
    anchor, weight, projection = _snapshot()
    assert float(anchor(weight, projection + 0.1)) > 0.0


def test_anchor_new_rows_free():
    anchor, weight, projection = _snapshot(labels=(0, 1, 2), rows=5)
    moved = weight.clone()
    moved[3:] = torch.randn(2, 4) * 10
    assert float(anchor(moved, projection)) == pytest.approx(0.0, abs=1e-6)


def test_anchor_row_scale_is_free():
    # The row term is a cosine, so rescaling an old row costs nothing.
    anchor, weight, projection = _snapshot()
    assert float(anchor(weight * 3.0, projection)) == pytest.approx(0.0, abs=1e-5)


def test_anchor_terms_and_weights():
    anchor, weight, projection = _snapshot(lambda_emb=2.0, lambda_proj=3.0)
    moved = weight.clone()
    moved[0] = -moved[0]  # cosine -1 with its snapshot: 1 - cos = 2 for one of three rows
    row_drift, projection_drift = anchor.drift(moved, projection + 0.5)
    assert float(row_drift) == pytest.approx(2.0 / 3.0, rel=1e-5)
    assert float(projection_drift) == pytest.approx(0.25, rel=1e-5)
    assert float(anchor(moved, projection + 0.5)) == pytest.approx(
        2.0 * 2.0 / 3.0 + 3.0 * 0.25, rel=1e-5
    )


def test_anchor_gradient_only_on_old_rows():
    anchor, weight, projection = _snapshot()
    moved = (weight + 0.3 * torch.randn_like(weight)).requires_grad_(True)
    anchor(moved, projection).backward()
    assert moved.grad is not None
    assert float(moved.grad[:3].abs().sum()) > 0.0
    assert float(moved.grad[3:].abs().sum()) == 0.0


def test_anchor_rejects_mismatched_snapshot():
    with pytest.raises(ValueError, match="labels"):
        AnchorLoss([0, 1], torch.zeros(3, 4), torch.zeros(4, 2), lambda_emb=1.0, lambda_proj=1.0)


def test_anchor_rejects_negative_weight():
    with pytest.raises(ValueError, match="anchor weights"):
        AnchorLoss([0], torch.ones(1, 4), torch.zeros(4, 2), lambda_emb=-1.0, lambda_proj=1.0)


def test_anchor_config_has_help():
    from dataclasses import fields

    for item in fields(AnchorConfig):
        assert item.metadata.get("help")


# -- the plugin -------------------------------------------------------------------------------


def _router(encoder_path) -> Router:
    return Router(QueryEncoder(str(encoder_path), max_length=32), dim=16)


def test_plugin_snapshots_previous_labels(cmrkit_tiny_encoder, cmrkit_synthetic_data):
    scenario = cmrbench(cmrkit_synthetic_data)
    plugin = AnchorPlugin(lambda_emb=10.0, lambda_proj=100.0)
    strategy = Naive(
        model=_router(cmrkit_tiny_encoder),
        train=TrainSettings(epochs=1, batch_size=8),
        plugins=[plugin],
        progress=False,
        registry=scenario.registry,
    )

    strategy.train(scenario.train_stream[0])
    assert plugin.anchor is None
    first_labels = strategy.router.head.seen_labels()

    strategy.train(scenario.train_stream[1])
    assert plugin.anchor is not None
    assert plugin.anchor.labels.tolist() == first_labels
    assert len(strategy.router.head.seen_labels()) > len(first_labels)


def test_plugin_adds_anchor_to_loss(cmrkit_tiny_encoder):
    router = _router(cmrkit_tiny_encoder)
    router.head.add_labels([0, 1, 2])
    plugin = AnchorPlugin(lambda_emb=10.0, lambda_proj=100.0)
    plugin.seen_before = [0, 1]
    strategy = SimpleNamespace(
        model=router, experience=SimpleNamespace(current_experience=1), loss=torch.tensor(1.0)
    )

    plugin.before_training_exp(strategy)
    with torch.no_grad():
        router.head.weight[0] = -router.head.weight[0]
    plugin.before_backward(strategy)
    assert float(strategy.loss.detach()) == pytest.approx(1.0 + 10.0 * 1.0, rel=1e-4)


def test_plugin_skips_first_experience(cmrkit_tiny_encoder):
    router = _router(cmrkit_tiny_encoder)
    router.head.add_labels([0, 1])
    plugin = AnchorPlugin()
    strategy = SimpleNamespace(
        model=router, experience=SimpleNamespace(current_experience=0), loss=torch.tensor(1.0)
    )
    plugin.before_training_exp(strategy)
    plugin.before_backward(strategy)
    assert float(strategy.loss) == 1.0


def test_plugin_falls_back_to_previous_classes(cmrkit_tiny_encoder):
    router = _router(cmrkit_tiny_encoder)
    router.head.add_labels([0, 1, 2, 3])
    plugin = AnchorPlugin()
    experience = SimpleNamespace(current_experience=1, previous_classes={0, 2, 9})
    plugin.before_training_exp(SimpleNamespace(model=router, experience=experience))
    assert plugin.anchor is not None
    assert plugin.anchor.labels.tolist() == [0, 2]


def test_plugin_rejects_other_models():
    plugin = AnchorPlugin()
    strategy = SimpleNamespace(
        model=torch.nn.Linear(2, 2), experience=SimpleNamespace(current_experience=1)
    )
    with pytest.raises(TypeError, match="Router"):
        plugin.before_training_exp(strategy)


def test_factory_reads_options():
    [plugin] = build_anchor(AnchorConfig(lambda_emb=3.0, lambda_proj=4.0), context=None)  # type: ignore[arg-type]
    assert isinstance(plugin, AnchorPlugin)
    assert plugin.lambda_emb == 3.0
    assert plugin.lambda_proj == 4.0
