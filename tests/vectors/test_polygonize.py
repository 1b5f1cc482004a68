"""Polygonizing blocks and merging their seams gives exactly the buildings of the whole mask."""
from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import shapely

from segcore.config import PolygonConfig
from segcore.raster.grid import Block, plan_blocks
from segcore.raster.io import inspect_raster
from segcore.vectors.merge import FragmentMerger
from segcore.vectors.polygonize import BlockVectors, polygonize_block
from segcore.vectors.shapes import GroundFrame, clean_buildings
from tests.vectors.conftest import canonical, degrade, read_mask, run_blocks


def _random_mask(seed: int, shape=(71, 59)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = (rng.random(shape) < 0.45).astype(np.uint8)
    mask[rng.random(shape) < 0.03] = 255  # nodata is not building
    return mask, rng.integers(0, 256, shape).astype(np.uint8)


@pytest.mark.parametrize("block_size", [8, 23])
def test_random_mask_block_by_block_equals_whole(block_size):
    mask, probability = _random_mask(block_size)
    whole = canonical(run_blocks(mask, probability, 1000))
    assert canonical(run_blocks(mask, probability, block_size)) == whole
    assert canonical(run_blocks(mask, probability, block_size, shuffle_seed=1)) == whole  # any arrival order


def test_generated_city_every_block_size_gives_the_same_buildings(city):
    mask = read_mask(city.labels)
    whole = run_blocks(mask, None, 4096)
    straddling = 0
    for block_size in (128, 384):
        assert canonical(run_blocks(mask, None, block_size)) == canonical(whole)
        height, width = mask.shape
        for block in plan_blocks(width, height, block_size):
            core = mask[block.row:block.row + block.height, block.col:block.col + block.width]
            straddling += len(polygonize_block(core, None, block, width, height).fragments)
    assert straddling > 30  # buildings do straddle the seams
    # The merged polygons are exactly the label raster's pixels.
    assert sum(whole.pixels) == int(mask.sum())
    assert np.allclose(shapely.area(whole.geometry), whole.pixels)


def test_degraded_city_with_probability_equals_whole(city):
    mask, probability = degrade(read_mask(city.labels))
    whole = canonical(run_blocks(mask, probability, 4096))
    assert canonical(run_blocks(mask, probability, 160, shuffle_seed=3)) == whole


def test_pixels_touching_only_diagonally_are_separate_buildings_inside_and_across_seams():
    mask = np.zeros((8, 8), np.uint8)
    mask[3, 3] = mask[4, 4] = 1  # diagonal contact across the corner where four 4x4 blocks meet
    mask[0, 0] = mask[1, 1] = 1  # diagonal contact inside one block
    mask[3, 6] = mask[4, 6] = 1  # edge contact across a horizontal seam: one building
    for block_size in (4, 8):
        buildings = run_blocks(mask, None, block_size)
        assert sorted(buildings.pixels.tolist()) == [1, 1, 1, 1, 2]


def test_ids_are_the_raster_index_of_each_buildings_first_pixel():
    mask = np.zeros((10, 12), np.uint8)
    mask[1:4, 3:6] = 1
    mask[4:8, 0:2] = 1
    mask[4, 2] = 1  # joins the second shape; its first pixel is (4, 0)
    mask[7:10, 7:12] = 1
    mask[6, 11] = 1
    buildings = run_blocks(mask, None, 4)
    assert sorted(buildings.id.tolist()) == [1 * 12 + 3, 4 * 12 + 0, 6 * 12 + 11]
    first = {int(i): int(b) for i, b in zip(buildings.id, buildings.block, strict=True)}
    blocks = {b.index: b for b in plan_blocks(12, 10, 4)}
    for index, block in first.items():  # the source block holds the first pixel
        row, col = divmod(index, 12)
        assert blocks[block].row <= row < blocks[block].row + 4 and blocks[block].col <= col < blocks[block].col + 4


def test_probability_sums_give_the_mean_confidence():
    mask = np.zeros((6, 6), np.uint8)
    mask[1:5, 2] = 1
    probability = np.zeros((6, 6), np.uint8)
    probability[1:5, 2] = [255, 255, 0, 102]
    buildings = run_blocks(mask, probability, 3)
    assert buildings.probability_sum is not None and buildings.probability_sum.tolist() == [612]
    assert buildings.confidence.tolist() == pytest.approx([612 / (4 * 255)])
    assert np.isnan(run_blocks(mask, None, 3).confidence).all()


def test_block_vectors_round_trip_as_plain_arrays():
    mask, probability = _random_mask(7, (40, 40))
    block = Block(5, 20, 0, 20, 20, 0, 0, 0, 0)
    vectors = polygonize_block(mask[20:40, 0:20], probability[20:40, 0:20], block, 40, 40)
    data = vectors.to_bytes()
    with np.load(io.BytesIO(data), allow_pickle=False) as stored:  # nothing needs unpickling
        assert all(stored[name].dtype != object for name in stored.files)
    again = BlockVectors.from_bytes(data)
    assert again.block == block and (again.mosaic_width, again.mosaic_height) == (40, 40)
    assert canonical(again.complete) == canonical(vectors.complete)
    assert canonical(again.fragments) == canonical(vectors.fragments)
    assert sorted(again.edges) == ["right", "top"]  # the block's other sides are the mosaic's edge
    for side, edge in vectors.edges.items():
        assert np.array_equal(again.edges[side], edge)


def test_empty_block_round_trips():
    block = Block(0, 0, 0, 4, 4, 0, 0, 0, 0)
    vectors = BlockVectors.from_bytes(polygonize_block(np.zeros((4, 4), np.uint8), None, block, 8, 4).to_bytes())
    assert len(vectors.complete) == len(vectors.fragments) == 0 and vectors.edges["right"].tolist() == [-1] * 4


def test_block_vectors_of_another_format_are_refused():
    block = Block(0, 0, 0, 2, 2, 0, 0, 0, 0)
    vectors = polygonize_block(np.ones((2, 2), np.uint8), None, block, 2, 2)
    buffer = io.BytesIO()
    with np.load(io.BytesIO(vectors.to_bytes())) as stored:
        arrays = {name: stored[name] for name in stored.files}
    arrays["header"][0] = 99
    np.savez(buffer, **arrays)
    with pytest.raises(ValueError, match="format 99"):
        BlockVectors.from_bytes(buffer.getvalue())


def test_a_missing_block_is_reported_and_its_neighbours_fragments_stay_pending():
    mask = np.ones((4, 8), np.uint8)
    blocks = plan_blocks(8, 4, 4)
    merger = FragmentMerger()
    finished = merger.add(polygonize_block(mask[:, :4], None, blocks[0], 8, 4))
    assert len(finished) == 0
    assert merger.pending_bounds().tolist() == [[0.0, 0.0, 4.0, 4.0]]
    with pytest.raises(ValueError, match="never met"):
        merger.finish()
    finished = merger.add(polygonize_block(mask[:, 4:], None, blocks[1], 8, 4))
    assert len(finished) == 1 and finished.geometry[0].equals(shapely.box(0, 0, 8, 4))
    merger.finish()


def test_blocks_of_different_grids_are_refused():
    merger = FragmentMerger()
    merger.add(polygonize_block(np.ones((4, 4), np.uint8), None, Block(0, 0, 0, 4, 4, 0, 0, 0, 0), 8, 8))
    with pytest.raises(ValueError, match="one grid"):  # a right neighbour 3 rows tall
        merger.add(polygonize_block(np.ones((3, 4), np.uint8), None, Block(1, 0, 4, 3, 4, 0, 0, 0, 0), 8, 8))


def test_wrong_shapes_are_refused():
    with pytest.raises(ValueError, match="block 0"):
        polygonize_block(np.ones((3, 4), np.uint8), None, Block(0, 0, 0, 4, 4, 0, 0, 0, 0), 4, 4)


def test_row_major_merging_holds_about_one_row_of_blocks_fragments(city):
    mask = read_mask(city.labels)
    height, width = mask.shape
    merger, pending, total = FragmentMerger(), [], 0
    for block in plan_blocks(width, height, 128):  # 8 rows of 10 blocks
        core = mask[block.row:block.row + block.height, block.col:block.col + block.width]
        vectors = polygonize_block(core, None, block, width, height)
        total += len(vectors.fragments)
        merger.add(vectors)
        pending.append(len(merger.pending_bounds()))
    merger.finish()
    assert len(merger.pending_bounds()) == 0
    assert max(pending) < total / 3, (max(pending), total)


def test_clean_outlines_do_not_depend_on_the_block_size(city):
    mask, probability = degrade(read_mask(city.labels))
    frame = GroundFrame.of(inspect_raster(str(city.labels)))
    cfg = dataclasses.replace(PolygonConfig(), regularize=True)
    outlines = []
    for block_size in (160, 2048):
        clean = clean_buildings(run_blocks(mask, probability, block_size), frame, cfg)
        order = np.argsort(clean.id)
        outlines.append((clean.id[order].tolist(), shapely.to_wkb(clean.geometry[order]).tolist()))
    assert outlines[0] == outlines[1]
