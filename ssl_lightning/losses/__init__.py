"""Self-supervised losses: pure functions of tensors, no Lightning, one module per family.

Every loss that needs statistics or negatives from other ranks gathers them through
:mod:`ssl_lightning.distributed` and is tested with 2 processes against 1.
"""

from ssl_lightning.losses.coding_rate import emp_ssl_loss, total_coding_rate
from ssl_lightning.losses.contrastive import info_nce, nt_xent
from ssl_lightning.losses.distillation import dino_loss, teacher_temperature, update_center_
from ssl_lightning.losses.reconstruction import LossKind, reconstruction_loss
from ssl_lightning.losses.redundancy import (
    barlow_twins_loss,
    multiview_vicreg_loss,
    vicreg_loss,
)
from ssl_lightning.losses.similarity import byol_loss, fastsiam_loss, simsiam_loss

__all__ = [
    "LossKind",
    "barlow_twins_loss",
    "byol_loss",
    "dino_loss",
    "emp_ssl_loss",
    "fastsiam_loss",
    "info_nce",
    "multiview_vicreg_loss",
    "nt_xent",
    "reconstruction_loss",
    "simsiam_loss",
    "teacher_temperature",
    "total_coding_rate",
    "update_center_",
    "vicreg_loss",
]
