import math

import pytest
import torch
from avalanche.training.plugins import EvaluationPlugin
from peft import PeftModel

from cmrkit.checkpoint import load_checkpoint, save_checkpoint
from cmrkit.extensions import RunContext
from cmrkit.plugins.merge import LoraMergePlugin
from cmrkit.pm import load_plugin_manager
from cmrkit.runner import load_benchmark, run_experiment
from cmrkit.testing import tiny_run_config

SUMMARY_KEYS = ("m_acc", "f_acc", "d_acc", "d_acc_top3", "d_forgetting", "train_seconds",
                "train_sample_passes")


@pytest.fixture(scope="module")
def manager():
    return load_plugin_manager()


def make_config(manager, encoder, data, overrides):
    return tiny_run_config(
        encoder, data, overrides,
        strategy_classes={name: info.config_class for name, info in manager.strategies().items()},
        plugin_classes={name: info.config_class for name, info in manager.training_plugins().items()},
    )


def train_two_experiences(manager, encoder, data, method):
    """Build naive+merge and train it on the first two experiences only."""
    config = make_config(manager, encoder, data, [
        "run.strategy=naive", "run.plugins=[merge]", f"plugins.merge.method={method}",
    ])
    benchmark = load_benchmark(config)
    context = RunContext(config=config, benchmark=benchmark, registry=benchmark.registry,
                         device=torch.device("cpu"), plugin_manager=manager)
    plugins = manager.build_training_plugins(["merge"], context)
    strategy = manager.strategy("naive").factory(context, plugins, EvaluationPlugin())
    for experience in list(benchmark.train_stream)[:2]:
        strategy.train(experience)
    return strategy, config, benchmark


@pytest.fixture(scope="module", params=["ties", "linear"])
def two_experiences(request, manager, cmrkit_tiny_encoder, cmrkit_synthetic_data):
    return train_two_experiences(manager, cmrkit_tiny_encoder, cmrkit_synthetic_data, request.param)


def lora_layers(backbone):
    return [module for module in backbone.modules()
            if hasattr(module, "lora_A") and "merged" in module.lora_A]


def test_merged_adapter_is_active(two_experiences):
    backbone = two_experiences[0].router.encoder.backbone
    assert isinstance(backbone, PeftModel)
    assert backbone.active_adapter == "merged"
    assert set(backbone.peft_config) == {"experience1", "experience2", "merged"}


def test_merged_weights_differ_from_each_adapter(two_experiences):
    # Layers whose output the router never uses (BERT's pooler) get no gradient, so their
    # adapters stay zero; only layers with two trained adapters are compared.
    layers = [
        layer for layer in lora_layers(two_experiences[0].router.encoder.backbone)
        if all(layer.get_delta_weight(name).abs().sum() > 0 for name in ("experience1", "experience2"))
    ]
    assert layers
    for layer in layers:
        merged = layer.get_delta_weight("merged")
        assert merged.abs().sum() > 0
        for name in ("experience1", "experience2"):
            assert not torch.allclose(merged, layer.get_delta_weight(name), atol=1e-7), name


def test_merged_adapter_is_frozen(two_experiences):
    backbone = two_experiences[0].router.encoder.backbone
    for name, parameter in backbone.named_parameters():
        if ".merged." in name:
            assert not parameter.requires_grad, name


def test_second_adapter_trained_in_optimizer(two_experiences):
    strategy = two_experiences[0]
    optimized = {id(parameter) for group in strategy.optimizer.param_groups for parameter in group["params"]}
    named = dict(strategy.router.encoder.backbone.named_parameters())
    second = [p for name, p in named.items() if ".experience2." in name]
    first = [p for name, p in named.items() if ".experience1." in name]
    assert second
    assert all(id(p) in optimized for p in second)
    assert not any(id(p) in optimized for p in first)
    trained_b = [p for name, p in named.items() if "lora_B.experience2" in name]
    assert any(p.abs().sum() > 0 for p in trained_b)  # lora_B starts at zero


def test_checkpoint_keeps_merged_adapter(two_experiences, tmp_path):
    strategy, config, benchmark = two_experiences
    router = strategy.router
    router.eval()
    batch = router.encoder.tokenize(["transcribe speech audio", "detect objects image"])
    with torch.no_grad():
        expected = router(batch)

    save_checkpoint(tmp_path / "checkpoint", router, benchmark.registry, config)
    loaded, _, _ = load_checkpoint(tmp_path / "checkpoint")
    with torch.no_grad():
        actual = loaded(batch)
    seen = router.head.seen
    assert torch.allclose(actual[:, seen], expected[:, seen], atol=1e-4)


@pytest.mark.parametrize("overrides", [
    ["plugins.merge.method=ties"],
    ["plugins.merge.method=dare_ties", "encoder.lora.enabled=true"],
])
def test_merge_stream_smoke(manager, cmrkit_tiny_encoder, cmrkit_synthetic_data, overrides):
    config = make_config(manager, cmrkit_tiny_encoder, cmrkit_synthetic_data,
                         ["run.strategy=naive", "run.plugins=[merge]", *overrides])
    result = run_experiment(config, manager=manager)
    table = result.matrix.as_table("d_acc", 4)
    for i in range(4):
        for j in range(4):
            assert math.isnan(table[i][j]) == (j > i), (i, j)
    for key in SUMMARY_KEYS:
        assert math.isfinite(result.summary[key]), key
    backbone = result.strategy.router.encoder.backbone
    assert backbone.active_adapter == "merged"
    assert "default" not in backbone.peft_config


def test_merge_rejects_unknown_method():
    with pytest.raises(ValueError, match="method"):
        LoraMergePlugin(method="average")


def test_merge_rejects_bad_density():
    with pytest.raises(ValueError, match="density"):
        LoraMergePlugin(density=0.0)
