"""Online linear probe: a linear classifier trained on the features the method already computed."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from ssl_lightning import distributed

__all__ = ["OnlineLinearProbe", "datamodule_num_classes", "step_features"]


def step_features(outputs: Any, hook: str) -> tuple[Tensor, Tensor]:
    """``(features [N, D], labels [N])`` from a step's output dict, or a clear error."""
    if not isinstance(outputs, dict) or "features" not in outputs or "labels" not in outputs:
        found = sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__
        raise ValueError(
            f"the callback reads `features` and `labels` from the output of {hook}, but it "
            f"returned {found}; use an SSLMethod (its steps return {{'features', 'labels'}}) or "
            "return them from your own step"
        )
    features, labels = outputs["features"], outputs["labels"]
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(
            f"{hook} returned features {tuple(features.shape)} and labels "
            f"{tuple(labels.shape)}; expected pooled features [N, D] and labels [N]"
        )
    return features, labels


def datamodule_num_classes(trainer: L.Trainer, callback: str) -> int:
    """The datamodule's ``num_classes``, or an error telling ``callback``'s user what to pass."""
    num_classes = getattr(getattr(trainer, "datamodule", None), "num_classes", None)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(
            f"{callback} needs labels, but the datamodule reports num_classes={num_classes!r}; "
            f"pass {callback}(num_classes=...) or remove the callback"
        )
    return num_classes


