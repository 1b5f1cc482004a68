"""Model input, one rule for training and inference: uint8 RGB on the device, divided by 255 there.

Imagery and patches travel as uint8 (a quarter of float32's bytes) and become float in [0, 1] on the
device that runs the model. bf16 autocast applies on CUDA only: on the CPU it is slower, and fp32 keeps
CPU runs exact.
"""
from __future__ import annotations

import contextlib

import torch


def prepare_input(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """N x 3 x H x W uint8 (on the model's device) -> float32 in [0, 1], NHWC in memory if `channels_last`."""
    x = images.float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when `precision` is "bf16"; fp32 (no autocast) otherwise."""
    if device.type == "cuda" and precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
