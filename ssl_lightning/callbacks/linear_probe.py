"""Online linear probe: a linear classifier trained on the features the method already computed."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn

from ssl_lightning import distributed
from ssl_lightning.backbones.stages import Stages
from ssl_lightning.callbacks.common import (
    FeatureReader,
    head_prefix,
    setup_labeled_monitor,
    state_key_fields,
    warn_if_no_validation,
)
from ssl_lightning.callbacks.probe_optim import load_probe_state, probe_optimizer, step_where
from ssl_lightning.labels import LabelRange, has_top5

__all__ = ["OnlineLinearProbe"]


class OnlineLinearProbe(L.Callback):
    """Trains a linear classifier on the detached features of every training step.

    The probe reads ``features`` ``[N, D]`` and ``labels`` ``[N]`` from ``training_step``'s
    output (no second backbone pass), takes one float32 step of its own optimizer on them,
    and scores the ``validation_step`` features. Unlabeled samples (label ``-1``) are
    skipped; a step with no labeled sample on any rank changes nothing. Nothing in a step
    waits for the device: labels out of range are reported at the end of the epoch.

    Under DDP every rank holds the same head: it starts at zero (the problem is convex, and
    zero needs no broadcast), and each step uses the gradient of the mean loss over the
    labeled samples of all ranks (one all-reduce carries the gradient and the counts), which
    is the step one process would take on the concatenated batch.

    Logs ``probe/train_loss`` and ``probe/train_acc`` every step (global batch values, from the
    same all-reduce; NaN for a step without labels), ``probe/val_acc_top1`` /
    ``probe/val_acc_top5`` every validation and ``test/probe_acc_top1`` / ``..._top5`` in
    ``trainer.test`` (summed over ranks; top-5 only with more than 5 classes, and never below
    top-1). A probe that has not trained (``validate`` of a checkpoint saved without it) logs
    nothing and warns. Its head and optimizer state are checkpointed and restored on resume.

    With ``head="projector"`` every feature it reads (training, validation, test) first goes
    through that submodule of the model, in eval mode without gradients (a small extra pass
    per step); it then logs ``probe_projector/...`` and checkpoints apart from a backbone probe.

    Args:
        num_classes: number of classes; ``None`` takes the datamodule's ``num_classes``.
        lr: learning rate of the probe's optimizer.
        optimizer: ``"adam"`` (robust to the feature scale drifting during pretraining) or
            ``"sgd"`` (momentum 0.9).
        weight_decay: weight decay of the probe.
        stages: backbone stages it reads: ``"last"`` (the step's features) or ``"all"``/indices
            (pooled from the exported backbone on the clean view; ``backbones.stages``).
        prefix: prefix of the logged names; ``None``: ``"probe"``, or ``"probe_<head>"``
            with a head. A given prefix is used as is.
        head: dotted name of the model's submodule that maps the backbone's features to the
            ones to probe (``"projector"``, ``"projector.layers.0"``); ``None``: the features.
            Only with ``stages="last"``; a missing one fails at ``setup``.

    Examples:
        >>> trainer = L.Trainer(callbacks=[OnlineLinearProbe()])  # doctest: +SKIP
    """

    def __init__(
        self,
        num_classes: int | None = None,
        lr: float = 1e-3,
        optimizer: Literal["adam", "sgd"] = "adam",
        weight_decay: float = 0.0,
        prefix: str | None = None,
        stages: Stages = "last",
        head: str | None = None,
    ) -> None:
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        self.num_classes = num_classes
        self.lr = lr
        self.optimizer_name = optimizer
        self.weight_decay = weight_decay
        self.stages, self.head_name = stages, head  # `head` is the classifier, kept by that name
        self._reader = FeatureReader("OnlineLinearProbe", stages, head)
        self.prefix = head_prefix(prefix, "probe", head)
        self.head: nn.Linear | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.trained = False
        self._labels = LabelRange("OnlineLinearProbe", "set OnlineLinearProbe(num_classes=...)")
        self._counts: Tensor | None = None  # [3]: top-1 hits, top-5 hits, labeled samples
        self._pending_state: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(**state_key_fields(self.prefix, self.head_name))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.num_classes = setup_labeled_monitor(trainer, pl_module, self._reader, self.num_classes)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        warn_if_no_validation(trainer, "OnlineLinearProbe", f"{self.prefix}/val_acc_top1")

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not outputs:  # a step the method skipped (it returned None)
            return
        features, labels = self._reader.step(outputs, batch, pl_module, "training_step")
        loss, accuracy = self.update(features, labels)
        batch_size = labels.shape[0]
        pl_module.log(f"{self.prefix}/train_loss", loss, batch_size=batch_size)
        pl_module.log(f"{self.prefix}/train_acc", accuracy, prog_bar=True, batch_size=batch_size)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check_labels()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check_labels()

    def update(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """One optimizer step of the head on ``features`` ``[N, D]`` and ``labels`` ``[N]``.
        Under DDP every rank calls it once per step (one all-reduce). Labels out of range are
        ignored here and reported by :meth:`check_labels`.

        Returns:
            ``(loss, accuracy)`` of the global batch before the step, as device scalars; NaN
            when no rank had a labeled sample (then nothing changes).
        """
        assert self.num_classes is not None, "setup() resolves num_classes"
        labels = self._labels.observe(labels, self.num_classes)
        head, optimizer = self._build(features)
        with torch.enable_grad(), torch.autocast(features.device.type, enabled=False):
            logits = head(features.detach().float())  # [N, C]
            loss_sum = F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum")
            optimizer.zero_grad(set_to_none=False)
            loss_sum.backward()
        labeled = labels >= 0  # [N]
        correct = ((logits.detach().argmax(dim=1) == labels) & labeled).sum()
        params = [p for p in head.parameters() if p.grad is not None]
        grads = [p.grad for p in params if p.grad is not None]
        # One collective: the mean over ranks of [gradients of the loss sums, labeled count,
        # correct count, loss sum]; dividing by the mean count gives per-sample means over
        # the global batch, as one process would compute them on the concatenated batch.
        stats = torch.stack([labeled.sum(), correct, loss_sum.detach()]).float()
        packed = distributed.all_reduce_mean(torch.cat([g.flatten() for g in grads] + [stats]))
        count = packed[-3]
        offset = 0
        for g in grads:
            g.copy_(packed[offset : offset + g.numel()].view_as(g) / count.clamp(min=1e-12))
            offset += g.numel()
        # No labeled sample on any rank: the step is undone on the device, the same everywhere.
        step_where(optimizer, params, count > 0)
        self.trained = True
        return packed[-1] / count, packed[-2] / count

    def check_labels(self) -> None:
        """Raises if a label seen so far was outside ``[-1, num_classes)`` (one sync)."""
        if self.num_classes is not None:
            self._labels.check(self.num_classes)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._counts = None

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not trainer.sanity_checking and self.trained:
            self.update_val(*self._reader.step(outputs, batch, pl_module, "validation_step"))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log_eval(pl_module, f"{self.prefix}/val_acc")

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._counts = None

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.trained:
            self.update_val(*self._reader.step(outputs, batch, pl_module, "test_step"))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log_eval(pl_module, f"test/{self.prefix}_acc")

    def update_val(self, features: Tensor, labels: Tensor) -> None:
        """Scores validation ``features`` ``[N, D]`` against ``labels`` ``[N]``."""
        assert self.num_classes is not None, "setup() resolves num_classes"
        labels = self._labels.observe(labels, self.num_classes)
        head, _ = self._build(features)
        with torch.no_grad(), torch.autocast(features.device.type, enabled=False):
            logits = head(features.float())  # [N, C]
        # One top-k for both: a sample counted in top-1 is always counted in top-5.
        hits = logits.topk(min(5, self.num_classes), dim=1).indices == labels[:, None]  # [N, k]
        labeled = labels >= 0
        counts = torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum(), labeled.sum()]).float()
        self._counts = counts if self._counts is None else self._counts + counts

    def compute_val(self) -> dict[str, float]:
        """``{"val_acc_top1", "val_acc_top5"}`` over all ranks' validation samples so far;
        empty when no rank saw a labeled one. Under DDP every rank must call it."""
        self.check_labels()
        # Every rank joins the all-reduce, with zeros if it scored nothing.
        local = self._counts if self._counts is not None else torch.zeros(3)
        if self.head is not None:
            local = local.to(self.head.weight.device)
        counts = distributed.all_reduce_mean(local).tolist()  # once per validation
        if counts[2] == 0:
            return {}
        values = {"val_acc_top1": counts[0] / counts[2]}
        if self.num_classes is not None and has_top5(self.num_classes):
            values["val_acc_top5"] = counts[1] / counts[2]
        return values

    def _log_eval(self, pl_module: L.LightningModule, name: str) -> None:
        if not self.trained:
            rank_zero_warn(
                "OnlineLinearProbe has not trained (no training step, and the checkpoint holds "
                f"no probe state), so {name}_top1 is not logged: fit with the probe to score it"
            )
            return
        for key, value in self.compute_val().items():
            pl_module.log(name + key.removeprefix("val_acc"), value)

    def state_dict(self) -> dict[str, Any]:
        if self.head is None or self.optimizer is None:
            return dict(self._pending_state or {})
        return {
            "head": self.head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "num_classes": self.head.out_features,
            "num_features": self.head.in_features,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        # The head is built at the first batch, on the features' device: keep the state until
        # then (a resumed run loads callbacks before any batch).
        self._pending_state = dict(state_dict)
        self.trained = True
        if self.head is not None:
            self._apply_pending()

    def _build(self, features: Tensor) -> tuple[nn.Linear, torch.optim.Optimizer]:
        """The head and its optimizer, built at the first batch with the features' size."""
        if self.head is None or self.optimizer is None:
            assert self.num_classes is not None, "setup() resolves num_classes"
            head = nn.Linear(features.shape[1], self.num_classes, device=features.device)
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
            self.head = head
            self.optimizer = probe_optimizer(
                self.optimizer_name, head, self.lr, self.weight_decay, features.device
            )
            if self._pending_state is not None:
                self._apply_pending()
        if self.head.in_features != features.shape[1]:
            raise ValueError(
                f"the probe was built for {self.head.in_features} features, but a step returned "
                f"{features.shape[1]}"
            )
        return self.head, self.optimizer

    def _apply_pending(self) -> None:
        assert self.head is not None and self.optimizer is not None
        state = self._pending_state or {}
        self._pending_state = None
        load_probe_state(self.head, self.optimizer, state)
