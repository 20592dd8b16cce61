"""BYOL: an online network predicts an EMA target network's projection of the other view."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ssl_lightning.corruptions import Corruption
from ssl_lightning.corruptions.batch import Batch
from ssl_lightning.corruptions.recipes import small_image_byol_views
from ssl_lightning.heads import ProjectionHead
from ssl_lightning.losses.similarity import byol_loss
from ssl_lightning.methods.base import SSLMethod
from ssl_lightning.methods.checks import check_views, require_at_least, require_unit_interval
from ssl_lightning.methods.outputs import PretextOutput
from ssl_lightning.methods.schedule import LRScaling
from ssl_lightning.momentum import cosine_momentum, ema_copy, ema_update_
from ssl_lightning.optim import OptimizerName


class BYOL(SSLMethod):
    """BYOL (Grill et al. 2020, "Bootstrap Your Own Latent: A New Approach to Self-Supervised
    Learning", https://arxiv.org/abs/2006.07733).

    The online network (backbone, projector, predictor) gives ``p_v`` for view ``v``; the
    target network, EMA copies of the backbone and the projector, gives ``z'_v``. Loss, the
    two symmetric terms summed as in the paper (so in ``[0, 8]``)::

        loss = mean_b [2 - 2 cos(p_1, sg(z'_2))] + mean_b [2 - 2 cos(p_2, sg(z'_1))]

    After each optimizer step the target moves to ``m * target + (1 - m) * online`` with ``m``
    rising from ``base_momentum`` to ``final_momentum`` along a cosine over the run (the
    paper's Section 3.2). The target is a pair of submodules (``teacher_backbone``,
    ``teacher_projector``), so checkpoints hold it and a resumed run continues it. Callbacks
    get the online backbone's features of both views, and ``ssl-lightning export`` writes the
    online backbone: the paper evaluates the online encoder.

    The CIFAR defaults are solo-learn's CIFAR config (scripts/pretrain/cifar/byol.yaml; the
    paper has no CIFAR recipe): projector and predictor 4096 -> 256, LARS with eta 0.02,
    lr 1.0 x batch / 256, weight decay 1e-5, 10 warmup epochs, momentum 0.99 -> 1. The
    paper's ImageNet recipe (batch 4096) uses ``base_momentum=0.996``, ``lr=0.2``,
    ``weight_decay=1.5e-6`` and ``lars_eta=1e-3``. solo-learn's LARS also caps the adapted
    rate at ``lr`` (its ``clip_lr``): ``lars_clip=True``, which the config sets. A layer's
    step is then ``min(trust, lr_t) * g`` instead of ``lr_t * trust * g`` (``trust = eta *
    ||w|| / ||g||``): the two agree at the peak rate 1.0 (batch 256) wherever the trust
    ratio is at most 1, and below it, in the warmup and the decay, the capped step is the
    larger, by ``1 / lr_t`` while ``trust <= lr_t``.

    The default views are BYOL's pair without blur, for 32-pixel images
    (:func:`~ssl_lightning.corruptions.recipes.small_image_byol_views`, solo-learn's
    CIFAR views); ``data.corruption=BYOLViews`` gives BYOL's views for large images.

    Args:
        backbone: registered backbone name or module (see :class:`SSLMethod`).
        backbone_kwargs: arguments for the registered backbone.
        proj_hidden_dim: hidden width of the projector.
        proj_output_dim: output width of the projector and the predictor.
        pred_hidden_dim: hidden width of the predictor.
        base_momentum: EMA momentum of the target at the start of the run, in ``[0, 1]``.
        final_momentum: EMA momentum at the end of the run, in ``[0, 1]``.
        **kwargs: optimizer and schedule arguments of :class:`SSLMethod`.

    Examples:
        >>> model = BYOL(backbone="resnet18", base_momentum=0.996)
    """

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        backbone_kwargs: dict[str, Any] | None = None,
        proj_hidden_dim: int = 4096,
        proj_output_dim: int = 256,
        pred_hidden_dim: int = 4096,
        base_momentum: float = 0.99,
        final_momentum: float = 1.0,
        optimizer: OptimizerName = "lars",
        lr: float = 1.0,
        weight_decay: float = 1e-5,
        lars_eta: float = 0.02,
        warmup_epochs: float = 10.0,
        scale_lr: LRScaling = True,
        **kwargs: Any,
    ) -> None:
        require_unit_interval(base_momentum=base_momentum, final_momentum=final_momentum)
        require_at_least(
            1,
            proj_hidden_dim=proj_hidden_dim,
            proj_output_dim=proj_output_dim,
            pred_hidden_dim=pred_hidden_dim,
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
        self.base_momentum, self.final_momentum = base_momentum, final_momentum
        self.projector = ProjectionHead(self.num_features, proj_hidden_dim, proj_output_dim)
        self.predictor = ProjectionHead(proj_output_dim, pred_hidden_dim, proj_output_dim)
        # The target starts as the online network (the paper's initialization).
        self.teacher_backbone = ema_copy(self.backbone)
        self.teacher_projector = ema_copy(self.projector)

    def default_corruption(self) -> Corruption:
        return small_image_byol_views()

    def pretext_step(self, batch: Batch) -> PretextOutput:
        check_views(batch, "BYOL", "BYOLViews")
        features = self.embed_views(batch.views)  # [2B, D]
        p1, p2 = self.predictor(self.projector(features)).chunk(2)  # [B, P] each
        with torch.no_grad():
            target = self.embed_views(batch.views, self.teacher_backbone)  # [2B, D]
            z1, z2 = self.teacher_projector(target).chunk(2)  # [B, P] each
        loss = byol_loss(p1, p2, z1, z2)
        momentum = torch.tensor(self._ema_momentum(), device=loss.device)
        return PretextOutput(
            loss=loss,
            features=features,
            labels=batch.labels.repeat(2),
            metrics={"ema_momentum": momentum},
        )

    def after_optimizer_step(self) -> None:
        momentum = self._ema_momentum()
        ema_update_(self.teacher_backbone, self.backbone, momentum)
        ema_update_(self.teacher_projector, self.projector, momentum)

    def _ema_momentum(self) -> float:
        return cosine_momentum(self.progress, self.base_momentum, self.final_momentum)
