"""Offline linear evaluation: a linear classifier on a frozen (or fine-tuned) backbone."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from ssl_lightning.backbones import create_backbone
from ssl_lightning.backbones.registry import num_features_of
from ssl_lightning.backbones.weights import read_weights
from ssl_lightning.corruptions import Corruption, SimCLRViews, ViewTransform
from ssl_lightning.corruptions.batch import Batch
from ssl_lightning.export import BackboneCheckpoint
from ssl_lightning.labels import LabelRange, datamodule_num_classes, has_top5
from ssl_lightning.methods.schedule import scaled_lr, schedule_length
from ssl_lightning.optim import build_optimizer, layer_decay_groups, warmup_cosine_schedule

__all__ = ["LinearEvaluation"]


class LinearEvaluation(L.LightningModule):
    """The linear evaluation protocol: train a linear classifier on frozen backbone features.

    The backbone comes from exactly one of: an SSL checkpoint (``backbone_checkpoint``, the
    ``.ckpt`` of any :class:`SSLMethod`, rebuilt from its ``backbone``/``backbone_kwargs``
    hyper-parameters), an exported weights file (``backbone_weights``, see
    ``ssl-lightning export``), or a registered name (``backbone``) for a randomly initialized
    baseline. The frozen backbone stays in eval mode (BatchNorm keeps its pretraining
    statistics) whatever Lightning calls ``train()`` on, and gets no gradient.

    Its checkpoints are self-contained: they record the backbone's registered name and
    arguments with its weights, so they load (and ``ssl-lightning export`` writes a fine-tuned
    backbone) without the file the backbone came from. ``validate`` and ``test`` log
    ``{val,test}/loss``, ``/acc_top1`` and ``/acc_top5`` (more than 5 classes).

    The head is ``BatchNorm1d(affine=False) -> Linear`` when ``batch_norm`` (as MAE's linear
    probe, He et al. 2021, arXiv:2111.06377: at test time the normalization is a fixed affine
    map, so the classifier is still linear, and one learning rate suits every backbone's
    feature scale), else a plain ``Linear``. Defaults follow the common recipe: SGD with
    momentum 0.9, lr 0.1 per 256 images, cosine decay per step, no weight decay, random
    resized crop and flip (:meth:`default_corruption`).

    Args:
        backbone_checkpoint: path of an SSL method's Lightning checkpoint.
        backbone_weights: path of a weights file written by ``ssl-lightning export``.
        backbone: registered backbone name for a randomly initialized baseline.
        backbone_kwargs: keyword arguments for ``backbone``.
        num_classes: number of classes; ``None`` takes the datamodule's ``num_classes``.
        fine_tune: train the backbone too (with ``lr * backbone_lr_factor``), BatchNorm in
            train mode.
        backbone_lr_factor: learning-rate factor of the backbone when ``fine_tune``.
        layer_decay: with ``fine_tune``, a layer-wise learning-rate decay (0.65-0.75 in BEiT
            and MAE): each layer's factor shrinks by it per layer from the top
            (:func:`~ssl_lightning.optim.layer_decay_groups`); biases and norms get no decay.
        batch_norm: put a non-affine BatchNorm on the features before the linear layer.
        optimizer: ``"sgd"`` (with ``momentum``) or ``"adamw"``.
        lr: base learning rate (per 256 images when ``scale_lr``).
        momentum: SGD momentum.
        weight_decay: weight decay (0 in the standard protocol).
        scale_lr: multiply ``lr`` by global batch size / 256.

    Examples:
        >>> model = LinearEvaluation(backbone_checkpoint="simclr.ckpt")  # doctest: +SKIP
        >>> baseline = LinearEvaluation(backbone="resnet18", backbone_kwargs={"width": 16})
    """

    export_module: ClassVar[str] = "backbone"  # what ssl-lightning export writes

    def __init__(
        self,
        backbone_checkpoint: str | None = None,
        backbone_weights: str | None = None,
        backbone: str | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        num_classes: int | None = None,
        fine_tune: bool = False,
        backbone_lr_factor: float = 0.1,
        layer_decay: float | None = None,
        batch_norm: bool = True,
        optimizer: Literal["sgd", "adamw"] = "sgd",
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        scale_lr: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        sources = {
            "backbone_checkpoint": backbone_checkpoint,
            "backbone_weights": backbone_weights,
            "backbone": backbone,
        }
        given = [k for k, v in sources.items() if v is not None]
        if len(given) != 1:
            raise ValueError(
                f"LinearEvaluation needs exactly one backbone source, got {given or 'none'}: set "
                "model.backbone_checkpoint (an SSL .ckpt), model.backbone_weights (an exported "
                ".pt) or model.backbone (a registered name, random init)"
            )
        if backbone_kwargs and backbone is None:
            raise ValueError(
                "backbone_kwargs only apply with model.backbone; a checkpoint or weights file "
                "records its own"
            )
        if optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}")
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr} (set model.lr)")
        model: nn.Module
        if backbone_checkpoint is not None:
            source = BackboneCheckpoint.read(backbone_checkpoint)
            model, spec = source.build(), (source.name, source.kwargs)
        elif backbone_weights is not None:
            content = read_weights(backbone_weights)
            model = create_backbone(content["name"], weights=backbone_weights)
            spec = (content["name"], content["kwargs"])
        else:
            assert backbone is not None
            model = create_backbone(backbone, **(backbone_kwargs or {}))
            spec = (backbone, dict(backbone_kwargs or {}))
        # Recorded in every checkpoint (on_save_checkpoint) in place of the source file.
        self.backbone_spec: tuple[str, dict[str, Any]] = spec
        self.num_features = num_features_of(model)
        self.backbone = model
        self.fine_tune = fine_tune
        self.backbone_lr_factor, self.layer_decay = backbone_lr_factor, layer_decay
        self.batch_norm = batch_norm
        self.optimizer_name = optimizer
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.scale_lr = scale_lr
        self.backbone.requires_grad_(fine_tune)
        if not fine_tune:
            # Lightning keeps each submodule's mode as it finds it, so freeze it here too.
            self.backbone.eval()
        self.num_classes: int | None = None
        self.head: nn.Module | None = None
        self._labels = LabelRange("LinearEvaluation", "set model.num_classes")
        if num_classes is not None:
            self._build_head(num_classes)

    def default_corruption(self) -> Corruption:
        """Light augmentation for the classifier: random resized crop and flip, no color ops."""
        return SimCLRViews(num_views=1, view=ViewTransform(jitter_p=0.0, grayscale_p=0.0))

    def check_corruption(self, corruption: Corruption) -> None:
        """Accepts any configured corruption: the classifier trains on its first view."""

    def preview(self, batch: Batch) -> dict[str, Tensor]:
        """The batch's views: what the classifier trains on."""
        return batch.image_rows()

    def setup(self, stage: str) -> None:
        if self.head is None:
            fix = "set model.num_classes or use a labeled datamodule"
            num_classes = datamodule_num_classes(self.trainer, "LinearEvaluation", fix)
            self._build_head(num_classes)
            # Saved with the checkpoint, so load_from_checkpoint builds the head up front.
            self.hparams["num_classes"] = num_classes

    def _build_head(self, num_classes: int) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes} (set model.num_classes)")
        self.num_classes = num_classes
        linear = nn.Linear(self.num_features, num_classes)
        nn.init.zeros_(linear.bias)
        nn.init.normal_(linear.weight, std=0.01)
        norm = nn.BatchNorm1d(self.num_features, affine=False) if self.batch_norm else None
        self.head = linear if norm is None else nn.Sequential(norm, linear)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", ignore_index=-1)
        self.val_acc = _accuracies(num_classes)
        self.test_acc = _accuracies(num_classes)

    def train(self, mode: bool = True) -> LinearEvaluation:
        super().train(mode)
        if not self.fine_tune:
            self.backbone.eval()  # frozen: BatchNorm keeps its pretraining statistics
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Class logits: ``[B, 3, H, W] -> [B, num_classes]``."""
        if self.head is None:
            raise RuntimeError("the head is built in setup(); pass model.num_classes to build it")
        if self.fine_tune:
            features = self.backbone(x)  # [B, D]
        else:
            with torch.no_grad():
                features = self.backbone(x)  # [B, D]
        return self.head(features)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        labels = self._check_labels(batch.labels)
        logits = self(batch.views[0])  # [B, C]
        loss = _mean_cross_entropy(logits, labels)
        self.train_acc(logits, labels)
        batch_size = labels.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log("train/acc", self.train_acc, on_step=True, on_epoch=True, batch_size=batch_size)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_acc)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_acc)

    def _evaluate(self, batch: Batch, stage: str, accuracies: nn.ModuleDict) -> None:
        """Logs ``{stage}/loss`` and ``{stage}/acc_top1`` (``/acc_top5``) of the clean views."""
        labels = self._check_labels(batch.labels)
        logits = self(batch.views[0])  # [B, C]
        batch_size = labels.shape[0]
        self.log(f"{stage}/loss", _mean_cross_entropy(logits, labels), batch_size=batch_size)
        for name, accuracy in accuracies.items():
            assert isinstance(accuracy, MulticlassAccuracy)
            accuracy(logits, labels)
            self.log(
                f"{stage}/acc_{name}", accuracy, prog_bar=name == "top1", batch_size=batch_size
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Records the backbone by name and arguments instead of the file it came from.

        ``load_from_checkpoint`` then rebuilds the backbone from the registry and loads its
        weights from this checkpoint's ``state_dict``; the source file is kept for reference
        under ``backbone_source``.
        """
        name, kwargs = self.backbone_spec
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        sources = ("backbone_checkpoint", "backbone_weights")
        checkpoint["backbone_source"] = {k: hparams.get(k) for k in sources}
        hparams.update(backbone=name, backbone_kwargs=dict(kwargs))
        hparams.update(dict.fromkeys(sources))
        checkpoint["hyper_parameters"] = hparams

    def configure_optimizers(self) -> Any:
        assert self.head is not None
        lr = scaled_lr(self.lr, self.trainer) if self.scale_lr else self.lr
        groups: list[dict[str, Any]] = [{"params": list(self.head.parameters())}]
        if self.fine_tune:
            groups += layer_decay_groups(
                self.backbone, self.weight_decay, self.layer_decay, self.backbone_lr_factor
            )
        optimizer = build_optimizer(
            self.optimizer_name,
            groups,
            lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
        )
        return warmup_cosine_schedule(optimizer, 0, schedule_length(self.trainer)[0])

    def _check_labels(self, labels: Tensor) -> Tensor:
        """Labels ``[B]`` with those out of range turned into ``-1`` (ignored); they are an
        error at the end of the epoch (:meth:`_raise_on_bad_labels`), without a sync per step."""
        assert self.num_classes is not None
        return self._labels.observe(labels, self.num_classes)

    def _raise_on_bad_labels(self) -> None:
        if self.num_classes is not None:
            self._labels.check(self.num_classes)

    on_train_epoch_end = on_train_end = on_validation_epoch_end = on_test_epoch_end = (
        _raise_on_bad_labels
    )


def _accuracies(num_classes: int) -> nn.ModuleDict:
    """Top-1 and (with more than 5 classes) top-5 accuracy, unlabeled (-1) samples ignored."""
    accuracies = {"top1": MulticlassAccuracy(num_classes, average="micro", ignore_index=-1)}
    if has_top5(num_classes):
        accuracies["top5"] = MulticlassAccuracy(
            num_classes, top_k=5, average="micro", ignore_index=-1
        )
    return nn.ModuleDict(accuracies)


def _mean_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over the labeled samples; 0 (not NaN) when there are none."""
    total = F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum")
    return total / (labels >= 0).sum().clamp_min(1)
