"""Barlow Twins: the cross-correlation of two views' embeddings pushed to the identity."""

from __future__ import annotations

from typing import Any

from torch import nn

from ssl_lightning.corruptions import Corruption
from ssl_lightning.corruptions.batch import Batch
from ssl_lightning.corruptions.recipes import small_image_byol_views
from ssl_lightning.heads import ProjectionHead
from ssl_lightning.losses import barlow_twins_loss
from ssl_lightning.methods.base import SSLMethod
from ssl_lightning.methods.checks import (
    check_batch_size,
    check_views,
    require_at_least,
    require_positive,
)
from ssl_lightning.methods.outputs import PretextOutput
from ssl_lightning.methods.schedule import LRScaling
from ssl_lightning.optim import OptimizerName


class BarlowTwins(SSLMethod):
    """Barlow Twins (Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via
    Redundancy Reduction", https://arxiv.org/abs/2103.03230).

    Two views of each image go through the backbone and a 3-layer projector; each projected
    dimension is standardized over the global batch (all ranks) and, with ``C = z1_n^T z2_n /
    N`` the ``[P, P]`` cross-correlation of the two views::

        loss = scale_loss * (sum_i (1 - C_ii)^2 + lambda_offdiag * sum_{i != j} C_ij^2)

    The first term makes each dimension invariant to the augmentation, the second
    decorrelates the dimensions. Logged terms: ``train/on_diag`` and ``train/off_diag``
    (weighted by ``lambda_offdiag``, before ``scale_loss``).

    CIFAR defaults from solo-learn's CIFAR Barlow Twins config
    (``scripts/pretrain/cifar/barlow.yaml``): projector 2048-2048-2048, ``lambda_offdiag``
    0.0051 (the paper's), ``scale_loss`` 0.1, LARS with trust coefficient 0.02, lr 0.3 per
    256 images, weight decay 1e-4, 10 warmup epochs. ``scale_loss`` is kept because the lr
    and weight decay were tuned with it (it sets the gradient against the weight decay and
    the unadapted biases' steps); ``scale_loss=1`` gives the paper's loss. solo-learn's LARS
    also caps the adapted rate at ``lr`` (``clip_lr``): ``lars_clip=True``, which the config
    sets (off by default, as for :class:`VICReg`).

    The default views are BYOL's pair without blur, for 32-pixel images
    (:func:`~ssl_lightning.corruptions.recipes.small_image_byol_views`, solo-learn's
    CIFAR views); ``data.corruption=BYOLViews`` gives BYOL's views for large images.

    Args:
        backbone: registered backbone name or module (see :class:`SSLMethod`).
        backbone_kwargs: arguments for the registered backbone.
        proj_hidden_dim: hidden width of the projector.
        proj_output_dim: output width ``P`` of the projector (``C`` is ``P x P``).
        proj_num_layers: Linear layers in the projector.
        lambda_offdiag: weight of the redundancy-reduction term, >= 0.
        scale_loss: factor on the whole loss, > 0.
        gather_distributed: batch statistics over every rank under DDP.
        **kwargs: optimizer and schedule arguments of :class:`SSLMethod`.

    Examples:
        >>> model = BarlowTwins(backbone="resnet18", lambda_offdiag=0.0051)
    """

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        backbone_kwargs: dict[str, Any] | None = None,
        proj_hidden_dim: int = 2048,
        proj_output_dim: int = 2048,
        proj_num_layers: int = 3,
        lambda_offdiag: float = 0.0051,
        scale_loss: float = 0.1,
        gather_distributed: bool = True,
        optimizer: OptimizerName = "lars",
        lr: float = 0.3,
        weight_decay: float = 1e-4,
        lars_eta: float = 0.02,
        warmup_epochs: float = 10.0,
        scale_lr: LRScaling = True,
        **kwargs: Any,
    ) -> None:
        require_at_least(0, lambda_offdiag=lambda_offdiag)
        require_positive(scale_loss=scale_loss)
        require_at_least(1, proj_num_layers=proj_num_layers)
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
        self.lambda_offdiag, self.scale_loss = lambda_offdiag, scale_loss
        self.gather_distributed = gather_distributed
        self.projector = ProjectionHead(
            self.num_features, proj_hidden_dim, proj_output_dim, proj_num_layers
        )

    def default_corruption(self) -> Corruption:
        return small_image_byol_views()

    def pretext_step(self, batch: Batch) -> PretextOutput:
        check_views(batch, "BarlowTwins", "BYOLViews")
        check_batch_size(
            batch, "BarlowTwins", "it standardizes over the batch", self.gather_distributed
        )
        features = self.embed_views(batch.views)  # [2B, D]
        # One projector call per view, as in the paper: its BatchNorm sees each view alone.
        z1, z2 = (self.projector(f) for f in features.chunk(2))  # [B, P] each
        loss, terms = barlow_twins_loss(z1, z2, self.lambda_offdiag, self.gather_distributed)
        return PretextOutput(
            loss=self.scale_loss * loss,
            features=features,
            labels=batch.labels.repeat(2),
            metrics=terms,
        )
