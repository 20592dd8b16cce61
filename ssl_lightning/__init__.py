"""ssl-lightning: self-supervised representation learning as PyTorch Lightning modules."""

from ssl_lightning.backbones import create_backbone, list_backbones, register_backbone
from ssl_lightning.evaluation import LinearEvaluation
from ssl_lightning.methods import (
    BYOL,
    DINO,
    EMPSSL,
    MAE,
    BarlowTwins,
    FastSiam,
    MaskedReconstruction,
    MoCoV3,
    RotationPrediction,
    SimCLR,
    SimSiam,
    SparK,
    SSLMethod,
    VICReg,
)

__version__ = "0.1.0"

__all__ = [
    "BYOL",
    "DINO",
    "EMPSSL",
    "MAE",
    "BarlowTwins",
    "FastSiam",
    "LinearEvaluation",
    "MaskedReconstruction",
    "MoCoV3",
    "RotationPrediction",
    "SSLMethod",
    "SimCLR",
    "SimSiam",
    "SparK",
    "VICReg",
    "create_backbone",
    "list_backbones",
    "register_backbone",
]
