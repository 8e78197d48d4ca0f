"""The routing strategy base: an Avalanche ``SupervisedTemplate`` for text minibatches.

Where this template overrides Avalanche 0.6 behaviour, the reason is stated at the override:

- data loaders: the stock train loader ignores a dataset's ``collate_fn`` when experiences have no
  task labels, so both loaders are built here with the tokenising :class:`TextCollator`;
- model adaptation: Avalanche also adapts the model during evaluation, which would give the router
  rows for models it never trained on, so adaptation runs only while training;
- optimizer: rebuilt for every experience with separate encoder and router learning rates,
  because the head's parameter is replaced when it grows;
- loss: cross-entropy weighted per sample (replayed prompts can weigh more).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.templates import SupervisedTemplate
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cmrkit.encoder import TextCollator
from cmrkit.router import Router

logger = logging.getLogger("cmrkit.strategies")

RoundCallback = Callable[[int], None]


class RoutingTemplate(SupervisedTemplate):
    """Base class of cmrkit's trainable routing strategies.

    Args:
        model: The router to train.
        train: Training settings (``cmrkit.config.TrainSettings`` or a config node with the same
            fields).
        device: Torch device.
        plugins: Avalanche plugins, run in list order.
        evaluator: Avalanche evaluation plugin (normally with :class:`cmrkit.metrics.RoutingMetrics`).
        progress: Show tqdm bars for training and evaluation epochs.
        seed: Seed of the training data order.
        plugin_manager: If given, notified through ``cmrkit_models_added`` when the head grows.
        registry: The model registry passed to ``cmrkit_models_added``.
        collator: Collate function of both loaders; default a :class:`TextCollator` over
            ``model.encoder``.
        train_epochs: Epochs per experience; default ``train.epochs`` (retrieval passes 0).
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        train: Any,
        device: str | torch.device = "cpu",
        plugins: Sequence[Any] | None = None,
        evaluator: EvaluationPlugin | Callable[[], EvaluationPlugin] | None = None,
        progress: bool = True,
        seed: int = 0,
        plugin_manager: Any = None,
        registry: Any = None,
        collator: Any = None,
        train_epochs: int | None = None,
    ) -> None:
        self.settings = train
        self.progress = progress
        self.seed = seed
        self.plugin_manager = plugin_manager
        self.registry = registry
        if collator is None:
            assert isinstance(model, Router), "a model without an encoder needs its own collator"
            collator = TextCollator(model.encoder)
        self.collator = collator
        self.head_only_steps = 0
        self.exp_steps = 0
        self._feature_cache: dict[bytes, Tensor] = {}

        # make_optimizer builds the real optimizer per experience; Avalanche needs one now. A model
        # without parameters (a BM25 scorer) never trains, so it gets none.
        parameters = list(model.parameters())
        placeholder = torch.optim.AdamW(parameters, lr=float(train.lr_router)) if parameters else None
        super().__init__(
            model=model,
            optimizer=placeholder,
            criterion=nn.CrossEntropyLoss(reduction="none"),
            train_mb_size=int(train.batch_size),
            train_epochs=int(train.epochs) if train_epochs is None else train_epochs,
            eval_mb_size=int(train.eval_batch_size),
            device=device,
            plugins=list(plugins or []),
            evaluator=evaluator if evaluator is not None else EvaluationPlugin(),
            eval_every=-1,
        )

    # -- minibatch parts ----------------------------------------------------------------------

    @property
    def mb_weights(self) -> Tensor:
        """Per-sample loss weights of the current minibatch (1.0 for plain benchmark samples)."""
        assert self.mbatch is not None
        if len(self.mbatch) >= 4:
            return self.mbatch[2]
        return torch.ones(len(self.mb_y), device=self.device)

    @property
    def router(self) -> Router:
        """The model, typed as a :class:`Router`."""
        assert isinstance(self.model, Router)
        return self.model

    # -- Avalanche overrides ------------------------------------------------------------------

    def make_train_dataloader(self, shuffle: bool = True, **kwargs: Any) -> None:
        # The stock loader drops collate_fn for datasets without task labels (Avalanche 0.6).
        generator = torch.Generator().manual_seed(self.seed + int(self.clock.train_exp_counter))
        self.dataloader = DataLoader(
            self.adapted_dataset,
            batch_size=self.train_mb_size,
            shuffle=shuffle,
            collate_fn=self.collator,
            generator=generator,
        )

    def make_eval_dataloader(self, **kwargs: Any) -> None:
        self.dataloader = DataLoader(
            self.adapted_dataset, batch_size=self.eval_mb_size, shuffle=False, collate_fn=self.collator
        )

    def model_adaptation(self, model: nn.Module | None = None) -> nn.Module:
        # Avalanche adapts during evaluation too; a router must not grow rows it never trained.
        model = model if model is not None else self.model
        if not self.is_training:
            return model.to(self.device)
        before = set(self.router.head.seen_labels())
        adapted = super().model_adaptation(model)
        new = sorted(set(self.router.head.seen_labels()) - before)
        if new:
            logger.info("experience E%d adds %d models to the router", self._exp_index() + 1, len(new))
            if self.registry is not None:
                self.registry.notify_added(new, self._exp_index())
            if self.plugin_manager is not None:
                self.plugin_manager.notify_models_added(self.registry, new, self._exp_index())
        return adapted

    def make_optimizer(self, **kwargs: Any) -> None:
        # Rebuilt per experience: the head's parameter is replaced when it grows, and the encoder
        # and the router train at different learning rates.
        settings = self.settings
        encoder_params = [p for p in self.router.encoder.parameters() if p.requires_grad]
        groups = [{"params": self.router.router_parameters(), "lr": float(settings.lr_router)}]
        if encoder_params and not settings.freeze_encoder:
            groups.append({"params": encoder_params, "lr": float(settings.lr_encoder)})
        self.optimizer = torch.optim.AdamW(groups, weight_decay=float(settings.weight_decay))

        batches = math.ceil(len(self.adapted_dataset) / self.train_mb_size) if self.adapted_dataset else 0
        self.exp_steps = batches * self.train_epochs
        first = self._exp_index() == 0
        fraction = 0.0 if first else float(settings.head_only_fraction)
        self.head_only_steps = int(round(fraction * self.exp_steps))

    def forward(self) -> Tensor:
        if self.encoder_frozen_now():
            return self.router.head(self.router.embed(self.frozen_features(self.mb_x)))
        return self.router(self.mb_x)

    @torch.no_grad()
    def frozen_features(self, batch: Any) -> Tensor:
        """Encoder outputs without gradients, in eval mode (no dropout).

        With ``train.freeze_encoder`` the encoder never changes during the run, so outputs are
        cached per prompt (keyed by its token ids); every epoch after the first then skips the
        encoder. Pre-computed feature tensors pass through unchanged.
        """
        if isinstance(batch, Tensor):
            return batch
        encoder = self.router.encoder
        was_training = encoder.training
        encoder.eval()
        try:
            if not self.settings.freeze_encoder:
                return encoder(batch)
            return self._cached_features(batch)
        finally:
            encoder.train(was_training)

    def _cached_features(self, batch: Any) -> Tensor:
        ids, mask = batch["input_ids"], batch["attention_mask"].bool()
        keys = [ids[row][mask[row]].cpu().numpy().tobytes() for row in range(ids.shape[0])]
        missing = [row for row, key in enumerate(keys) if key not in self._feature_cache]
        if missing:
            rows = torch.tensor(missing, device=ids.device)
            computed = self.router.encoder({name: value[rows] for name, value in batch.items()})
            for row, features in zip(missing, computed, strict=True):
                self._feature_cache[keys[row]] = features
        return torch.stack([self._feature_cache[key] for key in keys])

    def criterion(self) -> Tensor:
        losses = F.cross_entropy(self.mb_output, self.mb_y, reduction="none")
        weights = self.mb_weights
        return (losses * weights).sum() / weights.sum().clamp(min=1e-8)

    def optimizer_step(self) -> None:
        clip = self.settings.grad_clip
        if clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(clip))
        self.optimizer.step()

    def training_epoch(self, **kwargs: Any) -> None:
        loader = self.dataloader
        self.dataloader = tqdm(
            loader,
            desc=f"train E{self._exp_index() + 1} epoch "
            f"{self.clock.train_exp_epochs + 1}/{self.train_epochs}",
            leave=False,
            disable=not self.progress,
        )
        try:
            super().training_epoch(**kwargs)
        finally:
            self.dataloader = loader

    def eval_epoch(self, **kwargs: Any) -> None:
        loader = self.dataloader
        self.dataloader = tqdm(
            loader, desc=f"eval E{self._exp_index() + 1}", leave=False, disable=not self.progress
        )
        try:
            super().eval_epoch(**kwargs)
        finally:
            self.dataloader = loader

    # -- helpers ------------------------------------------------------------------------------

    def encoder_frozen_now(self) -> bool:
        """Return whether the current step trains only the projection and head."""
        if not self.is_training:
            return True
        if self.settings.freeze_encoder:
            return True
        return self.clock.train_exp_iterations < self.head_only_steps

    def _exp_index(self) -> int:
        experience = self.experience
        return int(getattr(experience, "current_experience", 0)) if experience is not None else 0

    def fit_stream(
        self,
        train_stream: Sequence[Any],
        test_stream: Sequence[Any],
        on_round_end: RoundCallback | None = None,
    ) -> None:
        """Train on each experience in order, then evaluate on the test experiences seen so far.

        Subclasses with another schedule (joint or cumulative training) override this method.
        ``on_round_end(i)`` runs after the evaluation that follows training experience ``i``.
        """
        for index, experience in enumerate(train_stream):
            logger.info("training experience %d/%d", index + 1, len(train_stream))
            self.train(experience)
            logger.info("evaluating on test experiences 1-%d", index + 1)
            self.eval(test_stream[: index + 1])
            if on_round_end is not None:
                on_round_end(index)


def build_routing_strategy(
    template: type[RoutingTemplate], context: Any, plugins: list[Any], evaluator: Any, **options: Any
) -> RoutingTemplate:
    """Build ``template`` for a run with a fresh router from the run's config.

    ``options`` are passed on to the template's constructor (for example ``carve=...``).
    """
    from cmrkit.runner import build_router

    config = context.config
    return template(
        model=build_router(config, context.registry),
        train=config.train,
        device=context.device,
        plugins=plugins,
        evaluator=evaluator,
        progress=bool(config.run.progress),
        seed=int(config.run.seed),
        plugin_manager=context.plugin_manager,
        registry=context.registry,
        **options,
    )
