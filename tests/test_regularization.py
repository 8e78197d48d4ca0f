import math
from collections import defaultdict

import pytest
import torch
from avalanche.core import SupervisedPlugin

from cmrkit.extensions import TrainingPluginInfo
from cmrkit.hookspecs import hookimpl
from cmrkit.plugins.regularization import RoutingEWCPlugin, RoutingLwFPlugin
from cmrkit.pm import PluginError, load_plugin_manager
from cmrkit.runner import run_experiment
from cmrkit.testing import tiny_run_config

SUMMARY_KEYS = ("m_acc", "f_acc", "d_acc", "d_acc_top3", "d_forgetting", "train_seconds",
                "train_sample_passes")


class PenaltyRecorder(SupervisedPlugin):
    """Record the ``last_penalty`` of every regularisation plugin per training experience."""

    def __init__(self):
        super().__init__()
        self.penalties = defaultdict(list)

    def after_training_iteration(self, strategy, **kwargs):
        for plugin in strategy.plugins:
            if hasattr(plugin, "last_penalty"):
                self.penalties[int(strategy.clock.train_exp_counter)].append(plugin.last_penalty)


class RecorderHooks:
    def __init__(self):
        self.recorders = []

    @hookimpl
    def cmrkit_training_plugins(self):
        def build(options, context):
            recorder = PenaltyRecorder()
            self.recorders.append(recorder)
            return [recorder]

        return [TrainingPluginInfo(name="recorder", factory=build, description="test recorder")]


@pytest.fixture(scope="module")
def hooks():
    return RecorderHooks()


@pytest.fixture(scope="module")
def manager(hooks):
    manager = load_plugin_manager()
    manager.register_plugin(hooks, name="test-recorder")
    yield manager
    manager.unregister_plugin("test-recorder")


def run(manager, hooks, encoder, data, overrides):
    config = tiny_run_config(
        encoder, data, overrides,
        strategy_classes={name: info.config_class for name, info in manager.strategies().items()},
        plugin_classes={name: info.config_class for name, info in manager.training_plugins().items()},
    )
    result = run_experiment(config, manager=manager)
    return result, hooks.recorders[-1]


def plugin_of(result, kind):
    return next(plugin for plugin in result.strategy.plugins if isinstance(plugin, kind))


@pytest.fixture(scope="module")
def ewc_run(manager, hooks, cmrkit_tiny_encoder, cmrkit_synthetic_data):
    return run(manager, hooks, cmrkit_tiny_encoder, cmrkit_synthetic_data,
               ["run.strategy=naive", "run.plugins=[ewc,recorder]"])


@pytest.fixture(scope="module")
def lwf_run(manager, hooks, cmrkit_tiny_encoder, cmrkit_synthetic_data):
    return run(manager, hooks, cmrkit_tiny_encoder, cmrkit_synthetic_data,
               ["run.strategy=naive", "run.plugins=[lwf,recorder]"])


def check_stream(result):
    table = result.matrix.as_table("m_acc", 4)
    for i in range(4):
        for j in range(4):
            assert math.isnan(table[i][j]) == (j > i), (i, j)
    for key in SUMMARY_KEYS:
        assert math.isfinite(result.summary[key]), key


# -- ewc --------------------------------------------------------------------------------------


def test_ewc_stream_smoke(ewc_run):
    check_stream(ewc_run[0])


def test_ewc_penalty_after_first_experience(ewc_run):
    penalties = ewc_run[1].penalties
    assert sorted(penalties) == [0, 1, 2, 3]
    assert all(value == 0.0 for value in penalties[0])
    for experience in (1, 2, 3):
        assert all(math.isfinite(value) for value in penalties[experience]), experience
        assert max(penalties[experience]) > 0.0, experience


def test_ewc_tracks_optimized_parameters(ewc_run):
    ewc = plugin_of(ewc_run[0], RoutingEWCPlugin)
    importances = ewc.importances[0]
    assert "head.weight" in importances
    assert "projection.weight" in importances
    assert any(name.startswith("encoder.") for name in importances)
    for name, value in importances.items():
        assert torch.isfinite(value.data).all(), name
        assert (value.data >= 0).all(), name


