"""ResNet backbones with a CIFAR stem by default and a configurable base width.

Module names follow torchvision's ResNet (``conv1``, ``bn1``, ``layer1``..``layer4``,
``downsample``), so with ``cifar_stem=False`` and ``width=64`` a torchvision checkpoint
without its ``fc`` loads with ``strict=True``.
"""

from __future__ import annotations

from torch import Tensor, nn

from ssl_lightning.backbones.registry import register_backbone

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50"]


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def _conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34).

    Args:
        in_channels: input channels.
        channels: output channels (``channels * expansion``, with ``expansion = 1``).
        stride: stride of the first convolution; 2 halves the spatial size.
    """

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = _shortcut(in_channels, channels * self.expansion, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The BatchNorm closing the residual branch (zeroed by ``zero_init_residual``)."""
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        """``[B, in_channels, H, W] -> [B, channels, H / stride, W / stride]``."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) with a residual connection (ResNet-50 and deeper).

    The stride sits on the 3x3 convolution ("ResNet v1.5", as in torchvision).

    Args:
        in_channels: input channels.
        channels: bottleneck channels; the block outputs ``channels * 4``.
        stride: stride of the 3x3 convolution; 2 halves the spatial size.
    """

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv1x1(in_channels, channels)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = _conv3x3(channels, channels, stride)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = _conv1x1(channels, channels * self.expansion)
        self.bn3 = nn.BatchNorm2d(channels * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, channels * self.expansion, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The BatchNorm closing the residual branch (zeroed by ``zero_init_residual``)."""
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        """``[B, in_channels, H, W] -> [B, 4 * channels, H / stride, W / stride]``."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    """Projection shortcut where the residual changes shape, else None (identity)."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(_conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))


class ResNet(nn.Module):
    """ResNet feature extractor without a classifier.

    He et al., "Deep Residual Learning for Image Recognition", 2015,
    https://arxiv.org/abs/1512.03385

    Stages have ``width, 2 * width, 4 * width, 8 * width`` channels (times the block's
    expansion) and strides 1, 2, 2, 2 after the stem. The CIFAR stem (a 3x3 stride-1
    convolution, no max-pool) keeps small images large: 32x32 inputs give a 4x4 final map,
    where the ImageNet stem (7x7 stride-2 convolution + max-pool) gives 1x1.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: number of blocks in each of the four stages.
        width: base channel count (64 in the paper); smaller values give thin networks.
        cifar_stem: use the CIFAR stem instead of the ImageNet one.
        zero_init_residual: start every residual branch at zero (its last BatchNorm's weight is
            zero), so each block is initially the identity (Goyal et al., arXiv:1706.02677).

    Attributes:
        num_features: channels of the final map, ``8 * width * block.expansion``.

    Examples:
        >>> import torch
        >>> model = ResNet(BasicBlock, (2, 2, 2, 2), width=8)
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 64])
        >>> model.forward_features(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 64, 4, 4])
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        width: int = 64,
        cifar_stem: bool = True,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"ResNet `width` must be a positive channel count, got {width}")
        if cifar_stem:
            self.conv1 = _conv3x3(3, width)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)

        in_channels = width
        stages = []
        for i, num_blocks in enumerate(layers):
            channels = width * 2**i
            blocks = []
            for j in range(num_blocks):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block(in_channels, channels, stride))
                in_channels = channels * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.num_features: int = in_channels

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn.weight)

    def forward_features(self, x: Tensor) -> Tensor:
        """Unpooled features.

        Args:
            x: images ``[B, 3, H, W]``.

        Returns:
            The final map ``[B, num_features, H / 8, W / 8]`` (CIFAR stem) or
            ``[B, num_features, H / 32, W / 32]`` (ImageNet stem), sizes rounded up.
        """
        return self.forward_stages(x)[-1]

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """The four stages' maps ``[B, C_i, h_i, w_i]``, ``C_i = 2^i * width * expansion``,
        each half the previous side after the first; the last is :meth:`forward_features`."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        stages = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            stages.append(x)
        return stages

    def forward(self, x: Tensor) -> Tensor:
        """Globally average-pooled features: ``[B, 3, H, W] -> [B, num_features]``."""
        return self.forward_features(x).mean(dim=(2, 3))


@register_backbone
def resnet18(width: int = 64, cifar_stem: bool = True, zero_init_residual: bool = False) -> ResNet:
    """ResNet-18 (BasicBlock, 2-2-2-2); ``num_features = 8 * width`` (512 at width 64)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), width, cifar_stem, zero_init_residual)


@register_backbone
def resnet34(width: int = 64, cifar_stem: bool = True, zero_init_residual: bool = False) -> ResNet:
    """ResNet-34 (BasicBlock, 3-4-6-3); ``num_features = 8 * width`` (512 at width 64)."""
    return ResNet(BasicBlock, (3, 4, 6, 3), width, cifar_stem, zero_init_residual)


@register_backbone
def resnet50(width: int = 64, cifar_stem: bool = True, zero_init_residual: bool = False) -> ResNet:
    """ResNet-50 (Bottleneck, 3-4-6-3); ``num_features = 32 * width`` (2048 at width 64)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), width, cifar_stem, zero_init_residual)
