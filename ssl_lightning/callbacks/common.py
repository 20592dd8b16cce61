"""What the monitoring callbacks share: reading step outputs, the class count, labels checked
without a device sync per step, and the warning when there is nothing to validate on."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn

from ssl_lightning.backbones.stages import Stages, stage_features
from ssl_lightning.corruptions import PretextModel

__all__ = [
    "LabelRange",
    "datamodule_num_classes",
    "embed_stages",
    "place_optimizer_state",
    "probe_optimizer",
    "stage_step_features",
    "step_features",
    "step_where",
    "warn_if_no_validation",
]


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


def embed_stages(pl_module: L.LightningModule, images: Tensor, stages: Stages) -> Tensor:
    """Pooled ``stages`` ``[B, D']`` of the method's exported backbone (the teacher where it
    exports one) for normalized ``images``, in eval mode, without gradients."""
    name = pl_module.export_module if isinstance(pl_module, PretextModel) else "backbone"
    backbone = getattr(pl_module, name)
    was_training = backbone.training
    backbone.eval()  # batch statistics would change BatchNorm's running averages
    try:
        with torch.no_grad():
            return stage_features(backbone, images, stages)
    finally:
        backbone.train(was_training)


def stage_step_features(
    outputs: Any, batch: Any, pl_module: L.LightningModule, hook: str, stages: Stages
) -> tuple[Tensor, Tensor]:
    """The step's own ``(features, labels)`` for ``stages="last"``; else the chosen stages of
    the batch's clean image (``batch.clean``, else its first view) and ``batch.labels``: one
    extra backbone pass per step."""
    if stages == "last":
        return step_features(outputs, hook)
    images = getattr(batch, "clean", None)
    images = batch.views[0] if images is None else images
    return embed_stages(pl_module, images, stages), batch.labels


def datamodule_num_classes(trainer: L.Trainer, callback: str) -> int:
    """The datamodule's ``num_classes``, or an error telling ``callback``'s user what to pass."""
    num_classes = getattr(getattr(trainer, "datamodule", None), "num_classes", None)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(
            f"{callback} needs labels, but the datamodule reports num_classes={num_classes!r}; "
            f"pass {callback}(num_classes=...) or remove the callback"
        )
    return num_classes


class LabelRange:
    """Labels outside ``[-1, num_classes)``, found without a host-device sync per step.

    :meth:`observe` keeps the smallest and largest label on the device and returns the
    labels with the bad ones turned into ``-1`` (so no kernel indexes out of range); the
    callback calls :meth:`check` once per epoch, which raises the error naming the fix.
    """

    def __init__(self, callback: str) -> None:
        self.callback = callback
        self._range: Tensor | None = None  # [2]: smallest, largest label seen

    def observe(self, labels: Tensor, num_classes: int) -> Tensor:
        """Records ``labels`` ``[N]``; returns them with labels out of range set to ``-1``."""
        if labels.numel() == 0:
            return labels
        seen = torch.stack(torch.aminmax(labels))  # [2]
        if self._range is None or self._range.device != seen.device:
            self._range = seen
        else:
            low = torch.minimum(self._range[0], seen[0])
            self._range = torch.stack([low, torch.maximum(self._range[1], seen[1])])
        return labels.masked_fill((labels < -1) | (labels >= num_classes), -1)

    def check(self, num_classes: int) -> None:
        """Raises if a label seen so far was outside ``[-1, num_classes)``; one sync."""
        if self._range is None:
            return
        low, high = (int(v) for v in self._range)
        if high >= num_classes or low < -1:
            bad = high if high >= num_classes else low
            raise ValueError(
                f"{self.callback} got label {bad}, outside [0, num_classes={num_classes}) "
                f"(-1 = unlabeled); pass {self.callback}(num_classes=...) of at least "
                f"{high + 1}, or check the datamodule's labels"
            )


def warn_if_no_validation(trainer: L.Trainer, callback: str, metrics: str) -> None:
    """Warns (once per fit) that ``metrics`` will not be logged when there is no validation."""
    datamodule = getattr(trainer, "datamodule", None)
    no_split = datamodule is not None and getattr(datamodule, "val_set", "") is None
    if no_split or trainer.limit_val_batches == 0:
        rank_zero_warn(
            f"{callback}: there is no validation split, so {metrics} will not be logged; set "
            "data.val_fraction (e.g. 0.1) to hold out a stratified share of the training images "
            "for validation, or give the data a test/ or val/ folder"
        )


def step_where(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], take: Tensor) -> None:
    """``optimizer.step()``, undone where the device bool ``take`` is ``False``: parameters and
    optimizer state are restored with ``torch.where`` (no host-device sync; the probe's head
    is small, so the copies are cheap). State that the step created starts from zero, as the
    optimizers' own fresh state does."""
    saved = [p.detach().clone() for p in params]
    state = {
        i: {k: v.clone() for k, v in optimizer.state[p].items() if isinstance(v, Tensor)}
        for i, p in enumerate(params)
        if p in optimizer.state
    }
    optimizer.step()
    with torch.no_grad():
        for i, (p, old) in enumerate(zip(params, saved, strict=True)):
            p.copy_(torch.where(take, p, old))
            for key, value in optimizer.state[p].items():
                if isinstance(value, Tensor):
                    before = state.get(i, {}).get(key, torch.zeros_like(value))
                    value.copy_(torch.where(take.to(value.device), value, before))


def probe_optimizer(
    name: str, head: nn.Module, lr: float, weight_decay: float, device: torch.device
) -> torch.optim.Optimizer:
    """``"adam"`` (capturable on a GPU: its step count stays on the device, where
    :func:`step_where` can undo it) or ``"sgd"`` (momentum 0.9) over ``head``'s parameters."""
    if name == "adam":
        capturable = device.type == "cuda"
        return torch.optim.Adam(
            head.parameters(), lr=lr, weight_decay=weight_decay, capturable=capturable
        )
    return torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)


def place_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Adam's step counts where this device kind wants them after loading a checkpoint from
    another: on a GPU (``capturable``, for :func:`step_where`), else on the CPU."""
    capturable = device.type == "cuda"
    for group in optimizer.param_groups:
        if "capturable" not in group:
            continue
        group["capturable"] = capturable
        for p in group["params"]:
            step = optimizer.state.get(p, {}).get("step")
            if isinstance(step, Tensor):
                optimizer.state[p]["step"] = step.to(device if capturable else "cpu")
