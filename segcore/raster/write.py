"""Segmentation outputs: per-block work files, and their assembly into a mosaic's final outputs.

Memory stays flat in the mosaic's size: a mosaic is assembled one block at a time into a local temporary
GeoTIFF, which GDAL then copies into a Cloud-Optimized GeoTIFF; polygons and the preview read that file
back through GDAL (streaming polygonize, decimated overview reads). Every file appears under its final
name only once complete (storage.write_bytes / storage.publish_file).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from typing import Optional

import cv2
import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.features import shapes
from rasterio.windows import Window

from segcore.config import Config, InputConfig, S3Config
from segcore.inference import MASK_NODATA
from segcore.labels import open_labels
from segcore.metrics import ConfusionCounts
from segcore.raster.grid import Block
from segcore.raster.io import RasterInfo, open_raster, to_uint8
from segcore.storage import filesystem, join, publish_file, write_bytes

COG_BLOCK = 512
OUTPUT_FILES = ("mask.tif", "prob.tif", "buildings.geojson", "preview.png", "metrics.json")


def block_file(index: int) -> str:
    return f"block_{index:06d}.npz"


def save_block(path: str, mask: np.ndarray, probability: Optional[np.ndarray], tiles_computed: int,
               tiles_skipped: int, s3: S3Config | None = None) -> None:
    """Write one block's core results atomically (temp name + rename locally, one PUT on S3)."""
    arrays = dict(mask=mask, tiles=np.array([tiles_computed, tiles_skipped], np.int64))
    if probability is not None:
        arrays["probability"] = probability
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_bytes(path, buffer.getvalue(), s3)


def load_block(path: str, s3: S3Config | None = None) -> dict:
    """{"mask", "probability" (if saved), "tiles_computed", "tiles_skipped"} of a saved block."""
    with np.load(io.BytesIO(filesystem(path, s3).cat_file(path))) as data:
        out = {name: data[name] for name in data.files if name != "tiles"}
        out["tiles_computed"], out["tiles_skipped"] = (int(v) for v in data["tiles"])
    return out


class MosaicWriter:
    """One single-band uint8 raster on an input's grid, written block by block, finished as a COG."""

    def __init__(self, local_dir: str, name: str, info: RasterInfo, *, nodata: Optional[int], resampling: str,
                 masked: bool = False):
        self.temp = os.path.join(local_dir, f"{name}.partial.tif")
        self.cog = os.path.join(local_dir, f"{name}.tif")
        self.resampling, self.masked = resampling, masked
        profile = dict(driver="GTiff", width=info.width, height=info.height, count=1, dtype="uint8",
                       nodata=nodata, tiled=True, blockxsize=COG_BLOCK, blockysize=COG_BLOCK,
                       compress="deflate", zlevel=1, bigtiff="IF_SAFER")
        if info.georeferenced:
            profile["crs"] = CRS.from_wkt(info.crs)
        if Affine(*info.transform) != Affine.identity():  # identity means "no geotransform": keep it absent
            profile["transform"] = Affine(*info.transform)
        self.dataset = rasterio.open(self.temp, "w", **profile)

    def write(self, array: np.ndarray, window: Window, valid: Optional[np.ndarray] = None) -> None:
        self.dataset.write(array, 1, window=window)
        if self.masked:
            self.dataset.write_mask(np.where(valid, 255, 0).astype(np.uint8), window=window)

    def finish(self) -> str:
        """Close the temporary GeoTIFF and copy it to a deflate-compressed COG; returns the COG's local path.

        The copy depends on the pixels only (canonical tile order, no timestamps), so equal pixels give
        byte-identical files however the blocks were produced.
        """
        self.dataset.close()
        rasterio.shutil.copy(self.temp, self.cog, driver="COG", compress="DEFLATE", blocksize=COG_BLOCK,
                             overview_resampling=self.resampling, bigtiff="IF_SAFER")
        os.remove(self.temp)
        return self.cog

    def close(self) -> None:
        self.dataset.close()


