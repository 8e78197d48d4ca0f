import math

import pytest

from cmrkit.pm import load_plugin_manager
from cmrkit.runner import load_benchmark, run_experiment
from cmrkit.strategies.schedules import Cumulative, Joint, joint_experience

SUMMARY_KEYS = ("m_acc", "f_acc", "d_acc", "d_acc_top3", "train_seconds", "train_sample_passes")


@pytest.fixture(scope="module")
def manager():
    return load_plugin_manager()


def make_config(cmrkit_config, manager, overrides):
    return cmrkit_config(
        overrides,
        strategy_classes={name: info.config_class for name, info in manager.strategies().items()},
        plugin_classes={name: info.config_class for name, info in manager.training_plugins().items()},
    )


def train_sizes(config):
    return [len(experience.dataset) for experience in load_benchmark(config).train_stream]


def test_cumulative_trains_on_union(cmrkit_config, manager):
    config = make_config(cmrkit_config, manager, ["run.strategy=cumulative", "train.epochs=1"])
    sizes = train_sizes(config)
    result = run_experiment(config, manager=manager)

    assert isinstance(result.strategy, Cumulative)
    expected = sum(sum(sizes[: i + 1]) for i in range(len(sizes)))
    assert result.summary["train_sample_passes"] == expected
    assert sorted(result.strategy.seen_datasets) == [0, 1, 2, 3]


def test_cumulative_stream_smoke(cmrkit_config, manager):
    result = run_experiment(make_config(cmrkit_config, manager, ["run.strategy=cumulative"]), manager=manager)
    table = result.matrix.as_table("d_acc", 4)
    for i in range(4):
        for j in range(4):
            assert math.isnan(table[i][j]) == (j > i), (i, j)
    for key in (*SUMMARY_KEYS, "d_forgetting"):
        assert math.isfinite(result.summary[key]), key


def test_joint_has_one_matrix_row(cmrkit_config, manager):
    config = make_config(cmrkit_config, manager, ["run.strategy=joint", "train.epochs=1"])
    sizes = train_sizes(config)
    result = run_experiment(config, manager=manager)

    assert isinstance(result.strategy, Joint)
    for key in result.matrix.keys():
        assert sorted(result.matrix.values[key]) == [0], key
    assert sorted(result.matrix.values["d_acc"][0]) == [0, 1, 2, 3]
    assert result.complete
    assert result.summary["train_sample_passes"] == sum(sizes)
    assert math.isnan(result.summary["d_forgetting"])
    for key in SUMMARY_KEYS:
        assert math.isfinite(result.summary[key]), key


def test_joint_experience_covers_stream(cmrkit_config, manager):
    benchmark = load_benchmark(make_config(cmrkit_config, manager, []))
    experience = joint_experience(benchmark.train_stream)
    every_class = set().union(*(e.classes_in_this_experience for e in benchmark.train_stream))
    assert set(experience.classes_in_this_experience) == every_class
    assert len(experience.dataset) == sum(len(e.dataset) for e in benchmark.train_stream)
    assert experience.current_experience == 0


def test_joint_experience_rejects_empty_stream():
    with pytest.raises(ValueError, match="empty"):
        joint_experience([])
