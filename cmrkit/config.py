"""Run configuration: structured defaults, then a YAML file, then ``key=value`` overrides.

Every option lives in a dataclass field with ``help`` metadata, so ``cmrkit run --help-config``
and the docs come from one place. Strategy options sit under ``strategies.<name>`` and training
plugin options under ``plugins.<name>``; their defaults come from the config dataclass that the
strategy or plugin declares.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cmrkit.data.source import UPSTREAM_BASE_URL
from cmrkit.encoder import LoraSettings


class ConfigError(ValueError):
    """An invalid configuration file or override."""


@dataclass
class RunSettings:
    strategy: str = field(default="naive", metadata={"help": "Strategy name (see `cmrkit strategies`)."})
    plugins: list[str] = field(
        default_factory=list, metadata={"help": "Training plugins, applied in the order written."}
    )
    seed: int = field(default=0, metadata={"help": "Seed for torch, numpy and Python's random."})
    device: str = field(default="cpu", metadata={"help": "Torch device, e.g. cpu or cuda:0."})
    output: str | None = field(
        default=None, metadata={"help": "Output folder; default runs/<strategy>-<time>."}
    )
    progress: bool = field(default=True, metadata={"help": "Show tqdm progress bars."})
    threads: int | None = field(default=None, metadata={"help": "torch intra-op threads; default torch's."})


@dataclass
class DataSettings:
    dir: str | None = field(
        default=None, metadata={"help": "Local CMRBench copy; default $CMRKIT_DATA_DIR, else download."}
    )
    variant: str = field(default="lite", metadata={"help": "lite (train = val split) or full (train + val)."})
    cache_dir: str | None = field(default=None, metadata={"help": "Download cache; default ~/.cache/cmrkit."})
    base_url: str = field(default=UPSTREAM_BASE_URL, metadata={"help": "Upstream raw-file base URL."})
    download: bool = field(default=True, metadata={"help": "Allow downloading missing files."})
    max_models_per_experience: int | None = field(
        default=None, metadata={"help": "Keep only the first N models of each experience (quick runs)."}
    )
    max_prompts_per_model: int | None = field(
        default=None, metadata={"help": "Cap on training prompts per model (quick runs)."}
    )


@dataclass
class EncoderSettings:
    name: str = field(default="minilm", metadata={"help": "minilm, a Hugging Face id, or a local path."})
    # 64 tokens hold the whole prompt for about 90% of CMRBench prompts under MiniLM's tokenizer
    # and halve CPU training time compared with 128.
    max_length: int = field(default=64, metadata={"help": "Maximum prompt length in tokens."})
    pooling: str = field(default="mean", metadata={"help": "mean, cls or last."})
    trainable_layers: int | None = field(
        default=None,
        metadata={"help": "Train only the top N transformer layers (null: all); ignored with LoRA."},
    )
    lora: LoraSettings = field(default_factory=LoraSettings)


@dataclass
class RouterSettings:
    dim: int = field(default=256, metadata={"help": "Width of the router space (projection output)."})
    tau: float = field(default=0.08, metadata={"help": "Temperature of the cosine scores."})
    init: str = field(default="random", metadata={"help": "New-row init: random or card (model-card text)."})


@dataclass
class TrainSettings:
    epochs: int = field(default=4, metadata={"help": "Epochs per experience."})
    batch_size: int = field(default=32, metadata={"help": "Training minibatch size (prompts)."})
    eval_batch_size: int = field(default=128, metadata={"help": "Evaluation minibatch size (prompts)."})
    lr_encoder: float = field(default=5e-5, metadata={"help": "AdamW learning rate of the encoder."})
    lr_router: float = field(default=1e-2, metadata={"help": "AdamW learning rate of projection and head."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    grad_clip: float | None = field(default=1.0, metadata={"help": "Max gradient norm; null disables."})
    freeze_encoder: bool = field(default=False, metadata={"help": "Train only the projection and head."})
    head_only_fraction: float = field(
        default=0.0,
        metadata={"help": "Fraction of each later experience's steps that train only the router head."},
    )


@dataclass
class EvalSettings:
    top_k: list[int] = field(default_factory=lambda: [1, 3, 5, 10], metadata={"help": "k values of top-k."})


@dataclass
class CmrkitConfig:
    run: RunSettings = field(default_factory=RunSettings)
    data: DataSettings = field(default_factory=DataSettings)
    encoder: EncoderSettings = field(default_factory=EncoderSettings)
    router: RouterSettings = field(default_factory=RouterSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    strategies: dict[str, Any] = field(default_factory=dict)
    plugins: dict[str, Any] = field(default_factory=dict)


def build_config(
    *,
    file: str | Path | None = None,
    overrides: list[str] | None = None,
    strategy_classes: dict[str, type | None] | None = None,
    plugin_classes: dict[str, type | None] | None = None,
) -> DictConfig:
    """Merge built-in defaults, then the YAML ``file``, then dotlist ``overrides``.

    ``strategy_classes`` and ``plugin_classes`` map names to config dataclasses; their defaults
    are placed under ``strategies.<name>`` and ``plugins.<name>`` before the file and overrides,
    so unknown option names there are rejected like any other typo.

    Raises:
        ConfigError: For a missing or invalid file, a malformed override, an unknown key or a
            value of the wrong type; the message names the file or key.
    """
    base = OmegaConf.structured(CmrkitConfig)
    for section, classes in (("strategies", strategy_classes), ("plugins", plugin_classes)):
        for name, config_class in (classes or {}).items():
            if config_class is not None:
                OmegaConf.update(base, f"{section}.{name}", OmegaConf.structured(config_class), merge=False)

    layers: list[Any] = [base]
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = OmegaConf.load(path)
        except (OmegaConfBaseException, OSError, ValueError, yaml.YAMLError) as error:
            # YAML errors put the line and column on later lines, so the message is flattened.
            raise ConfigError(f"invalid config file {path}: {' '.join(str(error).split())}") from error
        if not isinstance(loaded, DictConfig):
            raise ConfigError(f"invalid config file {path}: the top level must be a mapping of options")
        layers.append(loaded)
    if overrides:
        bad = [item for item in overrides if "=" not in item]
        if bad:
            raise ConfigError(f"invalid override {bad[0]!r}: write key=value, e.g. train.epochs=3")
        try:
            layers.append(OmegaConf.from_dotlist(list(overrides)))
        except OmegaConfBaseException as error:
            raise ConfigError(f"invalid override: {error}") from error

    try:
        merged = OmegaConf.merge(*layers)
    except OmegaConfBaseException as error:
        raise ConfigError(f"invalid configuration: {_short(error)}") from error
    assert isinstance(merged, DictConfig)
    return merged


def _short(error: Exception) -> str:
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    key = getattr(error, "full_key", None)
    return f"{key}: {message}" if key else message


def option_help(config_class: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """List ``(dotted key, default, help)`` for every field of a config dataclass, recursively."""
    rows: list[tuple[str, str, str]] = []
    for item in fields(config_class):
        key = f"{prefix}{item.name}"
        default: Any = None
        if item.default is not MISSING:
            default = item.default
        elif item.default_factory is not MISSING:
            default = item.default_factory()
        if is_dataclass(default):
            rows.extend(option_help(type(default), prefix=f"{key}."))
            continue
        rows.append((key, repr(default), item.metadata.get("help", "")))
    return rows
