"""Backbones from other libraries behind the same contract: ``torchvision/...``, ``timm/...``.

Weights are never downloaded here (``weights=None`` / ``pretrained=False``): self-supervised
pretraining starts from random initialization.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torchvision
from torch import Tensor, nn

from ssl_lightning.backbones.registry import register_family

__all__ = ["TimmBackbone", "TorchvisionBackbone"]


class _Captured(Exception):
    """Carries a tensor out of a hook, which also stops the rest of the forward pass."""

    def __init__(self, tensor: Tensor) -> None:
        super().__init__()
        self.tensor = tensor


class TorchvisionBackbone(nn.Module):
    """A torchvision classification model with its classifier removed.

    The last ``nn.Linear`` of the model (the one producing the logits) becomes ``nn.Identity``,
    so ``forward`` returns what that layer received: the pooled features, after any pre-logit
    layers the model has (e.g. MobileNetV3's hidden Linear, or dropout in training mode).

    ``forward_features`` returns the input of the model's last ``nn.AdaptiveAvgPool2d``
    (``[B, C, h, w]``), or, for Vision Transformers, the encoder's output tokens
    ``[B, 1 + N, D]`` (class token first). The rest of the model is not run.

    Args:
        name: a torchvision classification model name, e.g. ``"resnet50"``; see
            ``list_backbones("torchvision/*")``.
        **kwargs: keyword arguments of the torchvision builder (``image_size=32`` for ViTs).

    Attributes:
        num_features: ``in_features`` of the removed classifier layer.

    Raises:
        NotImplementedError: if the model has no ``nn.Linear`` classifier (SqueezeNet).
        ValueError: if the model returns auxiliary logits (GoogLeNet, Inception v3) and
            ``aux_logits=False`` was not passed.
    """

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__()
        model = torchvision.models.get_model(name, weights=None, **kwargs)
        if getattr(model, "aux_logits", False):
            raise ValueError(
                f"torchvision/{name} returns auxiliary logits while training, which breaks the "
                "pooled-feature contract; pass aux_logits=False in the backbone kwargs"
            )
        linears: list[tuple[str, nn.Linear]] = [
            (n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)
        ]
        if not linears:
            raise NotImplementedError(
                f"torchvision/{name} has no nn.Linear classifier to remove, so its pooled "
                "features cannot be exposed; choose another model from "
                "list_backbones('torchvision/*')"
            )
        classifier_name, classifier = linears[-1]
        parent_name, _, child_name = classifier_name.rpartition(".")
        setattr(model.get_submodule(parent_name), child_name, nn.Identity())

        self.name = name
        self.model = model
        self.num_features: int = classifier.in_features

    def forward(self, x: Tensor) -> Tensor:
        """Pooled features: ``[B, 3, H, W] -> [B, num_features]``."""
        return self.model(x)

    def forward_features(self, x: Tensor) -> Tensor:
        """Unpooled features ``[B, C, h, w]`` (CNNs) or tokens ``[B, 1 + N, D]`` (ViTs).

        Args:
            x: images ``[B, 3, H, W]``.

        Raises:
            NotImplementedError: if the model pools functionally (DenseNet, ShuffleNet,
                MNASNet), so there is no module whose input is the feature map.
        """
        if isinstance(self.model, torchvision.models.VisionTransformer):
            handle = self.model.encoder.register_forward_hook(_raise_output)
        else:
            pools = [m for m in self.model.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
            if not pools:
                raise NotImplementedError(
                    f"torchvision/{self.name} pools without an nn.AdaptiveAvgPool2d module, so "
                    "forward_features cannot find its feature map; use the pooled forward() or "
                    "another model"
                )
            handle = pools[-1].register_forward_pre_hook(_raise_input)
        try:
            self.model(x)
        except _Captured as captured:
            return captured.tensor
        finally:
            handle.remove()
        raise RuntimeError(f"torchvision/{self.name}: the feature hook was never reached")

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """One stage, :meth:`forward_features`: torchvision models expose no common stage list."""
        return [self.forward_features(x)]


def _raise_input(module: nn.Module, args: tuple[Tensor, ...]) -> None:
    raise _Captured(args[0])


def _raise_output(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
    raise _Captured(output)


def _torchvision_names() -> list[str]:
    # module=torchvision.models keeps the classification builders only (no detection, video,
    # quantized, ...).
    return list(torchvision.models.list_models(module=torchvision.models))


class TimmBackbone(nn.Module):
    """A timm model built with ``num_classes=0``, which already follows the contract.

    Args:
        name: a timm architecture name, see ``list_backbones("timm/*")``.
        **kwargs: keyword arguments of ``timm.create_model``.

    Attributes:
        num_features: width of the pooled output (timm's ``head_hidden_size`` where a model
            has pre-logit layers, else its ``num_features``).
    """

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__()
        timm = _import_timm()
        self.model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        self.num_features: int = (
            getattr(self.model, "head_hidden_size", None) or self.model.num_features
        )

    def forward(self, x: Tensor) -> Tensor:
        """Pooled features: ``[B, 3, H, W] -> [B, num_features]``."""
        return self.model(x)

    def forward_features(self, x: Tensor) -> Tensor:
        """Unpooled features ``[B, C, h, w]`` or tokens ``[B, N, D]``, as timm returns them."""
        return self.model.forward_features(x)

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """One stage, :meth:`forward_features`."""
        return [self.forward_features(x)]


def _import_timm() -> ModuleType:
    try:
        import timm
    except ImportError as err:
        raise ImportError(
            "timm backbones need the timm package: pip install 'ssl-lightning[timm]'"
        ) from err
    return timm


def _timm_names() -> list[str]:
    return list(_import_timm().list_models())


register_family("torchvision", TorchvisionBackbone, _torchvision_names)
register_family("timm", TimmBackbone, _timm_names)
