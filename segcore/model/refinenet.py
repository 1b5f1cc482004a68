"""RefineNet (Lin et al. 2017, arXiv:1611.06612) on a torchvision ResNet backbone.

The layout and arithmetic match the public ``building_footprint_segmentation`` fork
(``seg/binary/models/refinenet.py``, version 0.2.4) so that its trained checkpoints load
into :class:`RefineNet` (see :mod:`segcore.model.fork`) and give the same logits.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

# Output widths of ResNet stages 1-4 (strides 4, 8, 16, 32).
_BASIC_BLOCK_WIDTHS = (64, 128, 256, 512)
_BOTTLENECK_WIDTHS = (256, 512, 1024, 2048)

# name -> (torchvision constructor, its weights enum, stage widths)
RESNET_BACKBONES = {
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights, _BASIC_BLOCK_WIDTHS),
    "resnet34": (torchvision.models.resnet34, torchvision.models.ResNet34_Weights, _BASIC_BLOCK_WIDTHS),
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights, _BOTTLENECK_WIDTHS),
    "resnet101": (torchvision.models.resnet101, torchvision.models.ResNet101_Weights, _BOTTLENECK_WIDTHS),
}

# The coarsest feature map is 1/32 of the input, and every decoder step doubles it exactly.
INPUT_SIZE_MULTIPLE = 32


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    """3x3 convolution with bias and 'same' padding."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=True)


# The fork's ReLUs are ``inplace=True``. In its residual conv unit and chained residual
# pooling the tensor kept for the skip connection is the *same* tensor the first ReLU then
# overwrites, so the skip carries relu(x), not x. Trained fork weights depend on that, so
# the two modules below compute it explicitly with out-of-place ReLUs.


class ResidualConvUnit(nn.Module):
    """RCU: ``relu(x) + conv2(relu(conv1(relu(x))))`` (skip on relu(x), as in the fork)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = conv3x3(channels, channels)
        self.conv2 = conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        return x + self.conv2(F.relu(self.conv1(x)))


class MultiResolutionFusion(nn.Module):
    """Sums a block's own path with the upsampled output of the next-coarser block.

    Each input first goes through its own 3x3 conv; the coarser one is then upsampled
    bilinearly (align_corners=True) to the own path's size, which is exactly 2x.
    """

    def __init__(self, channels: int, coarser_channels: int):
        super().__init__()
        self.own_conv = conv3x3(channels, channels)
        self.coarser_conv = conv3x3(coarser_channels, channels)

    def forward(self, x: torch.Tensor, coarser: torch.Tensor | None = None) -> torch.Tensor:
        x = self.own_conv(x)
        if coarser is None:
            return x
        coarser = self.coarser_conv(coarser)
        coarser = F.interpolate(coarser, size=x.shape[-2:], mode="bilinear", align_corners=True)
        return coarser + x


class ChainedResidualPooling(nn.Module):
    """Two chained (5x5 max-pool, 3x3 conv) stages sharing one conv, each added to the sum.

    With ``r = relu(x)``, ``a = conv(pool(r))`` and ``b = conv(pool(a))`` the output is
    ``b + (a + r)`` (same summation order as the fork, so results are bit-identical).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.pool = nn.MaxPool2d(kernel_size=5, stride=1, padding=2)
        self.conv = conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        first = self.conv(self.pool(x))
        second = self.conv(self.pool(first))
        return second + (first + x)


class RefineBlock(nn.Module):
    """One RefineNet block: RCU x2 -> fusion with the coarser block -> pooling -> RCU.

    A single RCU module is applied all three times (shared weights), as in the fork.
    """

    def __init__(self, channels: int, coarser_channels: int):
        super().__init__()
        self.rcu = ResidualConvUnit(channels)
        self.fusion = MultiResolutionFusion(channels, coarser_channels)
        self.pooling = ChainedResidualPooling(channels)

    def forward(self, x: torch.Tensor, coarser: torch.Tensor | None = None) -> torch.Tensor:
        x = self.rcu(self.rcu(x))
        x = self.fusion(x, coarser)
        x = self.pooling(x)
        return self.rcu(x)