class ComponentCounter:
    """Counts 4-connected building components of a mosaic fed block by block in row-major order.

    Each block is labelled alone (cv2); a small union-find joins labels that touch across the seam with
    the block above and the block to the left. Held state: one row of labels as wide as the mosaic, one
    column as tall as a block, and one parent entry per block-local component.
    """

    def __init__(self, width: int):
        self.parent: list[int] = [0]
        self.above = np.zeros(width, np.int64)  # labels of the last row fed, per column (0: background)
        self.left = np.zeros(0, np.int64)  # labels of the previous block's last column
        self.merges = 0

    def _find(self, label: int) -> int:
        while self.parent[label] != label:
            self.parent[label] = self.parent[self.parent[label]]
            label = self.parent[label]
        return label

    def _join(self, first: np.ndarray, second: np.ndarray) -> None:
        touching = (first > 0) & (second > 0)
        pairs = np.unique(np.stack([first[touching], second[touching]], 1), axis=0)
        for a, b in pairs:
            root_a, root_b = self._find(int(a)), self._find(int(b))
            if root_a != root_b:
                self.parent[max(root_a, root_b)] = min(root_a, root_b)
                self.merges += 1

    def add(self, mask: np.ndarray, block: Block) -> None:
        """Feed the core mask (1 = building) of `block`."""
        count, local = cv2.connectedComponents((mask == 1).astype(np.uint8), connectivity=4, ltype=cv2.CV_32S)
        offset = len(self.parent) - 1
        labels = np.where(local > 0, local.astype(np.int64) + offset, 0)
        self.parent.extend(range(offset + 1, offset + count))
        columns = slice(block.col, block.col + block.width)
        if block.row > 0:
            self._join(self.above[columns], labels[0])
        if block.col > 0:
            self._join(self.left, labels[:, 0])
        self.above[columns] = labels[-1]
        self.left = labels[:, -1]

    @property
    def count(self) -> int:
        return len(self.parent) - 1 - self.merges


def _ring_area(ring: list) -> float:
    xy = np.asarray(ring, float)
    return 0.5 * float(np.dot(xy[:-1, 0], xy[1:, 1]) - np.dot(xy[1:, 0], xy[:-1, 1]))


def _geojson_crs(info: RasterInfo) -> Optional[dict]:
    if not info.georeferenced:
        return None
    crs = CRS.from_wkt(info.crs)
    epsg = crs.to_epsg()
    return {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else crs.to_wkt()}}


def write_polygons(buildings_tif: str, info: RasterInfo, dst_local: str) -> int:
    """Polygonize a 0/1 raster into GeoJSON features in the image CRS (pixel coordinates without one).

    GDAL scans the file row by row, so a building crossing block seams is one polygon. Returns the count.
    """
    header = {"type": "FeatureCollection", "name": "buildings"}
    crs = _geojson_crs(info)
    if crs:
        header["crs"] = crs
    count = 0
    with rasterio.open(buildings_tif) as src, open(dst_local, "w") as out:
        out.write(json.dumps(header)[:-1] + ', "features": [\n')
        band = rasterio.band(src, 1)
        for geometry, _ in shapes(band, mask=band, connectivity=4, transform=Affine(*info.transform)):
            rings = geometry["coordinates"]
            area = abs(_ring_area(rings[0])) - sum(abs(_ring_area(r)) for r in rings[1:])
            feature = {"type": "Feature", "properties": {"id": count, "area": round(area, 6)}, "geometry": geometry}
            out.write((",\n" if count else "") + json.dumps(feature))
            count += 1
        out.write("\n]}\n")
    return count


PREVIEW_FILL = np.array([255, 60, 30], np.float32)  # translucent red-orange over buildings
PREVIEW_EDGE = np.array([255, 230, 0], np.uint8)  # solid yellow outlines
PREVIEW_NODATA = np.array([40, 40, 40], np.uint8)


