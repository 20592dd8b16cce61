"""Pretext methods: one file each, all subclasses of :class:`SSLMethod`."""

from ssl_lightning.methods.base import PretextOutput, SSLMethod, StepOutput
from ssl_lightning.methods.masked import MAE, MaskedReconstruction
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
