"""What a method does when its loss goes non-finite: stop with an error, or skip the step.

A NaN or infinite loss otherwise trains on silently (every later loss is NaN, the exported
weights too). Checking ``loss.isfinite()`` on the host every step would stall an
accelerator's pipeline, so :class:`NonFiniteGuard` keeps a flag on the device (the step of
the first non-finite loss) and reads it every ``check_every`` batches, at the end of each
epoch and of training, and before a checkpoint is written.

The guard is a callback that every :class:`~ssl_lightning.methods.SSLMethod` attaches to its
trainer (``configure_callbacks``), not a set of the method's own hooks: a method that
overrides ``on_train_batch_end`` or ``on_save_checkpoint`` without ``super()`` cannot switch
it off.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor

from ssl_lightning import distributed

__all__ = ["NonFiniteGuard", "NonFinitePolicy", "check_policy"]

NonFinitePolicy = Literal["raise", "skip"]


def check_policy(policy: str) -> NonFinitePolicy:
    """``policy`` if it is ``"raise"`` or ``"skip"``, else an error naming the key."""
    if policy not in ("raise", "skip"):
        raise ValueError(
            f"on_nonfinite must be 'raise' or 'skip', got {policy!r} (set model.on_nonfinite)"
        )
    return policy  # type: ignore[return-value]


class NonFiniteGuard(L.Callback):
    """The ``on_nonfinite`` policy of a method, as a callback the method attaches itself.

    - ``"raise"``: the run stops with a ``FloatingPointError`` that names the first step with
      a non-finite loss, the method and the likely causes. No host-device sync per step: the
      device flag is read every :attr:`check_every` batches, at epoch and training end, and
      before every checkpoint save (so no checkpoint of NaN weights is written).
    - ``"skip"``: a step whose loss is non-finite on any rank changes nothing (its gradients
      are dropped before the optimizer step; :attr:`skipped_last` tells the method to skip
      its EMA update); such steps are counted in ``train/skipped_steps`` and in the
      checkpoint. Deciding whether to step is a host decision: this policy costs one sync
      (and under DDP one all-reduce) per step.

    Args:
        policy: ``"raise"`` or ``"skip"``.
        check_every: batches between two reads of the device flag under ``"raise"``.
    """

    def __init__(self, policy: NonFinitePolicy = "raise", check_every: int = 100) -> None:
        self.policy = check_policy(policy)
        self.check_every = check_every
        self.skipped_steps = 0
        self.skipped_last = False
        self._first_bad_step: Tensor | None = None  # device scalar, -1 while all finite
        self._batches_watched = 0

    def watch(self, loss: Tensor, step: int) -> None:
        """Records on the device whether ``loss`` (a scalar) of optimizer step ``step`` is
        finite; never syncs."""
        bad = ~torch.isfinite(loss.detach())
        first = self._first_bad_step
        if first is None or first.device != loss.device:
            first = torch.full((), -1, dtype=torch.long, device=loss.device)
        self._first_bad_step = torch.where(bad & (first < 0), step, first)
        self._batches_watched += 1

    def check(self, pl_module: L.LightningModule) -> None:
        """Raises if a loss since the start was non-finite (``"raise"``); syncs once."""
        if self.policy != "raise" or self._first_bad_step is None:
            return
        step = int(self._first_bad_step)
        if step >= 0:
            raise FloatingPointError(_message(pl_module, step))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
        if self._batches_watched % self.check_every == 0:
            self.check(pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(pl_module)

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self.skipped_last = False
        first = self._first_bad_step
        if self.policy != "skip" or first is None:
            return
        # Any rank's non-finite loss skips the step on every rank (gradients are averaged).
        bad = distributed.all_reduce_mean((first >= 0).float())
        first.fill_(-1)
        if float(bad) == 0:
            return
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None  # optimizers leave a parameter without gradient untouched
        self.skipped_last = True
        self.skipped_steps += 1
        if self.skipped_steps == 1:
            rank_zero_warn(
                f"{type(pl_module).__name__}: non-finite loss at step {trainer.global_step}, "
                "skipped (model.on_nonfinite=skip); skipped steps are logged as "
                "train/skipped_steps"
            )
        pl_module.log("train/skipped_steps", float(self.skipped_steps))

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.check(pl_module)
        checkpoint["skipped_steps"] = self.skipped_steps

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.skipped_steps = checkpoint.get("skipped_steps", 0)


def _message(pl_module: L.LightningModule, step: int) -> str:
    lr = getattr(pl_module, "lr", None)
    trainer = pl_module._trainer
    precision = trainer.precision if trainer is not None else "32-true"
    return (
        f"{type(pl_module).__name__}: the training loss became non-finite (NaN or inf) at step "
        f"{step}. Likely causes: a learning rate too high for this batch size and optimizer "
        f"(model.lr={lr}; lower it, add model.warmup_epochs, or check model.scale_lr), or "
        f"an overflow in reduced precision (trainer.precision={precision}; try bf16-mixed "
        "or 32-true). Set model.on_nonfinite=skip to skip such steps instead."
    )
