"""Segmentation models: a name -> class registry and small helpers."""

from torch import nn

from segcore.model.refinenet import RESNET_BACKBONES, RefineNet

MODELS = {"refinenet": RefineNet}


def build_model(arch: str, backbone: str, decoder_width: int, pretrained: bool) -> RefineNet:
    """Build ``MODELS[arch]`` on ``backbone``; ValueError names unknown values and the allowed ones."""
    if arch not in MODELS:
        raise ValueError(f"unknown model arch {arch!r}; expected one of {sorted(MODELS)}")
    if backbone not in RESNET_BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r} for {arch}; expected one of {sorted(RESNET_BACKBONES)}")
    return MODELS[arch](backbone=backbone, decoder_width=decoder_width, pretrained=pretrained)


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements, frozen ones included (the figure the fork reports)."""
    return sum(parameter.numel() for parameter in model.parameters())


__all__ = ["MODELS", "RefineNet", "build_model", "count_parameters"]
