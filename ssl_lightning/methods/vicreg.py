"""VICReg: invariance between two views, with variance and covariance regularizers."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ssl_lightning.corruptions import BYOLViews, Corruption, ViewTransform
from ssl_lightning.corruptions.batch import Batch
from ssl_lightning.corruptions.recipes import small_image_multicrop_views
from ssl_lightning.heads import ProjectionHead
from ssl_lightning.losses import multiview_vicreg_loss
from ssl_lightning.methods.base import SSLMethod
from ssl_lightning.methods.checks import (
    check_batch_size,
    check_views,
    require_at_least,
    require_positive,
)
from ssl_lightning.methods.outputs import PretextOutput
from ssl_lightning.methods.passes import num_global_views
from ssl_lightning.methods.schedule import LRScaling
from ssl_lightning.optim import OptimizerName


class VICReg(SSLMethod):
    """VICReg (Bardes, Ponce & LeCun 2022, "VICReg: Variance-Invariance-Covariance
    Regularization for Self-Supervised Learning", https://arxiv.org/abs/2105.04906).

    Two views of each image go through the backbone and a 3-layer projector to ``z1, z2``
    ``[B, P]``; with ``Var`` and ``Cov`` over the global batch (all ranks)::

        loss = lambda * MSE(z1, z2) + mu * [v(z1) + v(z2)] + nu * [c(z1) + c(z2)]
        v(z) = mean_j relu(gamma - sqrt(Var(z_j) + eps))
        c(z) = sum_{i != j} Cov(z)_ij^2 / P

    with ``lambda, mu, nu`` = ``invariance_weight, variance_weight, covariance_weight``.
    Logged terms (weighted, they sum to the loss): ``train/invariance``, ``train/variance``,
    ``train/covariance``. With more views (``num_local_views`` > 0, or
    ``data.corruption=MultiCropViews``) the loss is the mean over every pair of views
    (:func:`~ssl_lightning.losses.multiview_vicreg_loss`); callbacks get the global views'
    features only. On CIFAR-10 local views did not help VICReg on a short run (within seed
    noise after 499 steps, each step 2.1x as long: benchmarks/README.md, "Short budgets"),
    so the budget recipe leaves them off.

    Loss weights, ``gamma`` and ``eps`` are the paper's. CIFAR defaults from solo-learn's
    CIFAR VICReg config (``scripts/pretrain/cifar/vicreg.yaml``): projector 2048-2048-2048,
    LARS with trust coefficient 0.02, lr 0.3 per 256 images, weight decay 1e-4, 10 warmup
    epochs. solo-learn's LARS also caps the adapted rate at ``lr`` (``clip_lr``):
    ``lars_clip=True``, which ``configs/vicreg_cifar10.yaml`` sets; the default leaves it off,
    as on a short run it learns slower (59.0 % against 62.0 % frozen linear after 499 CPU
    steps, ``benchmarks/README.md``).

    The default views are solo-learn's CIFAR views for VICReg: two alike, crops of 20-100% of
    the image, no blur, solarization p 0.1; ``data.corruption=BYOLViews`` gives BYOL's views
    for large images.

    Args:
        backbone: registered backbone name or module (see :class:`SSLMethod`).
        backbone_kwargs: arguments for the registered backbone.
        proj_hidden_dim: hidden width of the projector.
        proj_output_dim: output width ``P`` of the projector.
        proj_num_layers: Linear layers in the projector.
        invariance_weight: ``lambda``, weight of the mean squared error, >= 0.
        variance_weight: ``mu``, weight of the variance hinge, >= 0.
        covariance_weight: ``nu``, weight of the covariance penalty, >= 0.
        gamma: target standard deviation of each dimension, > 0.
        eps: added to the variance before the square root, > 0.
        num_local_views: small crops per image beside the two global views
            (:func:`~ssl_lightning.corruptions.recipes.small_image_multicrop_views` of the
            default view), for the default corruption; 0 keeps two views.
        gather_distributed: variance and covariance over every rank under DDP.
        **kwargs: optimizer and schedule arguments of :class:`SSLMethod`.

    Examples:
        >>> model = VICReg(backbone="resnet18", invariance_weight=25.0, variance_weight=25.0)
    """

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        backbone_kwargs: dict[str, Any] | None = None,
        proj_hidden_dim: int = 2048,
        proj_output_dim: int = 2048,
        proj_num_layers: int = 3,
        invariance_weight: float = 25.0,
        variance_weight: float = 25.0,
        covariance_weight: float = 1.0,
        gamma: float = 1.0,
        eps: float = 1e-4,
        num_local_views: int = 0,
        gather_distributed: bool = True,
        optimizer: OptimizerName = "lars",
        lr: float = 0.3,
        weight_decay: float = 1e-4,
        lars_eta: float = 0.02,
        warmup_epochs: float = 10.0,
        scale_lr: LRScaling = True,
        **kwargs: Any,
    ) -> None:
        weights = {
            "invariance_weight": invariance_weight,
            "variance_weight": variance_weight,
            "covariance_weight": covariance_weight,
        }
        for name, value in weights.items():
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value} (set model.{name})")
        if not any(weights.values()):
            raise ValueError(
                "invariance_weight, variance_weight and covariance_weight are all 0: nothing "
                "to train (set model.invariance_weight > 0)"
            )
        require_positive(gamma=gamma, eps=eps)
        require_at_least(1, proj_num_layers=proj_num_layers)
        require_at_least(0, num_local_views=num_local_views)
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
        self.invariance_weight, self.variance_weight = invariance_weight, variance_weight
        self.covariance_weight, self.gamma, self.eps = covariance_weight, gamma, eps
        self.num_local_views = num_local_views
        self.gather_distributed = gather_distributed
        self.projector = ProjectionHead(
            self.num_features, proj_hidden_dim, proj_output_dim, proj_num_layers
        )

    def default_corruption(self) -> Corruption:
        # solo-learn's CIFAR views for VICReg: two alike, crops of 20-100% of the image, no
        # blur at 32 pixels, solarization p 0.1.
        view = ViewTransform(crop_scale=(0.2, 1.0), blur_p=0.0, solarize_p=0.1)
        if self.num_local_views:
            return small_image_multicrop_views(view, self.num_local_views)
        return BYOLViews(view1=view, view2=view)

    def pretext_step(self, batch: Batch) -> PretextOutput:
        check_views(batch, "VICReg", "BYOLViews", exact=False)
        check_batch_size(
            batch, "VICReg", "it takes variances over the batch", self.gather_distributed
        )
        num_views, batch_size = len(batch.views), batch.views[0].shape[0]
        features = self.embed_views(batch.views)  # [V*B, D]
        # One projector call per view, as in the paper: its BatchNorm sees each view alone.
        z = torch.stack([self.projector(f) for f in features.chunk(num_views)])  # [V, B, P]
        loss, terms = multiview_vicreg_loss(
            z,
            self.invariance_weight,
            self.variance_weight,
            self.covariance_weight,
            self.gamma,
            self.eps,
            self.gather_distributed,
        )
        num_global = num_global_views(batch.views)
        return PretextOutput(
            loss=loss,
            features=features[: num_global * batch_size],
            labels=batch.labels.repeat(num_global),
            metrics=terms,
        )
