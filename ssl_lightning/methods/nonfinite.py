"""What a method does when its loss goes non-finite: stop with an error, or skip the step.

A NaN or infinite loss otherwise trains on silently (every later loss is NaN, the exported
weights too). Checking ``loss.isfinite()`` on the host every step would stall an
accelerator's pipeline, so :class:`NonFiniteGuard` keeps a flag on the device (the step of
the first non-finite loss) and reads it every ``check_every`` batches, at the end of each
epoch and of training, and before a checkpoint is written.
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


class NonFiniteGuard(L.LightningModule):
    """Mixin of :class:`~ssl_lightning.methods.SSLMethod`: the ``on_nonfinite`` policy.

    - ``"raise"``: the run stops with a ``FloatingPointError`` that names the first step with
      a non-finite loss, the method and the likely causes. No host-device sync per step: the
      device flag is read every :attr:`check_every` batches, at epoch and training end, and
      before every checkpoint save (so no checkpoint of NaN weights is written).
    - ``"skip"``: a step whose loss is non-finite on any rank changes nothing (its gradients
      are dropped before the optimizer step, the EMA update is skipped); such steps are
      counted in ``train/skipped_steps`` and in the checkpoint. Deciding whether to step is a
      host decision: this policy costs one sync (and under DDP one all-reduce) per step.
    """

    check_every: int = 100
    on_nonfinite: NonFinitePolicy = "raise"

    def watch_loss(self, loss: Tensor) -> None:
        """Records on the device whether ``loss`` (a scalar) is finite; never syncs."""
        bad = ~torch.isfinite(loss.detach())
        first = getattr(self, "_first_bad_step", None)
        if first is None or first.device != loss.device:
            first = torch.full((), -1, dtype=torch.long, device=loss.device)
        step = self.trainer.global_step if self._trainer is not None else 0
        self._first_bad_step = torch.where(bad & (first < 0), step, first)
        self._batches_watched = getattr(self, "_batches_watched", 0) + 1

    def after_optimizer_step(self) -> None:
        """Runs once after each optimizer step (e.g. an EMA update), not after one skipped for
        a non-finite loss; does nothing by default."""

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if not getattr(self, "_skipped_last", False):
            self.after_optimizer_step()

    def check_finite(self) -> None:
        """Raises if a loss since the start was non-finite (``"raise"``); syncs once."""
        first = getattr(self, "_first_bad_step", None)
        if self.on_nonfinite != "raise" or first is None:
            return
        step = int(first)
        if step >= 0:
            raise FloatingPointError(self._message(step))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if getattr(self, "_batches_watched", 0) % self.check_every == 0:
            self.check_finite()

    def on_train_epoch_end(self) -> None:
        self.check_finite()

    def on_train_end(self) -> None:
        self.check_finite()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self._skipped_last = False
        first = getattr(self, "_first_bad_step", None)
        if self.on_nonfinite != "skip" or first is None:
            return
        # Any rank's non-finite loss skips the step on every rank (gradients are averaged).
        bad = distributed.all_reduce_mean((first >= 0).float())
        first.fill_(-1)
        if float(bad) == 0:
            return
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None  # optimizers leave a parameter without gradient untouched
        self._skipped_last = True
        self.skipped_steps = getattr(self, "skipped_steps", 0) + 1
        if self.skipped_steps == 1:
            rank_zero_warn(
                f"{type(self).__name__}: non-finite loss at step {self.trainer.global_step}, "
                "skipped (model.on_nonfinite=skip); skipped steps are logged as "
                "train/skipped_steps"
            )
        self.log("train/skipped_steps", float(self.skipped_steps))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_finite()
        checkpoint["skipped_steps"] = getattr(self, "skipped_steps", 0)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.skipped_steps = checkpoint.get("skipped_steps", 0)

    def _message(self, step: int) -> str:
        lr = getattr(self, "lr", None)
        precision = self.trainer.precision if self._trainer is not None else "32-true"
        return (
            f"{type(self).__name__}: the training loss became non-finite (NaN or inf) at step "
            f"{step}. Likely causes: a learning rate too high for this batch size and optimizer "
            f"(model.lr={lr}; lower it, add model.warmup_epochs, or check model.scale_lr), or "
            f"an overflow in reduced precision (trainer.precision={precision}; try bf16-mixed "
            "or 32-true). Set model.on_nonfinite=skip to skip such steps instead."
        )
