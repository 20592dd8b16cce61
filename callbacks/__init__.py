"""Callbacks that watch representation quality while a pretext method trains."""

from callbacks.curves import TrainingCurves
from callbacks.images import PreviewImages
from callbacks.knn import KNNMonitor
from callbacks.linear_probe import OnlineLinearProbe

__all__ = ["KNNMonitor", "OnlineLinearProbe", "PreviewImages", "TrainingCurves"]
