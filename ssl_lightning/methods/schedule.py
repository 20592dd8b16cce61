"""What a training recipe reads from its trainer: the global batch size (learning-rate
scaling) and the run's length in optimizer steps (warmup, cosine decay, momentum and
temperature schedules). Shared by the methods and ``LinearEvaluation``.

A method trains with the ``"paper"`` recipe (its paper's settings, written for hundreds of GPU
epochs) or the ``"budget"`` recipe (settings measured to learn faster on runs of a few epochs,
``benchmarks/README.md``): the method's ``budget_recipe`` (optimizer settings and the method's
own, such as SimCLR's temperature) and a warmup of 10 % of the run instead of a number of
epochs. Either way the method logs what it chose.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

__all__ = [
    "LRScaling",
    "Recipe",
    "announce_schedule",
    "global_batch_size",
    "scaled_lr",
    "schedule_length",
    "warmup_steps",
]

# How the learning rate follows the global batch (scaled_lr): True means "linear".
LRScaling = bool | Literal["linear", "sqrt"]
# A method's settings: its paper's, or those measured to learn fast on a short run.
Recipe = Literal["paper", "budget"]
RECIPES = ("paper", "budget")
BUDGET_WARMUP = 0.1  # the budget recipe's warmup, a fraction of the run


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
        timed = " (trainer.max_time stops a run but does not say how many steps it has)"
        raise ValueError(
            "the cosine schedule needs a finite run: set trainer.max_epochs or trainer.max_steps"
            + (timed if any(type(c).__name__ == "Timer" for c in trainer.callbacks) else "")
        )
    if trainer.train_dataloader is None:
        trainer.fit_loop.setup_data()  # as estimated_stepping_batches does, for per-epoch size
    batches = trainer.num_training_batches
    if batches == float("inf"):
        raise ValueError("warmup_epochs needs a training loader with a length")
    return int(total), max(1, int(batches) // trainer.accumulate_grad_batches)


def warmup_steps(recipe: Recipe, warmup_epochs: float, total: int, per_epoch: int) -> int:
    """Warmup steps of a run of ``total`` steps: ``warmup_epochs`` epochs of ``per_epoch``
    steps (``"paper"``), or 10 % of the run (``"budget"``), at most the run."""
    if recipe == "budget":
        return round(BUDGET_WARMUP * total)
    return min(total, round(warmup_epochs * per_epoch))


def announce_schedule(
    method: str, recipe: Recipe, optimizer: str, lr: float, warmup: int, total: int, per_epoch: int
) -> str:
    """Logs (rank 0) the optimizer, rate and schedule a method chose; warns when the paper
    recipe's warmup covers most of the run (a short run of a long GPU recipe). Returns the line."""
    line = (
        f"{method} (model.recipe={recipe}): {optimizer}, peak lr {lr:.3g}, warmup {warmup} of "
        f"{total} steps ({total / per_epoch:.3g} epochs), then cosine decay"
    )
    rank_zero_info(line)
    if recipe == "paper" and warmup > total / 2:
        rank_zero_warn(
            f"{line}: the learning rate rises for {warmup / total:.0%} of the run. The paper "
            "recipe is written for hundreds of epochs; model.recipe=budget warms up for 10 % "
            "of the run with settings measured on short runs (or lower model.warmup_epochs)"
        )
    return line
