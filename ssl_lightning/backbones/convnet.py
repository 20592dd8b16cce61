"""A small convolutional encoder, the size of the classic patch-reconstruction examples."""

from __future__ import annotations

from torch import Tensor, nn

from ssl_lightning.backbones.registry import register_backbone

__all__ = ["ConvNet", "convnet"]


class ConvNet(nn.Module):
    """``conv3x3 -> BatchNorm -> ReLU -> maxpool2x2`` blocks, then global average pooling.

    Small enough to train on a CPU. With two blocks the feature map keeps a quarter of the
    input resolution, which suits inpainting-style pretext tasks that decode it back to
    pixels; four blocks of 32-64-128-256 channels (about 0.39M parameters) make the small
    network of the CPU quality benchmarks.

    Args:
        channels: output channels of the blocks, one block each.

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

    def __init__(self, channels: tuple[int, ...] = (32, 64)) -> None:
        super().__init__()
        if len(channels) < 1 or min(channels) < 1:
            raise ValueError(
                f"ConvNet `channels` must be positive channel counts, one per block, got {channels}"
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

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """Every block's output: ``[B, channels[i], H / 2^(i+1), W / 2^(i+1)]`` for block ``i``."""
        self._check_size(x)
        stages = []
        for i in range(0, len(self.features), 4):  # conv, norm, relu, pool per block
            x = self.features[i : i + 4](x)
            stages.append(x)
        return stages

    def forward_features(self, x: Tensor) -> Tensor:
        """Unpooled features: ``[B, 3, H, W] -> [B, num_features, H / 2^blocks, W / 2^blocks]``."""
        self._check_size(x)
        return self.features(x)

    def _check_size(self, x: Tensor) -> None:
        """Raises, naming the fix, on images a side of which the blocks would halve to 0."""
        blocks = len(self.features) // 4
        height, width = x.shape[-2:]
        if min(height, width) < 2**blocks:
            raise ValueError(
                f"a {blocks}-block convnet halves its input {blocks} times and needs images of "
                f"at least {2**blocks} pixels a side, got {height}x{width}; give it larger "
                "views (e.g. data.corruption.local_size) or fewer blocks "
                "(model.backbone_kwargs.depth)"
            )

    def forward(self, x: Tensor) -> Tensor:
        """Globally average-pooled features: ``[B, 3, H, W] -> [B, num_features]``."""
        return self.forward_features(x).mean(dim=(2, 3))


@register_backbone
def convnet(width: int = 32, depth: int = 2) -> ConvNet:
    """Small conv encoder of ``depth`` blocks with ``width * 2^i`` channels (block ``i``);
    ``num_features = width * 2^(depth - 1)``. ``depth=4``: the CPU benchmarks' network."""
    if depth < 1:
        raise ValueError(f"convnet depth must be >= 1, got {depth} (set backbone_kwargs.depth)")
    return ConvNet(channels=tuple(width * 2**i for i in range(depth)))
