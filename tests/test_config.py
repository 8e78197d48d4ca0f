from dataclasses import dataclass, field

import pytest

from cmrkit.config import ConfigError, build_config, option_help


@dataclass
class ToyPluginConfig:
    strength: float = field(default=1.0, metadata={"help": "How strong."})


def test_defaults():
    config = build_config()
    assert config.run.strategy == "naive"
    assert config.data.variant == "lite"


def test_file_overrides_defaults(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: 7\n  batch_size: 4\n")
    config = build_config(file=path)
    assert config.train.epochs == 7
    assert config.train.batch_size == 4


def test_dotlist_overrides_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: 7\n")
    config = build_config(file=path, overrides=["train.epochs=3"])
    assert config.train.epochs == 3


def test_plugin_defaults_under_plugins_key():
    config = build_config(plugin_classes={"toy": ToyPluginConfig})
    assert config.plugins.toy.strength == 1.0


def test_plugin_option_override():
    config = build_config(overrides=["plugins.toy.strength=2.5"], plugin_classes={"toy": ToyPluginConfig})
    assert config.plugins.toy.strength == 2.5


def test_unknown_plugin_option_rejected():
    with pytest.raises(ConfigError, match="strenght"):
        build_config(overrides=["plugins.toy.strenght=2"], plugin_classes={"toy": ToyPluginConfig})


def test_unknown_key_rejected():
    with pytest.raises(ConfigError, match="epoks"):
        build_config(overrides=["train.epoks=3"])


def test_wrong_type_rejected():
    with pytest.raises(ConfigError, match="epochs"):
        build_config(overrides=["train.epochs=many"])


def test_override_without_equals_rejected():
    with pytest.raises(ConfigError, match="key=value"):
        build_config(overrides=["train.epochs"])


def test_missing_file_rejected(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        build_config(file=tmp_path / "absent.yaml")


def test_invalid_yaml_rejected(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        build_config(file=path)


def test_option_help_lists_nested_fields():
    from cmrkit.config import CmrkitConfig

    keys = {row[0] for row in option_help(CmrkitConfig)}
    assert "encoder.lora.r" in keys
    assert "train.epochs" in keys


def test_yaml_error_names_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: [1,\n")
    with pytest.raises(ConfigError, match="line"):
        build_config(file=path)


def test_list_file_rejected(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml: the top level must be a mapping"):
        build_config(file=path)
