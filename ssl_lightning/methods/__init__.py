"""Pretext methods: one file each, all subclasses of :class:`SSLMethod`."""

from ssl_lightning.methods.base import PretextOutput, SSLMethod, StepOutput
from ssl_lightning.methods.simclr import SimCLR

__all__ = ["PretextOutput", "SSLMethod", "SimCLR", "StepOutput"]
