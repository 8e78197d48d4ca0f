import torch

from cmrkit.runner import build_router, run_experiment
from cmrkit.strategies.naive import Naive


def make_strategy(config, registry):
    return Naive(model=build_router(config, registry), train=config.train, progress=False)


def test_frozen_features_cached_and_exact(cmrkit_config, cmrkit_synthetic_data):
    from cmrkit.data.benchmark import cmrbench

    config = cmrkit_config(["train.freeze_encoder=true"])
    benchmark = cmrbench(cmrkit_synthetic_data)
    strategy = make_strategy(config, benchmark.registry)
    batch = strategy.router.encoder.tokenize(["translate spanish m0x1", "detect image boxes"])
    first = strategy.frozen_features(batch)
    assert len(strategy._feature_cache) == 2
    strategy.router.encoder.eval()
    with torch.no_grad():
        direct = strategy.router.encoder(batch)
    assert torch.allclose(first, direct, atol=1e-5)
    assert torch.equal(strategy.frozen_features(batch), first)


def test_no_cache_when_encoder_trains(cmrkit_config, cmrkit_synthetic_data):
    from cmrkit.data.benchmark import cmrbench

    config = cmrkit_config()
    strategy = make_strategy(config, cmrbench(cmrkit_synthetic_data).registry)
    strategy.frozen_features(strategy.router.encoder.tokenize(["translate spanish"]))
    assert strategy._feature_cache == {}


def test_frozen_encoder_weights_unchanged(cmrkit_config):
    result = run_experiment(cmrkit_config(["train.freeze_encoder=true", "train.epochs=2"]))
    router = result.strategy.model
    fresh = build_router(cmrkit_config(), result.context.registry)
    for (name, trained), (_, initial) in zip(router.encoder.named_parameters(),
                                             fresh.encoder.named_parameters(), strict=True):
        assert torch.equal(trained, initial), name


def test_head_only_phase_keeps_encoder(cmrkit_config):
    # With the whole of every later experience in the head-only phase, the encoder only
    # changes during the first experience.
    config = cmrkit_config(["train.head_only_fraction=1.0", "train.epochs=1"])
    result = run_experiment(config)
    assert result.strategy.head_only_steps == result.strategy.exp_steps


def test_registry_listener_sees_new_models(cmrkit_config, cmrkit_synthetic_data):
    from cmrkit.data.benchmark import cmrbench

    benchmark = cmrbench(cmrkit_synthetic_data)
    calls = []
    benchmark.registry.add_listener(lambda registry, labels, experience: calls.append((experience, labels)))
    run_experiment(cmrkit_config(["train.epochs=1"]), benchmark=benchmark)
    assert [experience for experience, _ in calls] == [0, 1, 2, 3]
    assert [labels for _, labels in calls] == benchmark.new_labels
