"""The typed batch that a datamodule hands to a method after its corruption ran."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from torch import Tensor


@dataclass
class Batch:
    """One training or validation batch, on the training device.

    Attributes:
        views: ``V`` image tensors, each ``[B, 3, H_v, W_v]`` float, normalized. Validation
            batches hold one view, the normalized clean image.
        labels: ``[B]`` int64 class labels of the source images; ``-1`` where unlabeled.
        targets: pretext targets, e.g. ``[B]`` rotation indices, or ``None``.
        mask: ``[B, h, w]`` bool patch mask (``True`` = hidden), or ``None``.
        clean: ``[B, 3, H, W]`` uncorrupted normalized image (reconstruction target), or ``None``.
    """

    views: list[Tensor]
    labels: Tensor
    targets: Tensor | None = None
    mask: Tensor | None = None
    clean: Tensor | None = None

    def map_images(self, fn: Callable[[Tensor], Tensor]) -> Batch:
        """Returns a copy with ``fn`` applied to every image tensor (views and clean)."""
        clean = None if self.clean is None else fn(self.clean)
        return replace(self, views=[fn(v) for v in self.views], clean=clean)

    def image_rows(self) -> dict[str, Tensor]:
        """The batch's images by name: ``"view 0"``, ``"view 1"``, ..., then ``"clean"`` if
        the batch has it (what ``PreviewImages`` draws for a method without its own rows)."""
        rows = {f"view {i}": view for i, view in enumerate(self.views)}
        if self.clean is not None:
            rows["clean"] = self.clean
        return rows
