"""Footprints do not depend on segment.block_size: tiles lie on one grid over the mosaic and buildings cut by
block seams are merged exactly, so a run in blocks of 512 and one in a single block give the same buildings."""
from __future__ import annotations

import geopandas
import numpy as np
import pytest
import rasterio
import shapely

from tests.helpers import read_band
from tests.inputs import BrightnessModel
from tests.pipelines.test_segment import config

WIDTH, HEIGHT = 1100, 900
BLOCK_CORE = 480  # block_size 512 rounded down to the stride (64 - 16)


@pytest.fixture(scope="module")
def runs(cities, ray_local, tiny_checkpoint, tmp_path_factory):
    from segcore.pipelines.segment import plan_segment, run_segment

    city = cities(WIDTH, HEIGHT, seed=3)
    outputs = {}
    for block_size in (512, 8192):
        out = tmp_path_factory.mktemp(f"seams{block_size}")
        cfg = config(f"segment.block_size={block_size}", "segment.write_polygons=true",
                     "segment.write_probability=true")
        summary = run_segment(plan_segment([str(city.image)], tiny_checkpoint, str(out), cfg,
                                           model_factory=BrightnessModel))
        assert "BrightnessModel" in summary["stand_in_model"]
        assert summary["ok"] == 1, summary
        outputs[block_size] = out / "image"
    return outputs


def test_masks_are_identical_and_probabilities_agree_within_one_level(runs):
    small, whole = runs[512], runs[8192]
    assert np.array_equal(read_band(small / "mask.tif"), read_band(whole / "mask.tif"))
    difference = np.abs(read_band(small / "prob.tif").astype(int) - read_band(whole / "prob.tif").astype(int))
    assert difference.max() <= 1


def test_buildings_straddling_seams_are_the_same_buildings(runs):
    small = geopandas.read_parquet(runs[512] / "buildings.parquet")
    whole = geopandas.read_parquet(runs[8192] / "buildings.parquet")
    assert set(small["block"]) != {0} and set(whole["block"]) == {0}  # the first run did cut the mosaic
    assert small.geometry.intersects(_seams(runs[512] / "mask.tif")).sum() >= 10  # buildings do straddle the seams
    assert len(small) == len(whole) > 50
    assert small.geometry.area.sum() == pytest.approx(whole.geometry.area.sum(), rel=1e-3)
    assert small.geometry.is_valid.all() and whole.geometry.is_valid.all()
    tree = shapely.STRtree(whole.geometry.values)
    for building in small.geometry.values:
        best = max(_iou(building, other) for other in whole.geometry.values[tree.query(building)])
        assert best >= 0.99


def _seams(mask_path) -> shapely.Geometry:
    """The block seams of the first run as lines in the mask's coordinates."""
    with rasterio.open(mask_path) as src:
        to_map = src.transform
    lines = [[to_map * (col, 0), to_map * (col, HEIGHT)] for col in range(BLOCK_CORE, WIDTH, BLOCK_CORE)]
    lines += [[to_map * (0, row), to_map * (WIDTH, row)] for row in range(BLOCK_CORE, HEIGHT, BLOCK_CORE)]
    return shapely.MultiLineString(lines)


def _iou(a, b) -> float:
    return shapely.area(shapely.intersection(a, b)) / shapely.area(shapely.union(a, b))