def write_preview(image, mask_cog: str, input_cfg: InputConfig, size: int, dst_local: str) -> None:
    """PNG of the image (longest side `size`, never upscaled) with the mask overlaid and outlined.

    Both rasters are read decimated (`out_shape`), which GDAL serves from overviews where they exist.
    """
    scale = min(1.0, size / max(image.width, image.height))
    shape = (max(1, round(image.height * scale)), max(1, round(image.width * scale)))
    raw = image.read(input_cfg.bands, out_shape=(3, *shape), resampling=Resampling.average)
    rgb = to_uint8(np.nan_to_num(raw) if raw.dtype.kind == "f" else raw, input_cfg.scale_max)
    rgb = np.ascontiguousarray(rgb.transpose(1, 2, 0))
    with rasterio.open(mask_cog) as src:
        mask = src.read(1, out_shape=shape, resampling=Resampling.nearest)
    building = (mask == 1).astype(np.uint8)
    outline = building - cv2.erode(building, np.ones((3, 3), np.uint8))
    tinted = (0.55 * rgb + 0.45 * PREVIEW_FILL).astype(np.uint8)
    view = np.where(building[..., None] == 1, tinted, rgb)
    view[outline == 1] = PREVIEW_EDGE
    view[mask == MASK_NODATA] = PREVIEW_NODATA
    png = cv2.imencode(".png", cv2.cvtColor(view, cv2.COLOR_RGB2BGR))[1]
    with open(dst_local, "wb") as out:
        out.write(png.tobytes())


def assemble(info: RasterInfo, blocks: list[Block], work: str, out: str, cfg: Config, *,
             labels: Optional[str], metrics: dict) -> dict:
    """Stream a mosaic's block files from `work` into its outputs in `out`, publishing mask.tif last.

    Returns `metrics` completed with pixel, tile and building counts (and, with `labels`, the confusion
    metrics), as also written to metrics.json.
    """
    seg = cfg.segment
    local = tempfile.mkdtemp(prefix="segcore-segment-")
    writers = {"mask": MosaicWriter(local, "mask", info, nodata=MASK_NODATA, resampling="NEAREST")}
    if seg.write_probability:
        writers["prob"] = MosaicWriter(local, "prob", info, nodata=None, resampling="AVERAGE", masked=True)
    if seg.write_polygons:
        writers["buildings"] = MosaicWriter(local, "buildings", info, nodata=None, resampling="NEAREST")
    truth = open_labels(labels, info, cfg.s3) if labels else None
    try:
        components, confusion = ComponentCounter(info.width), ConfusionCounts()
        totals = dict(valid=0, building=0, tiles=0, skipped=0)
        for block in blocks:
            data = load_block(join(work, block_file(block.index)), cfg.s3)
            mask, window = data["mask"], block.core
            valid, building = mask != MASK_NODATA, mask == 1
            writers["mask"].write(mask, window)
            if "prob" in writers:
                writers["prob"].write(data["probability"], window, valid)
            if "buildings" in writers:
                writers["buildings"].write(building.astype(np.uint8), window)
            components.add(mask, block)
            for name, value in (("valid", valid.sum()), ("building", building.sum()),
                                ("tiles", data["tiles_computed"]), ("skipped", data["tiles_skipped"])):
                totals[name] += int(value)
            if truth:
                confusion += ConfusionCounts.from_arrays(building, truth.read(window), valid)
        files = {name: writer.finish() for name, writer in writers.items()}
        metrics = dict(metrics, width=info.width, height=info.height, georeferenced=info.georeferenced,
                       pixels=info.width * info.height, valid_pixels=totals["valid"],
                       tiles=dict(computed=totals["tiles"], skipped_nodata=totals["skipped"]),
                       building_pixels=totals["building"],
                       building_fraction=totals["building"] / totals["valid"] if totals["valid"] else 0.0,
                       building_count=components.count)
        if truth:
            metrics.update(labels=labels, **confusion.summary())
        if "buildings" in files:
            polygons = os.path.join(local, "buildings.geojson")
            metrics["polygons"] = write_polygons(files.pop("buildings"), info, polygons)
            publish_file(polygons, join(out, "buildings.geojson"), cfg.s3)
        if "prob" in files:
            publish_file(files.pop("prob"), join(out, "prob.tif"), cfg.s3)
        if seg.preview_size:
            preview = os.path.join(local, "preview.png")
            with open_raster(info.path, cfg.s3) as image:
                write_preview(image, files["mask"], cfg.input, seg.preview_size, preview)
            publish_file(preview, join(out, "preview.png"), cfg.s3)
        write_bytes(join(out, "metrics.json"), json.dumps(metrics, indent=1).encode(), cfg.s3)
        publish_file(files["mask"], join(out, "mask.tif"), cfg.s3)
        return metrics
    finally:
        for writer in writers.values():
            writer.close()
        if truth:
            truth.close()
        shutil.rmtree(local, ignore_errors=True)