class OnlineLinearProbe(L.Callback):
    """Trains a linear classifier on the detached features of every training step.

    The probe reads ``features`` ``[N, D]`` and ``labels`` ``[N]`` from ``training_step``'s
    output (no second backbone pass), takes one step of its own optimizer on them in float32
    (autocast off, whatever the trainer's precision), and scores the ``validation_step``
    features. Unlabeled samples (label ``-1``) are skipped.

    Under DDP every rank holds the same head: it starts at zero (the problem is convex, and
    zero needs no broadcast), and each step uses the gradient of the mean loss over the
    labeled samples of all ranks (one all-reduce carries the gradient and the counts), which
    is the step one process would take on the concatenated batch.

    Logs ``probe/train_loss`` and ``probe/train_acc`` every step (global batch values, from the
    same all-reduce) and ``probe/val_acc_top1`` / ``probe/val_acc_top5`` every validation
    (torchmetrics, synced across ranks; top-5 only with more than 5 classes). Its head and
    optimizer state go into checkpoints and are restored on resume.

    Args:
        num_classes: number of classes; ``None`` takes the datamodule's ``num_classes``.
        lr: learning rate of the probe's optimizer.
        optimizer: ``"adam"`` (robust to the feature scale drifting during pretraining) or
            ``"sgd"`` (momentum 0.9).
        weight_decay: weight decay of the probe.
        prefix: prefix of the logged names.

    Examples:
        >>> trainer = L.Trainer(callbacks=[OnlineLinearProbe()])  # doctest: +SKIP
    """

    def __init__(
        self,
        num_classes: int | None = None,
        lr: float = 1e-3,
        optimizer: Literal["adam", "sgd"] = "adam",
        weight_decay: float = 0.0,
        prefix: str = "probe",
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
        self.prefix = prefix
        self.head: nn.Linear | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.val_top1: MulticlassAccuracy | None = None
        self.val_top5: MulticlassAccuracy | None = None
        self._val_seen = 0
        self._pending_state: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(prefix=self.prefix)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.num_classes is None:
            self.num_classes = datamodule_num_classes(trainer, "OnlineLinearProbe")

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        features, labels = step_features(outputs, "training_step")
        stats = self.update(features, labels)
        if stats is not None:
            loss, accuracy = stats
            batch_size = labels.shape[0]
            pl_module.log(f"{self.prefix}/train_loss", loss, batch_size=batch_size)
            pl_module.log(
                f"{self.prefix}/train_acc", accuracy, prog_bar=True, batch_size=batch_size
            )

    def update(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor] | None:
        """One optimizer step of the head on ``features`` ``[N, D]`` and ``labels`` ``[N]``.

        Under DDP every rank must call it once per step (it runs one all-reduce).

        Returns:
            ``(loss, accuracy)`` of the global batch before the step, or ``None`` when no
            rank had a labeled sample (then nothing changes).
        """
        self._check_labels(labels)
        head, optimizer = self._build(features)
        with torch.enable_grad(), torch.autocast(features.device.type, enabled=False):
            logits = head(features.detach().float())  # [N, C]
            loss_sum = F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum")
            optimizer.zero_grad(set_to_none=False)
            loss_sum.backward()
        labeled = labels >= 0  # [N]
        correct = ((logits.detach().argmax(dim=1) == labels) & labeled).sum()
        grads = [p.grad for p in head.parameters() if p.grad is not None]
        # One collective: the mean over ranks of [gradients of the loss sums, labeled count,
        # correct count, loss sum]; dividing by the mean count gives per-sample means over
        # the global batch, as one process would compute them on the concatenated batch.
        stats = torch.stack([labeled.sum(), correct, loss_sum.detach()]).float()
        packed = distributed.all_reduce_mean(torch.cat([g.flatten() for g in grads] + [stats]))
        count = packed[-3]
        if count.item() == 0:  # no labeled sample on any rank: the same decision everywhere
            return None
        offset = 0
        for g in grads:
            g.copy_(packed[offset : offset + g.numel()].view_as(g) / count)
            offset += g.numel()
        optimizer.step()
        return packed[-1] / count, packed[-2] / count

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for metric in (self.val_top1, self.val_top5):
            if metric is not None:
                metric.reset()
        self._val_seen = 0

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking:
            return
        self.update_val(*step_features(outputs, "validation_step"))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        for name, value in self.compute_val().items():
            pl_module.log(f"{self.prefix}/{name}", value)

    def update_val(self, features: Tensor, labels: Tensor) -> None:
        """Scores validation ``features`` ``[N, D]`` against ``labels`` ``[N]``."""
        self._check_labels(labels)
        head, _ = self._build(features)
        assert self.val_top1 is not None
        with torch.no_grad(), torch.autocast(features.device.type, enabled=False):
            logits = head(features.float())  # [N, C]
        self.val_top1.update(logits, labels)
        if self.val_top5 is not None:
            self.val_top5.update(logits, labels)
        self._val_seen += int((labels >= 0).sum())

    def compute_val(self) -> dict[str, float]:
        """``{"val_acc_top1", "val_acc_top5"}`` over all ranks' validation samples so far;
        empty when no rank saw a labeled one. Under DDP every rank must call it."""
        # The decision to compute (and so to join compute()'s sync) must agree on all ranks.
        seen = distributed.all_reduce_mean(torch.tensor(float(self._val_seen)))
        if self.val_top1 is None or seen.item() == 0:
            return {}
        values = {"val_acc_top1": self.val_top1.compute().item()}
        if self.val_top5 is not None:
            values["val_acc_top5"] = self.val_top5.compute().item()
        return values

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
            if self.optimizer_name == "adam":
                self.optimizer = torch.optim.Adam(
                    head.parameters(), lr=self.lr, weight_decay=self.weight_decay
                )
            else:
                self.optimizer = torch.optim.SGD(
                    head.parameters(), lr=self.lr, momentum=0.9, weight_decay=self.weight_decay
                )
            self.val_top1 = MulticlassAccuracy(
                self.num_classes, average="micro", ignore_index=-1
            ).to(features.device)
            self.val_top5 = (
                MulticlassAccuracy(self.num_classes, top_k=5, average="micro", ignore_index=-1).to(
                    features.device
                )
                if self.num_classes > 5
                else None
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
        shape = (state.get("num_classes"), state.get("num_features"))
        if shape != (self.head.out_features, self.head.in_features):
            raise ValueError(
                f"the checkpoint's probe has (num_classes, num_features) = {shape}, this run's "
                f"{(self.head.out_features, self.head.in_features)}; resume with the same "
                "num_classes and backbone"
            )
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])  # moves its state to the head's device

    def _check_labels(self, labels: Tensor) -> None:
        assert self.num_classes is not None
        if labels.numel() == 0:
            return
        low, high = (int(v) for v in torch.aminmax(labels))
        if high >= self.num_classes or low < -1:
            bad = high if high >= self.num_classes else low
            raise ValueError(
                f"OnlineLinearProbe got label {bad}, outside [0, num_classes={self.num_classes}) "
                f"(-1 = unlabeled); pass OnlineLinearProbe(num_classes=...) of at least "
                f"{high + 1}, or check the datamodule's labels"
            )
