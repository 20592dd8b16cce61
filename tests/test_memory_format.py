"""Channels-last by default for conv backbones only, and an explicit choice kept."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ssl_lightning import SimCLR, create_backbone
from ssl_lightning.backbones import prefers_channels_last


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("convnet", {"width": 4}, True),
        ("resnet18", {"width": 4}, True),
        ("vit_tiny", {"dim": 24, "depth": 1, "num_heads": 2}, False),
    ],
)
def test_conv_backbones_prefer_channels_last(name: str, kwargs: dict, expected: bool) -> None:
    assert prefers_channels_last(create_backbone(name, **kwargs)) is expected


def test_a_module_without_convolutions_stays_contiguous() -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 8))
    assert not prefers_channels_last(mlp)
    assert not prefers_channels_last(nn.Identity())  # no parameters at all


@pytest.mark.parametrize("requested", [None, True, False])
def test_method_default_follows_the_backbone_and_an_explicit_value_wins(
    requested: bool | None,
) -> None:
    conv = SimCLR(backbone="convnet", backbone_kwargs={"width": 4}, channels_last=requested)
    vit_kwargs = {"dim": 24, "depth": 1, "num_heads": 2}
    vit = SimCLR(backbone="vit_tiny", backbone_kwargs=vit_kwargs, channels_last=requested)
    assert conv.channels_last is (True if requested is None else requested)
    assert vit.channels_last is (False if requested is None else requested)


def test_default_setup_converts_conv_weights_and_inputs() -> None:
    model = SimCLR(backbone="convnet", backbone_kwargs={"width": 4})
    model.setup("fit")
    conv = next(m for m in model.backbone.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 8, 8)
    assert model._memory_format(x).is_contiguous(memory_format=torch.channels_last)
