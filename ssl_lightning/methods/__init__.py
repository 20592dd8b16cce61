"""Pretext methods: one file each, all subclasses of :class:`SSLMethod`."""

from ssl_lightning.methods.barlow_twins import BarlowTwins
from ssl_lightning.methods.base import SSLMethod
from ssl_lightning.methods.byol import BYOL
from ssl_lightning.methods.dino import DINO
from ssl_lightning.methods.emp_ssl import EMPSSL
from ssl_lightning.methods.fastsiam import FastSiam
from ssl_lightning.methods.mae import MAE
from ssl_lightning.methods.masked_reconstruction import MaskedReconstruction
from ssl_lightning.methods.moco import MoCoV3
from ssl_lightning.methods.outputs import PretextOutput, StepOutput
from ssl_lightning.methods.rotation import RotationPrediction
from ssl_lightning.methods.simclr import SimCLR
from ssl_lightning.methods.simsiam import SimSiam
from ssl_lightning.methods.spark import SparK
from ssl_lightning.methods.vicreg import VICReg

__all__ = [
    "BYOL",
    "DINO",
    "EMPSSL",
    "MAE",
    "BarlowTwins",
    "FastSiam",
    "MaskedReconstruction",
    "MoCoV3",
    "PretextOutput",
    "RotationPrediction",
    "SSLMethod",
    "SimCLR",
    "SimSiam",
    "SparK",
    "StepOutput",
    "VICReg",
    "method_classes",
]


def method_classes() -> dict[str, type[SSLMethod]]:
    """Every pretext method class this package exports, by name (``SSLMethod`` itself left out)."""
    exported = {name: globals()[name] for name in __all__ if name != "method_classes"}
    return {
        name: cls
        for name, cls in exported.items()
        if isinstance(cls, type) and issubclass(cls, SSLMethod) and cls is not SSLMethod
    }
