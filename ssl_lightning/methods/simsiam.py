"""SimSiam: each view's prediction matches the other view's projection, under stop-gradient."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import nn

from ssl_lightning.corruptions import Corruption, SimCLRViews
from ssl_lightning.corruptions.batch import Batch
from ssl_lightning.heads import ProjectionHead
from ssl_lightning.losses.similarity import simsiam_loss
from ssl_lightning.methods.base import SSLMethod
from ssl_lightning.methods.checks import check_views, require_at_least
from ssl_lightning.methods.outputs import PretextOutput
from ssl_lightning.methods.schedule import LRScaling
from ssl_lightning.optim import OptimizerName, param_groups


class SimSiam(SSLMethod):
    """SimSiam (Chen & He 2021, "Exploring Simple Siamese Representation Learning",
    https://arxiv.org/abs/2011.10566).

    One network, no momentum encoder and no negatives: the projector gives ``z_v`` for view
    ``v``, the predictor ``p_v = predictor(z_v)``, and with
    ``D(p, z) = -mean_b cos(p_b, sg(z_b))`` the loss, the two terms averaged as in the paper
    (so in ``[-1, 1]``), is::

        loss = D(p_1, z_2) / 2 + D(p_2, z_1) / 2

    The projector ends in a non-affine BatchNorm (``last_batch_norm``); the predictor is a
    bottleneck (``proj_output_dim -> pred_hidden_dim -> proj_output_dim``) with no norm on its
    output. Logged: ``z_std``, the per-channel standard deviation of the l2-normalized
    projections of both views, averaged over channels: the paper's collapse monitor (0 when
    collapsed, about ``1 / sqrt(proj_output_dim)`` when not; Figure 2).

    The CIFAR defaults are the paper's CIFAR recipe (Appendix D): a 2-layer projector with
    2048 -> 2048, a 512-wide predictor, SGD with momentum 0.9, lr 0.03 x batch / 256
    (batch 512), weight decay 5e-4, cosine decay, SimCLR-like views, and a fixed (not decayed)
    learning rate for the predictor, which the paper finds better (section 4.4,
    ``fixed_pred_lr``). ``recipe="budget"`` (a 16x rate, 0.5 x batch / 256, and a warmup of
    10 % of the run) learns faster on runs of a few epochs: +6.3 points at 577 steps.

    Args:
        backbone: registered backbone name or module (see :class:`SSLMethod`).
        backbone_kwargs: arguments for the registered backbone.
        proj_hidden_dim: hidden width of the projector.
        proj_output_dim: output width of the projector and the predictor.
        proj_num_layers: Linear layers of the projector (2 on CIFAR, 3 on ImageNet).
        pred_hidden_dim: hidden (bottleneck) width of the predictor.
        fixed_pred_lr: keep the predictor's learning rate at its initial value.
        **kwargs: optimizer and schedule arguments of :class:`SSLMethod` (``momentum`` 0.9).

    Examples:
        >>> model = SimSiam(backbone="resnet18", pred_hidden_dim=512)
    """

    budget_recipe = {"lr": 0.5}

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        backbone_kwargs: dict[str, Any] | None = None,
        proj_hidden_dim: int = 2048,
        proj_output_dim: int = 2048,
        proj_num_layers: int = 2,
        pred_hidden_dim: int = 512,
        fixed_pred_lr: bool = True,
        optimizer: OptimizerName = "sgd",
        lr: float = 0.03,
        weight_decay: float = 5e-4,
        scale_lr: LRScaling = True,
        **kwargs: Any,
    ) -> None:
        require_at_least(
            1,
            proj_hidden_dim=proj_hidden_dim,
            proj_output_dim=proj_output_dim,
            proj_num_layers=proj_num_layers,
            pred_hidden_dim=pred_hidden_dim,
        )
        super().__init__(
            backbone=backbone,
            backbone_kwargs=backbone_kwargs,
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            scale_lr=scale_lr,
            **kwargs,
        )
        self.projector = ProjectionHead(
            self.num_features,
            proj_hidden_dim,
            proj_output_dim,
            proj_num_layers,
            last_batch_norm=True,
        )
        self.predictor = ProjectionHead(proj_output_dim, pred_hidden_dim, proj_output_dim)
        self.fixed_pred_lr = fixed_pred_lr

    def default_corruption(self) -> Corruption:
        return SimCLRViews(num_views=2)

    def configure_param_groups(self) -> list[dict[str, Any]]:
        if not self.fixed_pred_lr:
            return super().configure_param_groups()
        predictor = {id(p) for p in self.predictor.parameters()}
        rest = [p for p in self.parameters() if id(p) not in predictor]
        fixed = param_groups(self.predictor, self.weight_decay)
        return param_groups(rest, self.weight_decay) + [{**g, "fixed_lr": True} for g in fixed]

    def pretext_step(self, batch: Batch) -> PretextOutput:
        check_views(batch, "SimSiam", "SimCLRViews")
        features = self.embed_views(batch.views)  # [2B, D]
        z = self.projector(features)  # [2B, P]
        p1, p2 = self.predictor(z).chunk(2)  # [B, P] each
        z1, z2 = z.chunk(2)
        loss = simsiam_loss(p1, p2, z1, z2)
        z_std = F.normalize(z.detach().float(), dim=1).std(dim=0).mean()
        return PretextOutput(
            loss=loss,
            features=features,
            labels=batch.labels.repeat(2),
            metrics={"z_std": z_std},
        )
