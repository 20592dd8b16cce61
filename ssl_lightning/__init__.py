"""ssl-lightning: self-supervised representation learning as PyTorch Lightning modules."""

from ssl_lightning.backbones import create_backbone, list_backbones, register_backbone
from ssl_lightning.evaluation import LinearEvaluation
from ssl_lightning.methods import (
    BYOL,
    DINO,
    MAE,
    BarlowTwins,
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
    "MAE",
    "BarlowTwins",
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
