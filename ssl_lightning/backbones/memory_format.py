"""Which memory format a backbone runs fastest in: channels-last for conv nets.

Channels-last (NHWC) lets convolutions read each pixel's channels contiguously: faster for
conv nets on GPUs (tensor cores) and, measured in ``benchmarks/throughput.py``, for ResNet-18
on CPUs too; no slower for the small ``convnet``. A ViT's only convolution is its patch
embedding, so transformers stay contiguous.
"""

from __future__ import annotations

from torch import nn


def prefers_channels_last(backbone: nn.Module) -> bool:
    """Whether ``backbone`` is a conv net: ``nn.Conv2d`` weights hold most of its parameters."""
    conv = sum(m.weight.numel() for m in backbone.modules() if isinstance(m, nn.Conv2d))
    total = sum(p.numel() for p in backbone.parameters())
    return total > 0 and conv > total / 2


def resolve_channels_last(channels_last: bool | None, backbone: nn.Module) -> bool:
    """``channels_last`` as given, or when ``None``, whether ``backbone`` is a conv net."""
    return prefers_channels_last(backbone) if channels_last is None else channels_last
