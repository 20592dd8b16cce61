"""EMP-SSL: many fixed-size patches of each image, each patch's coding rate maximized and every
patch pulled towards the mean of its image's patches."""

from __future__ import annotations

from typing import Any

from torch import nn

from ssl_lightning.corruptions import Corruption
from ssl_lightning.corruptions.batch import Batch
from ssl_lightning.corruptions.recipes import emp_ssl_views
from ssl_lightning.heads import ProjectionHead
from ssl_lightning.losses.coding_rate import emp_ssl_loss
from ssl_lightning.methods.base import SSLMethod
from ssl_lightning.methods.checks import check_views, require_at_least, require_positive
from ssl_lightning.methods.outputs import PretextOutput
from ssl_lightning.methods.schedule import LRScaling
from ssl_lightning.optim import OptimizerName


class EMPSSL(SSLMethod):
    """EMP-SSL (Tong, Chen, Ma & LeCun 2023, "EMP-SSL: Towards Self-Supervised Learning in One
    Training Epoch", https://arxiv.org/abs/2304.03977).

    Every image gives ``V = num_views`` patches (20 by default; the paper uses 20 to 200), all
    embedded in one backbone pass and projected and l2-normalized to ``z_v``; with ``R`` the total
    coding rate (:func:`~ssl_lightning.losses.coding_rate.total_coding_rate`, over the global
    batch)::

        loss = -mean_v R(Z_v) - lambda * mean_v mean_b cos(z_vb, mean_u z_ub)

    Many views per image make each optimizer step see much more of the data: the paper
    reaches 90.7 % kNN on CIFAR-10 in 10 epochs. The cost is ``V`` backbone passes per image:
    ``views_per_pass`` bounds the memory when ``V x batch`` images do not fit one pass.
    Logged: ``coding_rate`` and ``similarity``. Callbacks get the backbone features of all
    ``V`` views.

    The defaults are the paper's CIFAR code: a 3-layer projector 4096-4096-1024 (BatchNorm,
    ReLU), ``eps`` 0.2, ``lambda`` 200, LARS (eta 0.005) on SGD with momentum 0.9, lr 0.3 at
    batch 100 (not scaled by the batch), weight decay 1e-4, cosine decay with no warmup (the
    paper's SGD is Nesterov; ours is plain momentum). The code's LARS also caps the adapted
    rate at ``lr`` (``clip=True``: a layer's step is ``min(eta ||w|| / ||g||, lr_t) * g``),
    and so does the default, ``lars_clip=True``, unlike the other LARS methods: uncapped, the
    step is ``lr_t`` times the capped one wherever the trust ratio is below ``lr_t``, and
    EMP-SSL then learns slower (3 points at 500 steps, ``benchmarks/README.md``).

    Args:
        backbone: registered backbone name or module (see :class:`SSLMethod`).
        backbone_kwargs: arguments for the registered backbone.
        proj_hidden_dim: hidden width of the projector.
        proj_output_dim: output width of the projector (the coding rate's ``D``).
        proj_num_layers: Linear layers of the projector.
        num_views: patches per image, ``V >= 2``. The method owns it: a configured
            ``data.corruption`` with another ``num_views`` is an error naming both keys.
        tcr_eps: the coding rate's distortion ``eps``.
        invariance_weight: ``lambda``, the weight of the similarity to the mean patch.
        **kwargs: optimizer and schedule arguments of :class:`SSLMethod`.

    Examples:
        >>> model = EMPSSL(backbone="resnet18", invariance_weight=200.0)
    """

    pretext_settings = {"num_views": "model.num_views"}

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        backbone_kwargs: dict[str, Any] | None = None,
        proj_hidden_dim: int = 4096,
        proj_output_dim: int = 1024,
        proj_num_layers: int = 3,
        num_views: int = 20,
        tcr_eps: float = 0.2,
        invariance_weight: float = 200.0,
        optimizer: OptimizerName = "lars",
        lr: float = 0.3,
        weight_decay: float = 1e-4,
        lars_eta: float = 0.005,
        lars_clip: bool = True,
        scale_lr: LRScaling = False,
        **kwargs: Any,
    ) -> None:
        require_at_least(
            1,
            proj_hidden_dim=proj_hidden_dim,
            proj_output_dim=proj_output_dim,
            proj_num_layers=proj_num_layers,
        )
        require_at_least(2, num_views=num_views)
        require_positive(tcr_eps=tcr_eps)
        require_at_least(0, invariance_weight=invariance_weight)
        super().__init__(
            backbone=backbone,
            backbone_kwargs=backbone_kwargs,
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            lars_eta=lars_eta,
            lars_clip=lars_clip,
            scale_lr=scale_lr,
            **kwargs,
        )
        self.num_views = num_views
        self.tcr_eps, self.invariance_weight = tcr_eps, invariance_weight
        self.projector = ProjectionHead(
            self.num_features, proj_hidden_dim, proj_output_dim, proj_num_layers
        )

    def default_corruption(self) -> Corruption:
        return emp_ssl_views(self.num_views)

    def pretext_step(self, batch: Batch) -> PretextOutput:
        check_views(batch, "EMPSSL", "SimCLRViews", exact=False)
        num_views, batch_size = len(batch.views), batch.views[0].shape[0]
        features = self.embed_views(batch.views)  # [V*B, D]
        z = self.projector(features).view(num_views, batch_size, -1)  # [V, B, P]
        loss, terms = emp_ssl_loss(z, self.tcr_eps, self.invariance_weight)
        return PretextOutput(
            loss=loss,
            features=features,
            labels=batch.labels.repeat(num_views),
            metrics=terms,
        )
