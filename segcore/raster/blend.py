"""Blending overlapping tile predictions into one seamless block, and cropping a block's halo away.

Each tile's probabilities are weighted by a separable raised-cosine window that falls from 1 in the
tile's middle towards a small positive floor at its edges, over `overlap` pixels. Two neighbours'
ramps then sum to about 1 across their shared strip, so the result fades from one tile to the next
instead of switching at a seam, and the floor keeps a pixel that only one tile's edge covers (the
raster's border) well defined. The blended value is sum(w * p) / sum(w).
"""
from __future__ import annotations

import math

import torch

EDGE_FLOOR = 1e-3  # weight of a tile's outermost pixels, relative to its middle


def weight_window(tile_size: int, overlap: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """float32 [tile_size, tile_size] blending weights, separable, in [EDGE_FLOOR, 1]."""
    ramp = torch.ones(tile_size, dtype=torch.float64)
    if overlap > 0:
        # Pixel centres at (i + 0.5) / overlap: the cosine rises over exactly `overlap` pixels.
        phase = (torch.arange(overlap, dtype=torch.float64) + 0.5) / overlap
        rise = EDGE_FLOOR + (1.0 - EDGE_FLOOR) * 0.5 * (1.0 - torch.cos(math.pi * phase))
        ramp[:overlap] = rise
        ramp[tile_size - overlap:] = torch.minimum(ramp[tile_size - overlap:], rise.flip(0))
    return torch.outer(ramp, ramp).to(device=device, dtype=torch.float32)


def accumulate(total: torch.Tensor, weights: torch.Tensor, probs: torch.Tensor, origins: list[tuple[int, int]],
               window: torch.Tensor) -> None:
    """Add window-weighted tile probabilities [n, t, t] at their (row, col) origins into `total` and `weights`.

    Slice-adds in a fixed order rather than one scatter (index_add_): on CUDA a scatter sums with atomics
    in no fixed order, and a rerun must reproduce a block bit for bit.
    """
    size = window.shape[0]
    weighted = probs * window
    for (row, col), tile in zip(origins, weighted, strict=True):
        total[row:row + size, col:col + size] += tile
        weights[row:row + size, col:col + size] += window
