"""Backbone registry and the built-in backbone families.

Every backbone is an ``nn.Module`` with ``num_features: int``; ``forward`` maps images
``[B, 3, H, W]`` to pooled features ``[B, num_features]`` and ``forward_features`` returns
the unpooled feature map ``[B, C, h, w]`` (or tokens ``[B, N, D]`` for transformers);
``forward_stages`` returns every stage's output, the last being ``forward_features``'s
(:mod:`~ssl_lightning.backbones.stages` pools and concatenates chosen stages).

Examples:
    >>> from ssl_lightning.backbones import create_backbone, list_backbones
    >>> list_backbones("resnet*")
    ['resnet18', 'resnet34', 'resnet50']
    >>> create_backbone("torchvision/resnet18").num_features
    512
"""

# The family modules register their factories on import.
from ssl_lightning.backbones import convnet, external, resnet, vit
from ssl_lightning.backbones.convnet import ConvNet
from ssl_lightning.backbones.external import TimmBackbone, TorchvisionBackbone
from ssl_lightning.backbones.memory_format import prefers_channels_last, resolve_channels_last
from ssl_lightning.backbones.registry import (
    UnknownBackboneError,
    create_backbone,
    list_backbones,
    register_backbone,
    register_family,
)
from ssl_lightning.backbones.resnet import ResNet
from ssl_lightning.backbones.stages import Stages, resolve_stages, stage_features
from ssl_lightning.backbones.vit import VisionTransformer

__all__ = [
    "ConvNet",
    "ResNet",
    "Stages",
    "TimmBackbone",
    "TorchvisionBackbone",
    "UnknownBackboneError",
    "VisionTransformer",
    "convnet",
    "create_backbone",
    "external",
    "list_backbones",
    "prefers_channels_last",
    "register_backbone",
    "register_family",
    "resnet",
    "resolve_channels_last",
    "resolve_stages",
    "stage_features",
    "vit",
]