class ResNetEncoder(nn.Module):
    """The stem and the four stages of a torchvision ResNet; returns the 1/4..1/32 features."""

    def __init__(self, name: str, pretrained: bool = False):
        super().__init__()
        if name not in RESNET_BACKBONES:
            raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(RESNET_BACKBONES)}")
        constructor, weights_enum, widths = RESNET_BACKBONES[name]
        resnet = constructor(weights=weights_enum.DEFAULT if pretrained else None)
        self.out_channels = widths
        self.conv1 = resnet.conv1
        self.bn1 = resnet.bn1
        self.relu = resnet.relu
        self.maxpool = resnet.maxpool
        self.layer1 = resnet.layer1
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3
        self.layer4 = resnet.layer4

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            features.append(x)
        return features


class RefineNet(nn.Module):
    """RefineNet-4cascaded for binary segmentation: one-channel logits at input resolution.

    Args:
        backbone: one of ``RESNET_BACKBONES`` (resnet18/34/50/101).
        decoder_width: channels of refine blocks 1-3; block 4 (1/32) uses twice that.
            256 is the fork's (and the paper's) width.
        pretrained: start the backbone from torchvision's ImageNet weights (downloads them).

    Input height and width must be multiples of 32.
    """

    # Key prefixes of the model's parts, so that a checkpoint can initialise some of them (train.init_parts).
    PARTS: ClassVar[dict[str, tuple[str, ...]]] = {
        "encoder": ("encoder.",), "decoder": ("adapters.", "refine_blocks.", "output_rcu."), "head": ("classifier.",)}

    def __init__(self, backbone: str = "resnet50", decoder_width: int = 256, pretrained: bool = False):
        super().__init__()
        self.backbone_name = backbone
        self.decoder_width = decoder_width
        self.encoder = ResNetEncoder(backbone, pretrained=pretrained)

        # One 3x3 conv per stage adapts the backbone widths to the decoder widths (sec. 3.1).
        widths = (decoder_width, decoder_width, decoder_width, 2 * decoder_width)
        self.adapters = nn.ModuleList(
            conv3x3(stage_channels, width)
            for stage_channels, width in zip(self.encoder.out_channels, widths, strict=True)
        )

        # refine_blocks[i] works at stride 4 * 2**i and fuses the output of refine_blocks[i + 1].
        # The top block has nothing coarser to fuse, but the fork still creates (and saves)
        # its coarser-path conv; it is kept so fork checkpoints load strictly and the
        # parameter count matches, and frozen because it never receives a gradient, which
        # DistributedDataParallel would otherwise reject as an unused parameter.
        coarser_widths = (widths[1], widths[2], widths[3], widths[3])
        blocks = [RefineBlock(w, c) for w, c in zip(widths, coarser_widths, strict=True)]
        blocks[3].fusion.coarser_conv.requires_grad_(False)
        self.refine_blocks = nn.ModuleList(blocks)

        # The paper ends each block with one RCU; two more after block 1 give the finest
        # path the same three-RCU sequence as the others (sec. 3.2). One module, applied twice.
        self.output_rcu = ResidualConvUnit(widths[0])
        self.classifier = nn.Conv2d(widths[0], 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height % INPUT_SIZE_MULTIPLE or width % INPUT_SIZE_MULTIPLE:
            raise ValueError(
                f"RefineNet input size {height}x{width} is not supported: "
                f"height and width must be multiples of {INPUT_SIZE_MULTIPLE}"
            )
        features = [adapter(f) for adapter, f in zip(self.adapters, self.encoder(x), strict=True)]

        refined = None
        for block, feature in zip(reversed(self.refine_blocks), reversed(features), strict=True):
            refined = block(feature, refined)

        logits = self.classifier(self.output_rcu(self.output_rcu(refined)))
        return F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=True)
