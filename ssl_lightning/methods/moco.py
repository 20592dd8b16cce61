"""MoCo v3: a query encoder predicts a momentum encoder's keys, contrasted across the batch."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ssl_lightning.backbones import VisionTransformer
from ssl_lightning.corruptions import Corruption
from ssl_lightning.corruptions.batch import Batch
from ssl_lightning.corruptions.recipes import small_image_byol_views
from ssl_lightning.heads import ProjectionHead
from ssl_lightning.losses.contrastive import info_nce
from ssl_lightning.methods.base import SSLMethod
from ssl_lightning.methods.checks import (
    check_batch_size,
    check_views,
    require_at_least,
    require_positive,
    require_unit_interval,
)
from ssl_lightning.methods.outputs import PretextOutput
from ssl_lightning.methods.schedule import LRScaling
from ssl_lightning.momentum import cosine_momentum, ema_copy, ema_update_
from ssl_lightning.optim import OptimizerName

__all__ = ["MoCoV3"]


class MoCoV3(SSLMethod):
    """MoCo v3 (Chen, Xie & He 2021, "An Empirical Study of Training Self-Supervised Vision
    Transformers", https://arxiv.org/abs/2104.02057), for ResNet and ViT backbones.

    The query encoder is backbone + projector + predictor; the momentum encoder is an EMA of
    backbone + projector, updated after every optimizer step with a momentum rising from
    ``base_momentum`` to 1 on a cosine (the paper's 0.99 for ResNet and ViT on ImageNet). With
    ``q_v`` the queries and ``k_v`` the keys of view ``v``::

        loss = ctr(q_1, k_2) + ctr(q_2, k_1)
        ctr(q, k) = 2 t * CE(normalize(q) normalize(k_all)^T / t, labels)

    where ``k_all`` holds the keys of every rank (no gradient: they come from the momentum
    encoder) and query ``i`` of rank ``r`` is labelled ``r * B + i``
    (:func:`~ssl_lightning.losses.info_nce`).

    The heads follow the paper's code (``moco/builder.py``) per backbone family: for a CNN a
    2-layer projector 4096-256 with a last BatchNorm and a 2-layer predictor 4096-256 without
    one (``MoCo_ResNet``, as solo-learn's CIFAR recipe builds for ResNets); for a ViT a 3-layer
    projector 4096-4096-256 and a predictor that both end in a BatchNorm (``MoCo_ViT``).

    The CIFAR defaults are solo-learn's CIFAR MoCo v3 config (``scripts/pretrain/cifar/
    mocov3.yaml``; the paper has no CIFAR recipe): hidden widths 4096, output 256, ``t = 0.2``,
    momentum 0.99 -> 1, LARS with eta 0.02, lr 0.3 x batch / 256 and weight decay 1e-6, 10
    warmup epochs. solo-learn's LARS also caps the adapted rate at ``lr`` (its ``clip_lr``):
    ``lars_clip=True``, which the config sets (off by default, as for :class:`VICReg`). The
    paper's ImageNet ResNet recipe: LARS lr 0.3 x batch / 256 at batch 4096, eta 1e-3, weight decay
    1.5e-6, momentum 0.99 (ViT: AdamW), with BYOL's views.

    The default views are BYOL's pair without blur, for 32-pixel images
    (:func:`~ssl_lightning.corruptions.recipes.small_image_byol_views`, solo-learn's
    CIFAR views); ``data.corruption=BYOLViews`` gives BYOL's views for large images.

    Args:
        backbone: registered backbone name or module (see :class:`SSLMethod`).
        backbone_kwargs: arguments for the registered backbone.
        proj_hidden_dim: hidden width of the projector.
        proj_output_dim: output width of projector and predictor (the contrastive space).
        pred_hidden_dim: hidden width of the 2-layer predictor.
        proj_num_layers: Linear layers of the projector; ``None``: 3 for a
            :class:`~ssl_lightning.backbones.VisionTransformer`, 2 for any other backbone
            (the paper's ViT and ResNet heads). The predictor ends in a BatchNorm for a ViT.
            A CNN checkpoint whose projector has 3 layers loads with 3.
        temperature: InfoNCE temperature ``t > 0``.
        base_momentum: EMA momentum at the start of the run, in ``[0, 1]``.
        gather_distributed: contrast against the keys of every rank under DDP.
        **kwargs: optimizer and schedule arguments of :class:`SSLMethod`.

    Examples:
        >>> model = MoCoV3(backbone="resnet18", temperature=0.2)
        >>> vit = MoCoV3(backbone="vit_small", optimizer="adamw", lr=1.5e-4, weight_decay=0.1)
    """

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        backbone_kwargs: dict[str, Any] | None = None,
        proj_hidden_dim: int = 4096,
        proj_output_dim: int = 256,
        pred_hidden_dim: int = 4096,
        proj_num_layers: int | None = None,
        temperature: float = 0.2,
        base_momentum: float = 0.99,
        gather_distributed: bool = True,
        optimizer: OptimizerName = "lars",
        lr: float = 0.3,
        weight_decay: float = 1e-6,
        lars_eta: float = 0.02,
        warmup_epochs: float = 10.0,
        scale_lr: LRScaling = True,
        **kwargs: Any,
    ) -> None:
        require_positive(temperature=temperature)
        require_unit_interval(base_momentum=base_momentum)
        require_at_least(
            1,
            proj_hidden_dim=proj_hidden_dim,
            proj_output_dim=proj_output_dim,
            pred_hidden_dim=pred_hidden_dim,
            proj_num_layers=1 if proj_num_layers is None else proj_num_layers,
        )
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
        self.temperature = temperature
        self.base_momentum = base_momentum
        self.gather_distributed = gather_distributed
        vit = isinstance(self.backbone, VisionTransformer)
        if proj_num_layers is None:
            proj_num_layers = 3 if vit else 2
        self.projector = ProjectionHead(
            self.num_features,
            proj_hidden_dim,
            proj_output_dim,
            proj_num_layers,
            last_batch_norm=True,
        )
        self.predictor = ProjectionHead(
            proj_output_dim, pred_hidden_dim, proj_output_dim, 2, last_batch_norm=vit
        )
        self.momentum_backbone = ema_copy(self.backbone)
        self.momentum_projector = ema_copy(self.projector)

    def default_corruption(self) -> Corruption:
        return small_image_byol_views()

    def pretext_step(self, batch: Batch) -> PretextOutput:
        check_views(batch, "MoCo v3", "BYOLViews")
        check_batch_size(
            batch, "MoCo v3", "the other keys are its negatives", self.gather_distributed
        )
        features = self.embed_views(batch.views)  # [2B, D], one pass
        q1, q2 = self.predictor(self.projector(features)).chunk(2)  # [B, P] each
        with torch.no_grad():
            keys = self.momentum_projector(self.embed_views(batch.views, self.momentum_backbone))
        k1, k2 = keys.chunk(2)  # [B, P] each
        loss = info_nce(q1, k2, self.temperature, self.gather_distributed) + info_nce(
            q2, k1, self.temperature, self.gather_distributed
        )
        return PretextOutput(loss=loss, features=features, labels=batch.labels.repeat(2))

    def after_optimizer_step(self) -> None:
        momentum = cosine_momentum(self.progress, self.base_momentum)
        ema_update_(self.momentum_backbone, self.backbone, momentum)
        ema_update_(self.momentum_projector, self.projector, momentum)
