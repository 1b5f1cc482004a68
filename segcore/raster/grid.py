"""Where tiles and blocks lie on a raster: pure functions of sizes, so every run plans the same grid.

- A *tile* is one model input (tile_size a side). Tiles lie on one grid over the whole raster, every
  `tile_size - overlap` pixels (the last one moved back to end at the raster's edge), and neighbouring tiles
  share `overlap` pixels.
- A *block* is the unit of work, retry and resume of segmentation: a core of about block_size a side, aligned
  to the tile stride, read with a halo that holds exactly the tiles touching the core. Every block size
  therefore blends the same tiles with the same weights: the mask does not depend on it.
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
    halo_top: int  # context read around the core (beyond the raster only for a raster smaller than a tile)
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

    def crop(self, array):
        """The core of an array (numpy or torch) that covers the read window; the last two axes are rows and
        columns."""
        return array[..., self.halo_top:self.halo_top + self.height, self.halo_left:self.halo_left + self.width]


def plan_blocks(width: int, height: int, core: int) -> list[Block]:
    """Blocks of `core` pixels a side (smaller at the right and bottom edges) in row-major order, covering the
    raster exactly once, without halos: a layout of a raster's windows."""
    return [Block(index, row, col, min(core, height - row), min(core, width - col), 0, 0, 0, 0)
            for index, (row, col) in enumerate((row, col) for row in range(0, height, core)
                                               for col in range(0, width, core))]


def _touching(starts: list[int], tile: int, first: int, end: int) -> list[int]:
    """The tile starts whose tiles overlap [first, end)."""
    return [start for start in starts if start < end and start + tile > first]


def segment_blocks(width: int, height: int, block_size: int, tile_size: int, overlap: int) -> list[Block]:
    """Blocks for segmentation on the raster's one tile grid: cores of block_size rounded down to a multiple of
    the stride (at least one stride), halos reaching exactly as far as the tiles touching the core."""
    stride = tile_size - overlap
    core = max(1, block_size // stride) * stride
    rows, cols = (tile_starts(length, tile_size, stride, pad_end=False) for length in (height, width))
    blocks = []
    for layout in plan_blocks(width, height, core):
        top, left = _touching(rows, tile_size, layout.row, layout.row + layout.height), \
            _touching(cols, tile_size, layout.col, layout.col + layout.width)
        blocks.append(Block(layout.index, layout.row, layout.col, layout.height, layout.width,
                            layout.row - top[0], layout.col - left[0],
                            top[-1] + tile_size - layout.row - layout.height,
                            left[-1] + tile_size - layout.col - layout.width))
    return blocks


def block_tiles(block: Block, width: int, height: int, tile_size: int, overlap: int) -> list[tuple[int, int]]:
    """(row, col) of the grid's tiles touching `block`'s core, relative to its read window, row-major."""
    stride = tile_size - overlap
    window = block.read_window
    rows = _touching(tile_starts(height, tile_size, stride, pad_end=False), tile_size, block.row,
                     block.row + block.height)
    cols = _touching(tile_starts(width, tile_size, stride, pad_end=False), tile_size, block.col,
                     block.col + block.width)
    return [(row - int(window.row_off), col - int(window.col_off)) for row in rows for col in cols]
