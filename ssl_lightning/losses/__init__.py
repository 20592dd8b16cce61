"""Self-supervised losses: pure functions of tensors, no Lightning, one module per family.

Every loss that needs statistics or negatives from other ranks gathers them through
:mod:`ssl_lightning.distributed` and is tested with 2 processes against 1.
"""

from ssl_lightning.losses.contrastive import nt_xent
from ssl_lightning.losses.reconstruction import LossKind, reconstruction_loss

__all__ = ["LossKind", "nt_xent", "reconstruction_loss"]
