"""raster.cog: masks written window by window into a COG, whose bytes depend on the pixels only; the input's
georeference (CRS and transform, or ground control points) goes along."""
from pathlib import Path

import numpy as np
import rasterio
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS

from segcore.raster.cog import CogWriter
from segcore.raster.grid import plan_blocks
from segcore.raster.io import RasterInfo
from tests.helpers import blobs


def test_cog_bytes_do_not_depend_on_block_order(tmp_path):
    info = RasterInfo("x.tif", 700, 600, 1, "uint8", rasterio.crs.CRS.from_epsg(32633).to_wkt(),
                      (0.5, 0.0, 500000.0, 0.0, -0.5, 5300000.0), None)
    mask = blobs(600, 700, seed=5)
    outputs = []
    for name, order in (("forward", 1), ("backward", -1)):
        (tmp_path / name).mkdir()
        writer = CogWriter(str(tmp_path / name), "mask", info, nodata=255, resampling="NEAREST")
        for block in plan_blocks(700, 600, 256)[::order]:
            writer.write(mask[block.row:block.row + block.height, block.col:block.col + block.width], block.core)
        outputs.append(Path(writer.finish()).read_bytes())
    assert outputs[0] == outputs[1]
    with rasterio.open(tmp_path / "forward" / "mask.tif") as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and src.nodata == 255
        assert np.array_equal(src.read(1), mask)


def test_a_scene_georeferenced_by_gcps_gives_a_mask_with_its_gcps(tmp_path):
    points = [GroundControlPoint(row, col, 500000.0 + col * 0.5, 5300000.0 - row * 0.5, 0.0, str(i), "")
              for i, (row, col) in enumerate(((0, 0), (0, 99), (79, 0), (79, 99)))]
    gcps = tuple((p.row, p.col, p.x, p.y, p.z, p.id, p.info) for p in points)
    info = RasterInfo("scene.tif", 100, 80, 3, "uint8", None, (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), None, gcps,
                      CRS.from_epsg(32633).to_wkt())
    writer = CogWriter(str(tmp_path), "mask", info, nodata=255, resampling="NEAREST")
    writer.write(np.ones((80, 100), np.uint8), rasterio.windows.Window(0, 0, 100, 80))
    with rasterio.open(writer.finish()) as src:
        written, crs = src.gcps
        assert crs == CRS.from_epsg(32633) and src.crs is None
        assert [(p.row, p.col, p.x, p.y) for p in written] == [(p.row, p.col, p.x, p.y) for p in points]
