"""Ray-free inference on one block of imagery: tiling, batched forward passes, blending, thresholding.

`predict_block` takes any nn.Module that maps N x 3 x H x W floats in [0, 1] to N x 1 x H x W logits,
so tests and benchmarks can call it directly; the Ray actor of the segment pipeline only wraps it.
The block goes to the device once as uint8 and is cropped and normalized (`/ 255`) there.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from segcore.model.inputs import autocast_for, prepare_input
from segcore.raster.blend import accumulate, weight_window
from segcore.raster.grid import tile_starts

MASK_NODATA = 255  # mask values: 1 building, 0 background, 255 nodata


@dataclass
class BlockPrediction:
    probability: np.ndarray  # float32 [h, w]; NaN where the input is nodata
    tiles_computed: int
    tiles_skipped: int  # tiles holding nodata only: never sent to the model


def pick_device(gpus: float) -> torch.device:
    """CUDA when this process was given a GPU share and one is visible, else the CPU."""
    return torch.device("cuda") if gpus > 0 and torch.cuda.is_available() else torch.device("cpu")


def tile_origins(height: int, width: int, tile_size: int, overlap: int) -> list[tuple[int, int]]:
    """(row, col) of the tiles covering a height x width array, each inside it (the array is >= one tile)."""
    stride = tile_size - overlap
    return [(row, col) for row in tile_starts(height, tile_size, stride, pad_end=False)
            for col in tile_starts(width, tile_size, stride, pad_end=False)]


def predict_block(model: nn.Module, rgb: np.ndarray, valid: np.ndarray, *, tile_size: int, overlap: int,
                  batch_size: int, device: torch.device | str = "cpu", precision: str = "fp32",
                  channels_last: bool = False) -> BlockPrediction:
    """Blended building probabilities for uint8 rgb [3, h, w] with a valid mask [h, w].

    Arrays smaller than a tile are padded to one (as nodata) and cropped back. bf16 autocast applies on
    CUDA only: on the CPU it is slower, and fp32 keeps CPU runs exact. channels_last applies on every
    device (pass a model converted to it): oneDNN's NHWC convolutions are faster on the CPU as well.
    """
    device = torch.device(device)
    height, width = valid.shape
    padded_h, padded_w = max(height, tile_size), max(width, tile_size)
    if (padded_h, padded_w) != (height, width):
        rgb = np.pad(rgb, ((0, 0), (0, padded_h - height), (0, padded_w - width)))
        valid = np.pad(valid, ((0, padded_h - height), (0, padded_w - width)))
    origins = tile_origins(padded_h, padded_w, tile_size, overlap)
    # Per-tile any() costs microseconds; a summed-area table of a whole block cost 5 % of its compute.
    keep = [bool(valid[row:row + tile_size, col:col + tile_size].any()) for row, col in origins]
    origins = [origin for origin, kept in zip(origins, keep) if kept]

    window = weight_window(tile_size, overlap, device)
    total = torch.zeros((padded_h, padded_w), dtype=torch.float32, device=device)
    weights = torch.zeros_like(total)
    # Arrays from Ray's object store are read-only, which torch.from_numpy warns about: copy those.
    image = torch.from_numpy(np.require(rgb, requirements=("C", "W"))).to(device, non_blocking=True)
    with torch.inference_mode():
        for start in range(0, len(origins), batch_size):
            batch = origins[start:start + batch_size]
            tiles = prepare_input(torch.stack([image[:, r:r + tile_size, c:c + tile_size] for r, c in batch]),
                                  channels_last)
            with autocast_for(device, precision):
                logits = model(tiles)
            accumulate(total, weights, logits[:, 0].float().sigmoid(), batch, window)
        probability = (total / weights).cpu().numpy()
    probability[~valid] = np.nan  # also covers pixels no computed tile reached (0 / 0)
    return BlockPrediction(probability[:height, :width], len(origins), len(keep) - len(origins))


def to_mask(probability: np.ndarray, threshold: float) -> np.ndarray:
    """uint8 mask: 1 building (probability >= threshold), 0 background, 255 nodata (NaN)."""
    mask = (probability >= threshold).astype(np.uint8)
    mask[np.isnan(probability)] = MASK_NODATA
    return mask


def to_probability_bytes(probability: np.ndarray) -> np.ndarray:
    """uint8 probability, round(p * 255); nodata becomes 0 (the mask carries nodata)."""
    return np.rint(np.nan_to_num(probability, nan=0.0) * 255.0).astype(np.uint8)
