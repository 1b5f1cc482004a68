"""raster.grid: tiles on one grid over the raster; segmentation blocks aligned to it, whose halos hold exactly
the tiles touching their cores."""
import pytest

from segcore.raster.grid import block_tiles, plan_blocks, segment_blocks, tile_starts


@pytest.mark.parametrize("width, height, block_size, tile, overlap", [
    (1000, 700, 512, 128, 32), (517, 389, 100, 64, 16), (2304, 2304, 2304, 384, 64), (50, 40, 500, 64, 16),
    (1, 100_000, 4096, 32, 0)])
def test_blocks_cover_the_raster_once_and_read_exactly_the_tiles_touching_their_cores(width, height, block_size,
                                                                                       tile, overlap):
    stride = tile - overlap
    grid = {(row, col) for row in tile_starts(height, tile, stride, pad_end=False)
            for col in tile_starts(width, tile, stride, pad_end=False)}
    blocks = segment_blocks(width, height, block_size, tile, overlap)
    covered = set()
    for block in blocks:
        assert block.row % stride == 0 and block.col % stride == 0  # cores aligned to the stride
        window = block.read_window
        tiles = {(row + int(window.row_off), col + int(window.col_off))
                 for row, col in block_tiles(block, width, height, tile, overlap)}
        touching = {(r, c) for r, c in grid if r < block.row + block.height and r + tile > block.row
                    and c < block.col + block.width and c + tile > block.col}
        assert tiles == touching and tiles <= grid
        assert min(r for r, _ in tiles) == window.row_off and max(r for r, _ in tiles) + tile == window.row_off + \
            window.height
        covered |= {(r, c) for r in range(block.row, block.row + block.height)
                    for c in range(block.col, block.col + block.width)} if width * height < 10**6 else set()
    if width * height < 10**6:
        assert len(covered) == width * height
    assert len(blocks) == len(plan_blocks(width, height, max(1, block_size // stride) * stride))


def test_the_block_size_is_rounded_down_to_the_tile_stride():
    (first, second, *_) = segment_blocks(2304, 1000, 2304, 384, 64)
    assert (first.width, second.col) == (2240, 2240)  # 2304 // 320 * 320
    assert (first.halo_top, first.halo_left, first.halo_right) == (0, 0, 64)
    assert second.halo_left == 320 and second.halo_right == 0
