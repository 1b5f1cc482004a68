"""Ray-free inference on one block of imagery: tiling, batched forward passes, blending and thresholding,
all on the model's device.

`predict_block` takes any nn.Module that maps N x 3 x H x W floats in [0, 1] to N x 1 x H x W logits, so
tests and benchmarks can call it directly; the segment pipeline's inference actor only wraps it. The block
goes to the device once as uint8 and is cropped into tiles and normalized (`/ 255`) there; the blended
probabilities stay there, and only the compact uint8 mask and probability come back (`to_mask`,
`to_probability_bytes`).

The forward passes run on a thread of their own while this thread cuts the next batch and blends the last
one: on a GPU, host work overlaps device work; on the CPU, torch's ops release the GIL, so the two overlap
on spare cores.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from segcore.model.inputs import autocast_for, prepare_input
from segcore.raster.blend import accumulate, weight_window
from segcore.raster.cog import MASK_NODATA
from segcore.raster.grid import tile_starts


@dataclass
class BlockPrediction:
    probability: torch.Tensor  # float32 [h, w] on the model's device; NaN where the input is nodata
    tiles_computed: int
    tiles_skipped: int  # tiles holding nodata only: never sent to the model
    # CPU seconds of this process, by step: "tiling" (the block to the device, tiles cut and normalized), "forward"
    # (the model), "blend" (weighting and summing tiles). On a GPU the host spends them launching device work.
    cpu_s: dict[str, float] = field(default_factory=dict)


def pick_device(gpus: float) -> torch.device:
    """CUDA when this process was given a GPU share and one is visible, else the CPU."""
    return torch.device("cuda") if gpus > 0 and torch.cuda.is_available() else torch.device("cpu")


def tile_origins(height: int, width: int, tile_size: int, overlap: int) -> list[tuple[int, int]]:
    """(row, col) of the tiles covering a height x width array, each inside it (the array is >= one tile)."""
    stride = tile_size - overlap
    return [(row, col) for row in tile_starts(height, tile_size, stride, pad_end=False)
            for col in tile_starts(width, tile_size, stride, pad_end=False)]


# Test-time augmentation: the views of each tile the model sees, as (quarter turns, mirrored). Seen from above,
# roofs have no preferred orientation, so the mean over the square's symmetries is a steadier estimate.
TTA_VIEWS: dict[str, tuple[tuple[int, bool], ...]] = {
    "none": ((0, False),),
    "flip": ((0, False), (0, True)),
    "d4": tuple((turns, mirrored) for turns in range(4) for mirrored in (False, True)),
}


def _forward(model: nn.Module, tiles: torch.Tensor, device: torch.device, precision: str,
             views: Sequence[tuple[int, bool]]) -> tuple[torch.Tensor, float]:
    """The tiles' probabilities, the mean over `views` each turned back, and the CPU seconds this thread
    spent on them."""
    started = time.thread_time()
    memory_format = torch.channels_last if tiles.is_contiguous(memory_format=torch.channels_last) \
        else torch.contiguous_format
    total: torch.Tensor | None = None
    with torch.inference_mode(), autocast_for(device, precision):
        for turns, mirrored in views:
            view = tiles.flip(-1) if mirrored else tiles
            view = torch.rot90(view, turns, (-2, -1)) if turns else view  # rot90 by 0 would copy
            probability = model(view.contiguous(memory_format=memory_format))[:, 0].float().sigmoid()
            probability = torch.rot90(probability, -turns, (-2, -1)) if turns else probability
            probability = probability.flip(-1) if mirrored else probability
            total = probability if total is None else total + probability
    assert total is not None, "no views"
    return total / len(views) if len(views) > 1 else total, time.thread_time() - started


def predict_block(model: nn.Module, rgb: np.ndarray, valid: np.ndarray, *, tile_size: int, overlap: int,
                  batch_size: int, device: torch.device | str = "cpu", precision: str = "fp32",
                  channels_last: bool = False, tta: str = "none",
                  origins: Sequence[tuple[int, int]] | None = None) -> BlockPrediction:
    """Blended building probabilities for uint8 rgb [3, h, w] with a valid mask [h, w].

    `origins`: the tiles to compute, (row, col) in the block (default: `tile_origins` over it). Tiles holding
    nodata only are skipped. An array smaller than a tile is padded to one (as nodata) and cropped back.
    bf16 autocast applies on CUDA only; channels_last applies on every device (pass a model converted to it):
    oneDNN's NHWC convolutions are faster on the CPU as well. `tta` (a key of TTA_VIEWS) averages each tile's
    probabilities over flipped and turned views before blending: 2 or 8 forward passes per tile.
    """
    device = torch.device(device)
    height, width = valid.shape
    padded_h, padded_w = max(height, tile_size), max(width, tile_size)
    if (padded_h, padded_w) != (height, width):
        rgb = np.pad(rgb, ((0, 0), (0, padded_h - height), (0, padded_w - width)))
        valid = np.pad(valid, ((0, padded_h - height), (0, padded_w - width)))
    origins = list(origins) if origins is not None else tile_origins(padded_h, padded_w, tile_size, overlap)
    # Per-tile any() costs microseconds; a summed-area table of a whole block costs more than it saves.
    kept = [(row, col) for row, col in origins if valid[row:row + tile_size, col:col + tile_size].any()]

    cpu = dict(tiling=0.0, forward=0.0, blend=0.0)
    clock = time.thread_time()
    window = weight_window(tile_size, overlap, device)
    total = torch.zeros((padded_h, padded_w), dtype=torch.float32, device=device)
    weights = torch.zeros_like(total)
    # Arrays from Ray's object store are read-only, which torch.from_numpy warns about: copy those.
    host = torch.from_numpy(np.require(rgb, requirements=("C", "W")))
    image = (host.pin_memory() if device.type == "cuda" else host).to(device, non_blocking=True)
    batches = [kept[start:start + batch_size] for start in range(0, len(kept), batch_size)]
    with ThreadPoolExecutor(1, thread_name_prefix="forward") as forward, torch.inference_mode():
        pending: tuple[list, Future] | None = None
        for batch in [*batches, None]:
            submitted = None
            if batch is not None:
                tiles = prepare_input(torch.stack([image[:, r:r + tile_size, c:c + tile_size] for r, c in batch]),
                                      channels_last)
                submitted = (batch, forward.submit(_forward, model, tiles, device, precision, TTA_VIEWS[tta]))
            clock = _lap(cpu, "tiling", clock)
            if pending is not None:  # blend the previous batch while this one runs
                probabilities, forward_s = pending[1].result()
                cpu["forward"] += forward_s
                clock = time.thread_time()  # waiting for the forward pass is not this thread's work
                accumulate(total, weights, probabilities, pending[0], window)
                clock = _lap(cpu, "blend", clock)
            pending = submitted
        probability = total / weights
        probability[~torch.from_numpy(np.ascontiguousarray(valid)).to(device)] = torch.nan  # also 0/0 pixels
        _lap(cpu, "blend", clock)
    return BlockPrediction(probability[:height, :width], len(kept), len(origins) - len(kept), cpu)


def _lap(cpu: dict[str, float], step: str, since: float) -> float:
    """Add this thread's CPU seconds since `since` to `step`; the new mark."""
    now = time.thread_time()
    cpu[step] += now - since
    return now


