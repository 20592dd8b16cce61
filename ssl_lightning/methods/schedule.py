"""What a training recipe reads from its trainer: the global batch size (learning-rate
scaling) and the run's length in optimizer steps (warmup, cosine decay, momentum and
temperature schedules). Shared by the methods and ``LinearEvaluation``."""

from __future__ import annotations

import math
from typing import Any, Literal

__all__ = ["LRScaling", "global_batch_size", "scaled_lr", "schedule_length"]

# How the learning rate follows the global batch (scaled_lr): True means "linear".
LRScaling = bool | Literal["linear", "sqrt"]


def global_batch_size(trainer: Any) -> int:
    """Images per optimizer step over all processes: the datamodule's ``batch_size`` (per
    process) times the number of processes times the gradient-accumulation steps."""
    batch_size = getattr(getattr(trainer, "datamodule", None), "batch_size", None)
    if not isinstance(batch_size, int):
        raise ValueError(
            "scale_lr needs the datamodule's integer `batch_size` to compute the global batch "
            "size; use a datamodule with one or set model.scale_lr=false"
        )
    return batch_size * trainer.world_size * trainer.accumulate_grad_batches


def scaled_lr(lr: float, trainer: Any, rule: LRScaling = "linear") -> float:
    """The learning rate at the run's global batch ``B`` (:func:`global_batch_size`), from
    ``lr`` given for 256 images.

    - ``"linear"`` (or ``True``): ``lr * B / 256``, the linear scaling rule (Goyal et al. 2017,
      arXiv:1706.02677) of the SGD and LARS recipes;
    - ``"sqrt"``: ``lr * sqrt(B / 256)`` (Krizhevsky 2014, arXiv:1404.5997; SimCLR's rule for
      LARS at small batches, arXiv:2002.05709 appendix B.1): a gentler rise for large batches;
    - ``False``: ``lr`` as given.

    Only ``B`` matters, not how it is split: 8 GPUs x 64 images get the rate of 1 GPU x 512.
    """
    if rule is False:
        return lr
    if rule not in (True, "linear", "sqrt"):
        raise ValueError(
            f"scale_lr must be true, false, 'linear' or 'sqrt', got {rule!r} (set model.scale_lr)"
        )
    ratio = global_batch_size(trainer) / 256
    return lr * (math.sqrt(ratio) if rule == "sqrt" else ratio)


def schedule_length(trainer: Any) -> tuple[int, int]:
    """Optimizer steps of the whole run and of one epoch (gradient accumulation counted)."""
    total = trainer.estimated_stepping_batches
    if total == float("inf"):
        raise ValueError(
            "the cosine schedule needs a finite run: set trainer.max_epochs or trainer.max_steps"
        )
    if trainer.train_dataloader is None:
        trainer.fit_loop.setup_data()  # as estimated_stepping_batches does, for per-epoch size
    batches = trainer.num_training_batches
    if batches == float("inf"):
        raise ValueError("warmup_epochs needs a training loader with a length")
    return int(total), max(1, int(batches) // trainer.accumulate_grad_batches)
