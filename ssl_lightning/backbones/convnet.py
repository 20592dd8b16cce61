"""A small convolutional encoder, the size of the classic patch-reconstruction examples."""

from __future__ import annotations

from torch import Tensor, nn

from ssl_lightning.backbones.registry import register_backbone

__all__ = ["ConvNet", "convnet"]


class ConvNet(nn.Module):
    """Two ``conv3x3 -> BatchNorm -> ReLU -> maxpool2x2`` blocks, then global average pooling.

    Small enough to train on a CPU; the feature map keeps a quarter of the input resolution,
    which suits inpainting-style pretext tasks that decode it back to pixels.

    Args:
        channels: output channels of the two blocks.

    Attributes:
        num_features: ``channels[-1]``.

    Examples:
        >>> import torch
        >>> model = ConvNet(channels=(16, 32))
        >>> model.forward_features(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 32, 8, 8])
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 32])
    """

    def __init__(self, channels: tuple[int, int] = (32, 64)) -> None:
        super().__init__()
        if len(channels) != 2 or min(channels) < 1:
            raise ValueError(
                f"ConvNet `channels` must be two positive channel counts, got {channels}"
            )
        layers: list[nn.Module] = []
        in_channels = 3
        for out_channels in channels:
            layers += [
                nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.num_features: int = in_channels

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: Tensor) -> Tensor:
        """Unpooled features: ``[B, 3, H, W] -> [B, num_features, H // 4, W // 4]``."""
        return self.features(x)

    def forward(self, x: Tensor) -> Tensor:
        """Globally average-pooled features: ``[B, 3, H, W] -> [B, num_features]``."""
        return self.forward_features(x).mean(dim=(2, 3))


@register_backbone
def convnet(width: int = 32) -> ConvNet:
    """Small conv encoder with ``(width, 2 * width)`` channels; ``num_features = 2 * width``."""
    return ConvNet(channels=(width, 2 * width))
