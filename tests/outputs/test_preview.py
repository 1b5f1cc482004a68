"""outputs.preview: a preview assembled from block thumbnails looks like the whole image shrunk at once, at the
size asked (never upscaled), with buildings outlined from the mask or from footprints."""
import cv2
import numpy as np
import pytest
import shapely

from segcore.outputs.preview import PreviewCanvas, preview_window, thumbnail
from segcore.raster.cog import MASK_NODATA
from segcore.raster.grid import plan_blocks
from tests.helpers import blobs


def canvas_of(rgb: np.ndarray, mask: np.ndarray, size: int, block_size: int) -> PreviewCanvas:
    height, width = mask.shape
    canvas = PreviewCanvas(width, height, size)
    for block in plan_blocks(width, height, block_size):
        rows, cols = slice(block.row, block.row + block.height), slice(block.col, block.col + block.width)
        canvas.add(block, thumbnail(rgb[:, rows, cols], block, canvas.scale), mask[rows, cols])
    return canvas


@pytest.mark.parametrize("block_size", [64, 100, 1000])
def test_block_thumbnails_tile_the_preview_like_one_resize(block_size):
    rng = np.random.default_rng(0)
    rgb = cv2.GaussianBlur(rng.integers(0, 256, (300, 450, 3), dtype=np.uint8), (0, 0), 6).transpose(2, 0, 1)
    mask = blobs(300, 450, seed=1)
    canvas = canvas_of(np.ascontiguousarray(rgb), mask, 150, block_size)
    assert canvas.rgb.shape == (100, 150, 3) and canvas.mask.shape == (100, 150)
    whole = cv2.resize(np.ascontiguousarray(rgb.transpose(1, 2, 0)), (150, 100), interpolation=cv2.INTER_AREA)
    assert np.abs(canvas.rgb.astype(int) - whole).mean() < 3  # only rounding at block edges differs
    assert set(np.unique(canvas.mask)) <= {0, 1, MASK_NODATA}
    png = cv2.imdecode(np.frombuffer(canvas.png(), np.uint8), cv2.IMREAD_COLOR)
    assert png.shape == (100, 150, 3)


def test_windows_of_adjacent_blocks_meet_and_small_images_are_not_upscaled():
    blocks = plan_blocks(517, 389, 100)
    canvas = PreviewCanvas(517, 389, 200)
    covered = np.zeros(canvas.mask.shape, int)
    for block in blocks:
        rows, cols = preview_window(block, canvas.scale)
        covered[rows, cols] += 1
    assert canvas.mask.shape == (150, 200) and (covered == 1).all()
    assert PreviewCanvas(50, 40, 200).mask.shape == (40, 50)


def test_footprints_replace_the_mask_outline():
    canvas = PreviewCanvas(100, 100, 100)
    mask = np.zeros((100, 100), np.uint8)
    mask[10:30, 10:30] = 1  # the raw mask's building
    block = plan_blocks(100, 100, 100)[0]
    canvas.add(block, np.full((3, 100, 100), 90, np.uint8), mask)
    canvas.draw_polygons(np.array([shapely.box(50, 50, 80, 70)]))
    view = cv2.cvtColor(cv2.imdecode(np.frombuffer(canvas.png(), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert (view[60, 65] != 90).any() and (view[20, 20] == 90).all()  # the footprint is tinted, the raw mask not
    assert tuple(view[50, 65]) == (255, 230, 0)  # its outline


def test_buildings_are_tinted_outlined_and_nodata_is_grey():
    canvas = PreviewCanvas(60, 40, 60)
    mask = np.zeros((40, 60), np.uint8)
    mask[10:30, 10:30] = 1
    mask[:, 50:] = MASK_NODATA
    canvas.add(plan_blocks(60, 40, 60)[0], np.full((3, 40, 60), 100, np.uint8), mask)
    view = cv2.cvtColor(cv2.imdecode(np.frombuffer(canvas.png(), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.abs(view[20, 20].astype(int) - (169.75, 82, 68.5)).max() <= 0.5  # 0.55 x 100 + 0.45 x (255, 60, 30)
    assert tuple(view[10, 20]) == (255, 230, 0) and tuple(view[20, 29]) == (255, 230, 0)  # the outline
    assert tuple(view[5, 5]) == (100, 100, 100) and tuple(view[20, 55]) == (40, 40, 40)
