"""Labels as the evaluators read them: the class count a datamodule reports, and labels
checked against it without a host-device sync per step (:class:`LabelRange`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["LabelRange", "datamodule_num_classes", "has_top5"]


def has_top5(num_classes: int) -> bool:
    """Whether top-5 accuracy says anything: with 5 classes or fewer every label is in the
    top 5, so the evaluators leave it out (NaN or no metric) instead of reporting 100 %."""
    return num_classes > 5


def datamodule_num_classes(trainer: Any, owner: str, fix: str) -> int:
    """The ``num_classes`` of ``trainer``'s datamodule, or an error naming ``owner`` (the
    callback or model that needs labels) and ``fix`` (what its user sets instead)."""
    num_classes = getattr(getattr(trainer, "datamodule", None), "num_classes", None)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(
            f"{owner} needs labels, but the datamodule reports num_classes={num_classes!r}; {fix}"
        )
    return num_classes


class LabelRange:
    """Labels outside ``[-1, num_classes)``, found without a host-device sync per step.

    :meth:`observe` keeps the smallest and largest label on the device and returns the
    labels with the bad ones turned into ``-1`` (so no kernel indexes out of range, and
    they count as unlabeled); the owner calls :meth:`check` once per epoch, which raises the
    error naming the fix.

    Args:
        owner: the callback or model that reads the labels, named in the error.
        fix: how to pass a larger class count, e.g. ``"set model.num_classes"``.
    """

    def __init__(self, owner: str, fix: str) -> None:
        self.owner, self.fix = owner, fix
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
                f"{self.owner} got label {bad}, outside [0, num_classes={num_classes}) "
                f"(-1 = unlabeled); {self.fix} to at least {high + 1}, or check the "
                "datamodule's labels"
            )
