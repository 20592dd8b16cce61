"""Callbacks that watch representation quality while a pretext method trains."""