def resample_probability(probability: torch.Tensor, valid: np.ndarray) -> torch.Tensor:
    """Probabilities [H, W] (NaN where nodata) of a resampled block, back on the block's own grid of
    `valid.shape` (bilinear, antialiased when shrinking; nodata pixels do not bleed in), on their device.
    NaN where `valid` is false."""
    known = ~torch.isnan(probability)
    both = torch.stack([torch.where(known, probability, 0.0), known.float()])[None]
    shrinking = valid.shape[0] < probability.shape[0]
    sums, weights = F.interpolate(both, size=valid.shape, mode="bilinear", align_corners=False,
                                  antialias=shrinking)[0]
    inside = torch.from_numpy(np.ascontiguousarray(valid)).to(probability.device) & (weights > 1e-6)
    return torch.where(inside, sums / weights.clamp_min(1e-6), torch.nan).clamp_(0, 1)


def to_mask(probability: torch.Tensor, threshold: float) -> np.ndarray:
    """uint8 mask, made on the probability's device: 1 building (probability >= threshold), 0 background,
    255 nodata (NaN)."""
    mask = (probability >= threshold).to(torch.uint8)
    mask[torch.isnan(probability)] = MASK_NODATA
    return mask.cpu().numpy()


def to_probability_bytes(probability: torch.Tensor) -> np.ndarray:
    """uint8 probability, round(p * 255) (ties to even), made on the probability's device; nodata becomes 0
    (the mask carries nodata)."""
    return torch.round(torch.nan_to_num(probability, nan=0.0) * 255.0).to(torch.uint8).cpu().numpy()
