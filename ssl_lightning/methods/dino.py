"""DINO: self-distillation of a momentum teacher's global views into a student's multi-crop."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ssl_lightning.corruptions import Corruption, MultiCropViews, ViewTransform
from ssl_lightning.corruptions.batch import Batch
from ssl_lightning.heads import DINOHead
from ssl_lightning.losses.distillation import dino_loss, teacher_temperature, update_center_
from ssl_lightning.methods.base import SSLMethod
from ssl_lightning.methods.checks import (
    check_views,
    require_at_least,
    require_positive,
    require_unit_interval,
)
from ssl_lightning.methods.outputs import PretextOutput
from ssl_lightning.methods.passes import num_global_views
from ssl_lightning.methods.schedule import LRScaling, schedule_length
from ssl_lightning.momentum import cosine_momentum, ema_copy, ema_update_
from ssl_lightning.optim import OptimizerName

__all__ = ["DINO"]


class DINO(SSLMethod):
    """DINO (Caron et al. 2021, arXiv:2104.14294), for ResNet and ViT backbones.

    The student is backbone + :class:`~ssl_lightning.heads.DINOHead`; the teacher, an EMA of
    both (momentum ``base_momentum`` rising to 1 on a cosine), is what ``ssl-lightning export``
    writes. The student embeds all views (a backbone pass per resolution), the teacher the
    global ones: the leading views of the first view's size (2 of ``MultiCropViews``)::

        loss = mean over (g global, v any view, v != g) of mean_b H(P_t(g, b), P_s(v, b))
        P_t = softmax((teacher - center) / t_t),  P_s = softmax(student / t_s)

    with ``H(p, q) = -sum_k p_k log q_k`` (:func:`~ssl_lightning.losses.dino_loss`). After the
    loss the ``center`` buffer (in checkpoints) moves towards the teacher's batch mean,
    all-reduced over ranks, with momentum ``center_momentum``. The teacher temperature
    rises linearly over ``warmup_teacher_temp_epochs`` fractional epochs (optimizer steps /
    steps per epoch: exact on resume); the prototypes get no gradient for the first
    ``freeze_last_layer_epochs`` (the paper: one epoch).

    CIFAR defaults: solo-learn's CIFAR DINO config (``scripts/pretrain/cifar/dino.yaml``,
    ResNet-18): head 2048-2048-256, 4096 prototypes (the paper: 65536), LARS eta 0.02 (its
    ``clip_lr`` is ``lars_clip=True``, which the config sets), lr 0.3 x batch / 256, weight
    decay 1e-6, 10 warmup epochs, temperatures 0.1 (student) and 0.04 -> 0.07 over 50 epochs
    (teacher: solo-learn's default before its OmegaConf configs, which keep 0.07 from the
    start; DINO's code warms 0.04 -> 0.07 over 30 epochs for its longer ViT runs); the
    paper's teacher momentum 0.996 (solo-learn: 0.9995). The views are this library's own
    CIFAR-scale multi-crop, not solo-learn's (two 32-pixel crops of 8-100 % of the area,
    solarization on the second, no local crops): 2 global 32-pixel crops from ``(0.4, 1)``
    of the area, 6 local 16-pixel ones (patch 4 divides them) from ``(0.05, 0.4)`` (the
    paper's crop scales; it takes 8 local crops), no blur.

    Args:
        backbone: registered backbone name or module (see :class:`SSLMethod`).
        backbone_kwargs: arguments for the registered backbone.
        num_prototypes: output width ``K`` of the head.
        proj_hidden_dim: hidden width of the head's MLP.
        proj_bottleneck_dim: width of the head's normalized bottleneck.
        norm_last_layer: fix the prototypes' norms at 1 (the paper's default).
        student_temp: student temperature ``t_s > 0``.
        teacher_temp: teacher temperature ``t_t > 0`` after the warmup.
        warmup_teacher_temp: teacher temperature at the start.
        warmup_teacher_temp_epochs: epochs of the linear teacher-temperature warmup, >= 0.
        center_momentum: EMA momentum of the center, in ``[0, 1]``.
        base_momentum: teacher EMA momentum at the start of the run, in ``[0, 1]``.
        freeze_last_layer_epochs: epochs the prototypes get no gradient, >= 0.
        **kwargs: optimizer and schedule arguments of :class:`SSLMethod`.

    Examples:
        >>> model = DINO(backbone="resnet18", num_prototypes=4096)
        >>> vit = DINO(backbone="vit_small", optimizer="adamw", lr=5e-4, weight_decay=0.04)
    """

    export_module = "teacher_backbone"
    center: Tensor

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        backbone_kwargs: dict[str, Any] | None = None,
        num_prototypes: int = 4096,
        proj_hidden_dim: int = 2048,
        proj_bottleneck_dim: int = 256,
        norm_last_layer: bool = True,
        student_temp: float = 0.1,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: float = 50.0,
        center_momentum: float = 0.9,
        base_momentum: float = 0.996,
        freeze_last_layer_epochs: float = 1.0,
        optimizer: OptimizerName = "lars",
        lr: float = 0.3,
        weight_decay: float = 1e-6,
        lars_eta: float = 0.02,
        warmup_epochs: float = 10.0,
        scale_lr: LRScaling = True,
        **kwargs: Any,
    ) -> None:
        require_positive(
            student_temp=student_temp,
            teacher_temp=teacher_temp,
            warmup_teacher_temp=warmup_teacher_temp,
        )
        require_at_least(
            1,
            num_prototypes=num_prototypes,
            proj_hidden_dim=proj_hidden_dim,
            proj_bottleneck_dim=proj_bottleneck_dim,
        )
        require_at_least(
            0,
            warmup_teacher_temp_epochs=warmup_teacher_temp_epochs,
            freeze_last_layer_epochs=freeze_last_layer_epochs,
        )
        require_unit_interval(center_momentum=center_momentum, base_momentum=base_momentum)
        super().__init__(
            backbone=backbone,
            backbone_kwargs=backbone_kwargs,
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            lars_eta=lars_eta,
            warmup_epochs=warmup_epochs,
            scale_lr=scale_lr,
            **kwargs,
        )
        self.student_temp, self.teacher_temp = student_temp, teacher_temp
        self.warmup_teacher_temp = warmup_teacher_temp
        self.warmup_teacher_temp_epochs = warmup_teacher_temp_epochs
        self.center_momentum, self.base_momentum = center_momentum, base_momentum
        self.freeze_last_layer_epochs = freeze_last_layer_epochs
        self.head = DINOHead(
            self.num_features,
            num_prototypes,
            proj_hidden_dim,
            proj_bottleneck_dim,
            norm_last_layer=norm_last_layer,
        )
        self.teacher_backbone = ema_copy(self.backbone)
        self.teacher_head = ema_copy(self.head)
        self.register_buffer("center", torch.zeros(num_prototypes))  # [K], in checkpoints

    def default_corruption(self) -> Corruption:
        return MultiCropViews(
            num_global=2,
            num_local=6,
            global_view=ViewTransform(crop_scale=(0.4, 1.0)),
            local_size=16,
            local_scale=(0.05, 0.4),
        )

    def pretext_step(self, batch: Batch) -> PretextOutput:
        what = " (global views, then local crops)"
        check_views(batch, "DINO", "MultiCropViews", exact=False, what=what)
        views = batch.views
        num_views, batch_size = len(views), views[0].shape[0]
        num_global = num_global_views(views)
        features = self.embed_views(views)  # [V*B, D], one pass per resolution
        student = self.head(features).view(num_views, batch_size, -1)  # [V, B, K]
        with torch.no_grad():
            teacher = self.teacher_head(self.embed_views(views[:num_global], self.teacher_backbone))
        teacher = teacher.view(num_global, batch_size, -1)  # [G, B, K]
        temperature = self.current_teacher_temp()
        loss = dino_loss(student, teacher, self.center, self.student_temp, temperature)
        update_center_(self.center, teacher, self.center_momentum)
        return PretextOutput(
            loss=loss,
            features=features[: num_global * batch_size],  # the global views', as evaluated
            labels=batch.labels.repeat(num_global),
            metrics={"teacher_temp": loss.new_tensor(temperature)},
        )

    def current_teacher_temp(self) -> float:
        """The teacher temperature of the current optimizer step."""
        return teacher_temperature(
            self._epoch(),
            self.warmup_teacher_temp,
            self.teacher_temp,
            self.warmup_teacher_temp_epochs,
        )

    def on_after_backward(self) -> None:
        if self._epoch() < self.freeze_last_layer_epochs:
            for p in self.head.last_layer.parameters():
                p.grad = None  # the optimizer skips parameters without a gradient

    def after_optimizer_step(self) -> None:
        momentum = cosine_momentum(self.progress, self.base_momentum)
        ema_update_(self.teacher_backbone, self.backbone, momentum)
        ema_update_(self.teacher_head, self.head, momentum)

    def _epoch(self) -> float:
        """Optimizer steps done over steps per epoch (0 without a trainer)."""
        trainer = self._trainer
        if trainer is None:
            return 0.0
        return trainer.global_step / schedule_length(trainer)[1]
