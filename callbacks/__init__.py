"""Callbacks that watch representation quality while a pretext method trains."""

from callbacks.images import PreviewImages

__all__ = ["PreviewImages"]
