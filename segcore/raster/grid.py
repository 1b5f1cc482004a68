"""Where tiles and blocks lie on a raster: pure functions of sizes, so every run plans the same grid.

- A *tile* is one model input (tile_size a side). Neighbouring tiles share `overlap` pixels.
- A *block* is the unit of work, retry and resume of segmentation: a core of up to block_size a side,
  read with a halo of context around it so that block seams are as good as tile seams.
"""
from __future__ import annotations

from dataclasses import dataclass

from rasterio.windows import Window


def tile_starts(length: int, tile: int, stride: int, *, pad_end: bool) -> list[int]:
    """Start offsets of tiles covering [0, length).

    pad_end=True: tiles every `stride` pixels; the last one may run past `length` (the remainder is padded,
    as patches for training are). pad_end=False: the last tile is moved back to end at `length`, so no
    compute is spent on padding (inference); a length shorter than one tile still gives one padded tile.
    """
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(starts[-1] + stride if pad_end else length - tile)
    return starts


def tile_windows(width: int, height: int, tile: int, overlap: int, *, pad_end: bool) -> list[Window]:
    stride = tile - overlap
    return [Window(col, row, tile, tile)
            for row in tile_starts(height, tile, stride, pad_end=pad_end)
            for col in tile_starts(width, tile, stride, pad_end=pad_end)]


@dataclass(frozen=True)
class Block:
    index: int
    row: int  # core window, in raster pixels
    col: int
    height: int
    width: int
    halo_top: int  # context read around the core, clipped at the raster's edges
    halo_left: int
    halo_bottom: int
    halo_right: int

    @property
    def core(self) -> Window:
        return Window(self.col, self.row, self.width, self.height)

    @property
    def read_window(self) -> Window:
        return Window(self.col - self.halo_left, self.row - self.halo_top,
                      self.width + self.halo_left + self.halo_right, self.height + self.halo_top + self.halo_bottom)


def plan_blocks(width: int, height: int, block_size: int, halo: int) -> list[Block]:
    """Blocks in row-major order covering the raster exactly once (edge blocks are smaller)."""
    blocks = []
    for row in range(0, height, block_size):
        for col in range(0, width, block_size):
            h, w = min(block_size, height - row), min(block_size, width - col)
            blocks.append(Block(len(blocks), row, col, h, w,
                                min(halo, row), min(halo, col),
                                min(halo, height - row - h), min(halo, width - col - w)))
    return blocks
