"""Pretext methods: one file each, all subclasses of :class:`SSLMethod`."""

from ssl_lightning.methods.base import SSLMethod
from ssl_lightning.methods.mae import MAE
from ssl_lightning.methods.masked_reconstruction import MaskedReconstruction
from ssl_lightning.methods.outputs import PretextOutput, StepOutput
from ssl_lightning.methods.rotation import RotationPrediction
from ssl_lightning.methods.simclr import SimCLR

__all__ = [
    "MAE",
    "MaskedReconstruction",
    "PretextOutput",
    "RotationPrediction",
    "SSLMethod",
    "SimCLR",
    "StepOutput",
]
