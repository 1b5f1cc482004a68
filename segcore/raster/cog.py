"""Single-band uint8 rasters on an input's grid, written window by window and finished as Cloud-Optimized
GeoTIFFs: the mask (and probability) outputs of segmentation.

Mask values: 1 building, 0 background, 255 nodata (GDAL's nodata value of the mask, so viewers show it as
transparent). The input's georeference goes along: CRS and geotransform, or its ground control points and
RPCs for a scene georeferenced by those.
"""
from __future__ import annotations

import os

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from segcore.raster.io import RasterInfo, write_ground_control

MASK_BACKGROUND = 0
MASK_BUILDING = 1
MASK_NODATA = 255
COG_BLOCK = 512  # internal tile size of the outputs


class CogWriter:
    """One uint8 band on `info`'s grid: `write` windows of it in any order, then `finish` into a COG.

    The windows go to an uncompressed local GeoTIFF (no compression work twice); `finish` copies it into a
    DEFLATE COG with overviews. The copy depends on the pixels only (canonical tile order, no timestamps), so
    equal pixels give byte-identical files however the windows were produced.
    """

    def __init__(self, local_dir: str, name: str, info: RasterInfo, *, nodata: int | None, resampling: str,
                 masked: bool = False):
        self.temp = os.path.join(local_dir, f"{name}.partial.tif")
        self.cog = os.path.join(local_dir, f"{name}.tif")
        self.resampling, self.masked = resampling, masked
        profile = dict(driver="GTiff", width=info.width, height=info.height, count=1, dtype="uint8",
                       nodata=nodata, tiled=True, blockxsize=COG_BLOCK, blockysize=COG_BLOCK, bigtiff="IF_SAFER")
        if info.georeferenced:
            profile["crs"] = CRS.from_wkt(info.crs)
        if Affine(*info.transform) != Affine.identity():  # identity means "no geotransform": keep it absent
            profile["transform"] = Affine(*info.transform)
        self.dataset = rasterio.open(self.temp, "w", **profile)
        write_ground_control(self.dataset, info)

    def write(self, array: np.ndarray, window: Window, valid: np.ndarray | None = None) -> None:
        self.dataset.write(array, 1, window=window)
        if self.masked:
            if valid is None:
                raise ValueError(f"{self.temp}: a masked COG needs the valid pixels of every window")
            self.dataset.write_mask(np.where(valid, 255, 0).astype(np.uint8), window=window)

    def finish(self) -> str:
        """Close the temporary GeoTIFF and copy it into a COG; returns the COG's local path."""
        self.dataset.close()
        # Compressing on every core: the last mosaic's finish is the run's tail, when the other stages are done.
        # Tiles are compressed alone and written in canonical order, so the bytes do not depend on the threads.
        rasterio.shutil.copy(self.temp, self.cog, driver="COG", compress="DEFLATE", blocksize=COG_BLOCK,
                             overview_resampling=self.resampling, bigtiff="IF_SAFER", num_threads="ALL_CPUS")
        os.remove(self.temp)
        return self.cog

    def close(self) -> None:
        self.dataset.close()
