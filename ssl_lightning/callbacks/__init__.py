"""Callbacks that watch representation quality while a pretext method trains."""

from ssl_lightning.callbacks.collapse import EmbeddingStd, RankMe
from ssl_lightning.callbacks.curves import TrainingCurves
from ssl_lightning.callbacks.features import FeatureWriter
from ssl_lightning.callbacks.images import PreviewImages
from ssl_lightning.callbacks.knn import KNNMonitor
from ssl_lightning.callbacks.linear_probe import OnlineLinearProbe

__all__ = [
    "EmbeddingStd",
    "FeatureWriter",
    "KNNMonitor",
    "OnlineLinearProbe",
    "PreviewImages",
    "RankMe",
    "TrainingCurves",
]
