"""SimCLR: contrastive learning of augmented views."""

from __future__ import annotations

from typing import Any

from torch import nn

from ssl_lightning.corruptions import Corruption, SimCLRViews
from ssl_lightning.corruptions.batch import Batch
from ssl_lightning.corruptions.recipes import simclr_multicrop_views
from ssl_lightning.heads import ProjectionHead
from ssl_lightning.losses import nt_xent
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


class SimCLR(SSLMethod):
    """SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
    Representations", https://arxiv.org/abs/2002.05709).

    Loss: NT-Xent over the projections of ``V >= 2`` augmented views of each image, with the
    other views as positives and every other embedding, from all ranks, as negatives. With
    multi-crop views (``num_local_views`` > 0, or ``data.corruption=MultiCropViews``) the
    local crops are positives of every other view too; callbacks get the global views'
    features only, as evaluation sees full images.

    The defaults are the standard CIFAR recipe (LARS, lr 0.4 x batch / 256, weight decay
    1e-5, temperature 0.2), written for hundreds of epochs. On a budget of a few epochs,
    ``recipe="budget"`` (AdamW, lr 5e-3 x batch / 256, weight decay 1e-4, warmup 10 % of the
    run) learns faster: +4.2 points at 495 steps (README, Results), with temperature 0.1
    (it replaces ``temperature``) 0.8 and 2.0 more in two seeds, and with 4 local crops
    (it replaces ``num_local_views``) more again, in the same steps and in the same time
    (benchmarks/README.md, "Short budgets").

    Args:
        backbone: registered backbone name or module (see :class:`SSLMethod`).
        backbone_kwargs: arguments for the registered backbone.
        proj_hidden_dim: hidden width of the projection head.
        proj_output_dim: output width of the projection head (the contrastive space).
        proj_num_layers: Linear layers in the projection head.
        temperature: NT-Xent temperature, > 0.
        num_global_views: full-size views per image, at least 2 (SimCLR's 2). Each more is
            one more positive for every view, and the compute of one more full-size image.
        num_local_views: small crops per image beside the global views
            (:func:`~ssl_lightning.corruptions.recipes.simclr_multicrop_views`), for the
            default corruption; 0 keeps the full-size views only
            (:class:`~ssl_lightning.corruptions.SimCLRViews`).
        gather_distributed: draw negatives from every rank under DDP.
        **kwargs: optimizer and schedule arguments of :class:`SSLMethod`.

    Examples:
        >>> model = SimCLR(backbone="resnet18", temperature=0.2)
    """

    budget_recipe = {
        "optimizer": "adamw",
        "lr": 5e-3,
        "weight_decay": 1e-4,
        "temperature": 0.1,
        "num_local_views": 4,
    }

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        backbone_kwargs: dict[str, Any] | None = None,
        proj_hidden_dim: int = 2048,
        proj_output_dim: int = 128,
        proj_num_layers: int = 2,
        temperature: float = 0.2,
        num_global_views: int = 2,
        num_local_views: int = 0,
        gather_distributed: bool = True,
        optimizer: OptimizerName = "lars",
        lr: float = 0.4,
        weight_decay: float = 1e-5,
        warmup_epochs: float = 10.0,
        scale_lr: LRScaling = True,
        **kwargs: Any,
    ) -> None:
        require_positive(temperature=temperature)
        require_at_least(2, num_global_views=num_global_views)
        require_at_least(0, num_local_views=num_local_views)
        super().__init__(
            backbone=backbone,
            backbone_kwargs=backbone_kwargs,
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            warmup_epochs=warmup_epochs,
            scale_lr=scale_lr,
            **kwargs,
        )
        self.temperature = self.recipe_arg("temperature", temperature)
        self.num_global_views = num_global_views
        self.num_local_views = self.recipe_arg("num_local_views", num_local_views)
        self.gather_distributed = gather_distributed
        self.projector = ProjectionHead(
            self.num_features, proj_hidden_dim, proj_output_dim, proj_num_layers
        )

    def default_corruption(self) -> Corruption:
        if self.num_local_views:
            return simclr_multicrop_views(self.num_local_views, num_global=self.num_global_views)
        return SimCLRViews(num_views=self.num_global_views)

    def pretext_step(self, batch: Batch) -> PretextOutput:
        check_views(batch, "SimCLR", "SimCLRViews", exact=False)
        num_views, batch_size = len(batch.views), batch.views[0].shape[0]
        check_batch_size(batch, "SimCLR", "the others are its negatives", self.gather_distributed)
        features = self.embed_views(batch.views)  # [V*B, D]
        z = self.projector(features).view(num_views, batch_size, -1)  # [V, B, P]
        loss = nt_xent(z, self.temperature, self.gather_distributed)
        num_global = num_global_views(batch.views)
        return PretextOutput(
            loss=loss,
            features=features[: num_global * batch_size],
            labels=batch.labels.repeat(num_global),
        )
