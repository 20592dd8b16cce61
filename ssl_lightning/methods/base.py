"""``SSLMethod``: the thin LightningModule every pretext method subclasses."""

from __future__ import annotations

from typing import Any, ClassVar

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from ssl_lightning.backbones import create_backbone, resolve_channels_last
from ssl_lightning.backbones.registry import num_features_of
from ssl_lightning.corruptions import Batch, CleanView, Corruption
from ssl_lightning.methods.checks import check_sync_batchnorm, require_at_least, require_positive
from ssl_lightning.methods.nonfinite import NonFiniteGuard, NonFinitePolicy
from ssl_lightning.methods.outputs import PretextOutput, StepOutput
from ssl_lightning.methods.passes import embed_in_passes
from ssl_lightning.methods.schedule import (
    RECIPES,
    LRScaling,
    Recipe,
    announce_schedule,
    scaled_lr,
    schedule_length,
    warmup_steps,
)
from ssl_lightning.optim import (
    OPTIMIZERS,
    OptimizerName,
    build_optimizer,
    param_groups,
    warmup_cosine_schedule,
)


class SSLMethod(L.LightningModule):
    """Base of all pretext methods: the backbone, the optimizer recipe and the step template.

    A subclass builds its heads in ``__init__``, names its corruption in
    :meth:`default_corruption` and computes its loss in :meth:`pretext_step`. The hooks for
    methods with more moving parts (BYOL, MoCo, DINO):

    - :meth:`after_optimizer_step` runs once after each real optimizer step (not per batch
      under gradient accumulation): the place for EMA teacher updates.
    - :attr:`progress` is ``k / K`` during optimizer step ``k`` (0-based) of ``K``, in the
      training step and in the hook alike: the clock of momentum and temperature schedules
      (see :mod:`ssl_lightning.momentum`).
    - :meth:`configure_param_groups` returns the optimizer's groups; a group may set
      ``lr_factor``, ``weight_decay`` and ``lars_exclude``.
    - :meth:`embed_views` embeds views with the backbone or any other encoder (a teacher).
    - :attr:`export_module` names the submodule that ``ssl-lightning export`` writes.
    - :attr:`pretext_settings` maps corruption attributes this method owns to their config
      keys: a configured ``data.corruption`` that disagrees is an error naming both.
    - :meth:`preview` names the image rows ``PreviewImages`` draws.

    The method is a :class:`~ssl_lightning.corruptions.PretextModel`. Its non-finite loss policy is
    :attr:`nonfinite`, a callback it attaches itself, so no overridden hook can switch it off.

    Args:
        backbone: a registered backbone name (see ``list_backbones()``) or a module that
            honours the backbone contract (``num_features``, pooled ``forward``).
        backbone_kwargs: keyword arguments for ``create_backbone`` when ``backbone`` is a name.
        optimizer: ``"sgd"``, ``"lars"`` or ``"adamw"``.
        lr: base learning rate (per 256 images when ``scale_lr``).
        weight_decay: weight decay of weights; biases and norm parameters get none.
        momentum: SGD/LARS momentum.
        betas: AdamW betas.
        lars_eta: LARS trust coefficient.
        lars_clip: cap LARS's adapted rate at the scheduled one (solo-learn's ``clip_lr``).
        warmup_epochs: linear warmup length, in epochs (fractions allowed).
        final_lr_factor: the cosine decay ends at ``lr * final_lr_factor``.
        scale_lr: ``"linear"``/``True``: ``lr`` x global batch / 256; ``"sqrt"``: x its root.
        channels_last: channels-last memory format; ``None``: on for conv backbones (faster).
        compile: compile the backbone with ``torch.compile``.
        views_per_pass: the most views of one size per backbone pass (``None``: all); lower it
            when ``views x batch`` images do not fit (checkpointed passes, ``methods/passes.py``).
        recipe: ``"paper"`` (the arguments as given) or ``"budget"``: the method's
            ``budget_recipe`` replaces the arguments it names (logged), and the warmup is 10 %
            of the run instead of ``warmup_epochs`` (``methods/schedule.py``).
        on_nonfinite: a non-finite loss stops the run (``"raise"``, checked without a sync per
            step) or its step is skipped and counted (``"skip"``) by :attr:`nonfinite`.
    """

    export_module: ClassVar[str] = "backbone"
    pretext_settings: ClassVar[dict[str, str]] = {}
    # Arguments recipe="budget" replaces (benchmarks/README.md); methods read theirs by recipe_arg
    budget_recipe: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        backbone_kwargs: dict[str, Any] | None = None,
        optimizer: OptimizerName = "sgd",
        lr: float = 0.1,
        weight_decay: float = 5e-4,
        momentum: float = 0.9,
        betas: tuple[float, float] = (0.9, 0.95),
        lars_eta: float = 1e-3,
        lars_clip: bool = False,
        warmup_epochs: float = 0.0,
        final_lr_factor: float = 0.0,
        scale_lr: LRScaling = False,
        channels_last: bool | None = None,
        compile: bool = False,
        views_per_pass: int | None = None,
        recipe: Recipe = "paper",
        on_nonfinite: NonFinitePolicy = "raise",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"] if isinstance(backbone, nn.Module) else None)
        if optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer must be 'sgd', 'lars' or 'adamw', got {optimizer!r} "
                "(set model.optimizer)"
            )
        require_positive(lr=lr)
        require_at_least(0, warmup_epochs=warmup_epochs)
        if recipe not in RECIPES:
            raise ValueError(f"recipe must be 'paper' or 'budget', got {recipe!r} (model.recipe)")
        if views_per_pass is not None:
            require_at_least(1, views_per_pass=views_per_pass)
        self.nonfinite = NonFiniteGuard(on_nonfinite)
        if isinstance(backbone, str):
            backbone = create_backbone(backbone, **(backbone_kwargs or {}))
        elif backbone_kwargs:
            raise ValueError("backbone_kwargs only apply when backbone is a registered name")
        self.num_features = num_features_of(backbone)
        self.backbone, self.channels_last = backbone, resolve_channels_last(channels_last, backbone)
        self.views_per_pass, self.recipe = views_per_pass, recipe
        pick = self.recipe_arg  # the budget recipe may replace any optimizer argument
        self.optimizer_name, self.lr = pick("optimizer", optimizer), pick("lr", lr)
        self.weight_decay = pick("weight_decay", weight_decay)
        self.momentum, self.betas = pick("momentum", momentum), pick("betas", betas)
        self.lars_eta, self.lars_clip = pick("lars_eta", lars_eta), pick("lars_clip", lars_clip)
        self.warmup_epochs, self.final_lr_factor = warmup_epochs, final_lr_factor
        self.scale_lr, self.compile_backbone = scale_lr, compile
        if recipe == "budget" and self.budget_recipe:
            chosen = ", ".join(f"{name} {value}" for name, value in self.budget_recipe.items())
            rank_zero_info(f"{type(self).__name__} (model.recipe=budget): {chosen}")
        self._total_steps: int | None = None

    def recipe_arg(self, name: str, given: Any) -> Any:
        """``given``, or ``budget_recipe[name]`` under the budget recipe (the method's own too)."""
        return self.budget_recipe.get(name, given) if self.recipe == "budget" else given

    def default_corruption(self) -> Corruption:
        """The corruption the datamodule applies when its config sets none."""
        return CleanView()

    def check_corruption(self, corruption: Corruption) -> None:
        """Raises if a configured corruption disagrees with a setting this method owns."""
        for name, key in self.pretext_settings.items():
            mine, theirs = getattr(self, name), getattr(corruption, name, None)
            if theirs is not None and theirs != mine:
                raise ValueError(
                    f"data.corruption has {name}={theirs!r}, but {key}={mine!r}; the method "
                    f"owns {name}: set {key}={theirs!r} and leave it out of data.corruption "
                    "(or unset data.corruption to use the method's default)"
                )

    def pretext_step(self, batch: Batch) -> PretextOutput:
        """Computes the pretext loss of one training batch; subclasses implement it."""
        raise NotImplementedError

    @property
    def progress(self) -> float:
        """Optimizer steps before the current one over the run's total, in ``[0, 1]`` (or 0)."""
        if (trainer := self._trainer) is None:
            return 0.0
        if self._total_steps is None:
            self._total_steps = schedule_length(trainer)[0]
        return min(1.0, trainer.global_step / max(1, self._total_steps))

    def after_optimizer_step(self) -> None:
        """Runs once after each optimizer step (an EMA teacher update), not after a step
        skipped for a non-finite loss; does nothing by default."""

    def preview(self, batch: Batch) -> dict[str, Tensor]:
        """Named image rows ``[B_r, 3, H_r, W_r]`` to draw for ``batch``: its views (and clean
        image) by default; masked methods show their reconstruction."""
        return batch.image_rows()

    def configure_param_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups: trainable parameters, no decay on ``ndim <= 1``."""
        return param_groups(self, self.weight_decay)

    def embed_views(self, views: list[Tensor], encoder: nn.Module | None = None) -> Tensor:
        """Pooled features ``[V * B, D]`` of all views in order, by ``encoder`` (the backbone by
        default); views of one size share one pass (one per resolution for multi-crop), of at
        most ``views_per_pass`` views."""
        encoder = self.backbone if encoder is None else encoder
        return embed_in_passes(encoder, views, self.views_per_pass, self._memory_format)

    def setup(self, stage: str) -> None:
        check_sync_batchnorm(self, stage)  # before DDP fails on it in torch's words
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        if self.compile_backbone:
            self.backbone.compile()

    def forward(self, x: Tensor) -> Tensor:
        """Pooled backbone features: ``[B, 3, H, W] -> [B, num_features]``."""
        return self.backbone(self._memory_format(x))

    def training_step(self, batch: Batch, batch_idx: int) -> StepOutput:
        out = self.pretext_step(batch)
        self.nonfinite.watch(out.loss, self.trainer.global_step if self._trainer else 0)
        batch_size = batch.labels.shape[0]
        self.log("train/loss", out.loss, prog_bar=True, batch_size=batch_size)
        for name, value in out.metrics.items():
            self.log(f"train/{name}", value, batch_size=batch_size)
        return {"loss": out.loss, "features": out.features.detach(), "labels": out.labels}

    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        return {"features": self(batch.views[0]), "labels": batch.labels}

    test_step = predict_step = validation_step  # the probe, kNN and FeatureWriter read them

    def configure_optimizers(self) -> Any:
        lr = scaled_lr(self.lr, self.trainer, self.scale_lr)
        optimizer = build_optimizer(
            self.optimizer_name,
            self.configure_param_groups(),
            lr,
            momentum=self.momentum,
            betas=self.betas,
            lars_eta=self.lars_eta,
            lars_clip=self.lars_clip,
        )
        self._total_steps, per_epoch = schedule_length(self.trainer)
        warmup = warmup_steps(self.recipe, self.warmup_epochs, self._total_steps, per_epoch)
        name, steps = type(self).__name__, self._total_steps
        announce_schedule(name, self.recipe, self.optimizer_name, lr, warmup, steps, per_epoch)
        return warmup_cosine_schedule(optimizer, warmup, self._total_steps, self.final_lr_factor)

    def configure_callbacks(self) -> list[L.Callback]:
        return [self.nonfinite]

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if not self.nonfinite.skipped_last:
            self.after_optimizer_step()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["export_module"] = self.export_module

    def _memory_format(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
