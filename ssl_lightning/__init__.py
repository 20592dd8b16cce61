"""ssl-lightning: self-supervised representation learning as PyTorch Lightning modules."""

from ssl_lightning.backbones import create_backbone, list_backbones, register_backbone
from ssl_lightning.evaluation import LinearEvaluation
from ssl_lightning.methods import MAE, MaskedReconstruction, RotationPrediction, SimCLR, SSLMethod

__version__ = "0.1.0"

__all__ = [
    "MAE",
    "LinearEvaluation",
    "MaskedReconstruction",
    "RotationPrediction",
    "SSLMethod",
    "SimCLR",
    "create_backbone",
    "list_backbones",
    "register_backbone",
]
