"""``PretextModel``: what the datamodules and callbacks read from the model they serve.

Datamodules and callbacks know no method class; they read these four members from any model
that has them (``isinstance(model, PretextModel)``: every ``SSLMethod`` and
``LinearEvaluation``), and fall back to plain behaviour for other LightningModules.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

from ssl_lightning.corruptions.base import Corruption
from ssl_lightning.corruptions.batch import Batch

__all__ = ["PretextModel"]


@runtime_checkable
class PretextModel(Protocol):
    """The model side of the datamodule and callback contracts.

    Attributes:
        export_module: name of the submodule that is the learned backbone (``"backbone"``, or
            a teacher): what ``ssl-lightning export``, the probe and the kNN monitor read.
    """

    export_module: str

    def default_corruption(self) -> Corruption:
        """The corruption the datamodule applies to training batches when none is configured."""
        ...

    def check_corruption(self, corruption: Corruption) -> None:
        """Raises if a configured corruption disagrees with a setting the model owns."""
        ...

    def preview(self, batch: Batch) -> dict[str, Tensor]:
        """Named image rows ``[B_r, 3, H_r, W_r]`` (normalized) that ``PreviewImages`` draws."""
        ...