def test_ewc_penalty_covers_grown_head(ewc_run):
    result = ewc_run[0]
    ewc = plugin_of(result, RoutingEWCPlugin)
    saved_rows = ewc.saved_params[0]["head.weight"].data.shape[0]
    assert saved_rows < result.strategy.router.head.num_rows
    assert float(ewc.penalty(result.strategy).detach()) > 0.0


def test_ewc_online_smoke(manager, hooks, cmrkit_tiny_encoder, cmrkit_synthetic_data):
    result, recorder = run(manager, hooks, cmrkit_tiny_encoder, cmrkit_synthetic_data, [
        "run.strategy=naive", "run.plugins=[ewc,recorder]",
        "plugins.ewc.mode=online", "plugins.ewc.decay_factor=0.9",
    ])
    check_stream(result)
    assert max(recorder.penalties[3]) > 0.0
    assert sorted(plugin_of(result, RoutingEWCPlugin).importances) == [3]


def test_ewc_online_needs_decay():
    with pytest.raises(ValueError, match="decay_factor"):
        RoutingEWCPlugin(100.0, mode="online")


def test_ewc_separate_rejects_decay():
    with pytest.raises(ValueError, match="decay_factor"):
        RoutingEWCPlugin(100.0, mode="separate", decay_factor=0.5)


def test_ewc_bad_mode_is_plugin_error(manager, cmrkit_tiny_encoder, cmrkit_synthetic_data):
    from cmrkit.extensions import RunContext

    config = tiny_run_config(
        cmrkit_tiny_encoder, cmrkit_synthetic_data, ["plugins.ewc.mode=sideways"],
        plugin_classes={name: info.config_class for name, info in manager.training_plugins().items()},
    )
    context = RunContext(config=config, benchmark=None, registry=None, device=torch.device("cpu"))
    with pytest.raises(PluginError, match="sideways"):
        manager.build_training_plugins(["ewc"], context)


# -- lwf --------------------------------------------------------------------------------------


def test_lwf_stream_smoke(lwf_run):
    check_stream(lwf_run[0])


def test_lwf_penalty_after_first_experience(lwf_run):
    penalties = lwf_run[1].penalties
    assert all(value == 0.0 for value in penalties[0])
    for experience in (1, 2, 3):
        assert all(math.isfinite(value) for value in penalties[experience]), experience
        assert max(penalties[experience]) > 0.0, experience


def test_lwf_teacher_is_frozen(lwf_run):
    teacher = plugin_of(lwf_run[0], RoutingLwFPlugin).lwf.prev_model
    assert not teacher.training
    assert not any(parameter.requires_grad for parameter in teacher.parameters())


def test_lwf_previous_classes_are_seen(lwf_run):
    result = lwf_run[0]
    previous = plugin_of(result, RoutingLwFPlugin).lwf.prev_classes_by_task[0]
    assert previous <= set(result.strategy.router.head.seen_labels())


def test_lwf_ignores_unseen_rows():
    plugin = RoutingLwFPlugin(alpha=1.0, temperature=2.0)
    inf = float("-inf")
    teacher_logits = torch.tensor([[2.0, 1.0, inf, inf], [0.5, 3.0, inf, inf]])
    plugin.lwf.prev_model = lambda x: teacher_logits
    plugin.lwf.prev_classes_by_task[0] = {0, 1}
    student = torch.tensor([[1.0, 2.0, 0.3, inf], [1.5, 0.0, inf, 0.2]], requires_grad=True)

    penalty = plugin.lwf(None, student, None)
    penalty.backward()
    assert math.isfinite(float(penalty))
    assert float(penalty) > 0.0
    assert torch.isfinite(student.grad).all()


def test_lwf_rejects_bad_temperature():
    with pytest.raises(ValueError, match="temperature"):
        RoutingLwFPlugin(temperature=0.0)
