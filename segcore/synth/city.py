"""The sample city as files (GeoTIFF image, GeoTIFF labels, GeoJSON footprints) or in memory."""
from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.features import rasterize
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from segcore.config import SynthConfig
from segcore.synth.layout import CityPlan, plan_city
from segcore.synth.realism import look_of, realistic_plan
from segcore.synth.render import BACKGROUND, BUILDING, STRIP_ROWS, Look, map_ring, render_strip

DEFAULT_CRS = "EPSG:32633"
DEFAULT_PIXEL_SIZE = 0.5
# Map coordinates of the image's top-left corner: whole metres inside UTM zone 33N (near
# Vienna), so that origin + k/16 px * 0.5 m is exact in floating point.
ORIGIN = (600_000.0, 5_340_000.0)
BLOCK_SIZE = 512                   # GeoTIFF tile edge
# Deflate level 1: on noisy imagery higher levels shrink the file by ~3% for 2.5x the time.
GTIFF_OPTIONS = {
    "driver": "GTiff", "tiled": True, "blockxsize": BLOCK_SIZE, "blockysize": BLOCK_SIZE,
    "compress": "deflate", "zlevel": 1, "predictor": 2, "num_threads": "ALL_CPUS",
}


@dataclass(frozen=True)
class CityPaths:
    """Where generate_city wrote the scene."""
    image: Path       # 3-band uint8 RGB GeoTIFF
    labels: Path      # 1-band uint8 GeoTIFF on the same grid: 255 building, 0 background
    buildings: Path   # GeoJSON FeatureCollection of the footprints in the image CRS


@dataclass(frozen=True)
class Scene:
    """A rendered city held in memory (for small sizes: tests, previews)."""
    image: np.ndarray                          # (height, width, 3) uint8 RGB
    labels: np.ndarray                         # (height, width) uint8, 255 building, 0 background
    polygons: list[list[tuple[float, float]]]  # footprints in pixel (x, y); open rings (first vertex not repeated)


def scene_transform(pixel_size: float = DEFAULT_PIXEL_SIZE) -> Affine:
    """North-up geotransform of the sample city: ORIGIN at the top-left, square pixels."""
    return Affine(pixel_size, 0.0, ORIGIN[0], 0.0, -pixel_size, ORIGIN[1])


def render_scene(width: int, height: int, seed: int = 0, realism: SynthConfig | None = None) -> Scene:
    """Render the whole city in memory; the same pixels generate_city writes for the same arguments.

    On the planned grid only: `realism.ground_resolution` (a resampling of the written files) is refused.
    """
    realism = realism or SynthConfig()
    if realism.ground_resolution is not None:
        raise ValueError("render_scene draws on the planned grid; generate_city writes other ground resolutions")
    plan, look = _plan(width, height, seed, realism)
    transform = scene_transform()
    strips = [render_strip(plan, row, min(row + STRIP_ROWS, height), transform, look)
              for row in range(0, height, STRIP_ROWS)]
    return Scene(image=np.concatenate([image for image, _ in strips]),
                 labels=np.concatenate([labels for _, labels in strips]),
                 polygons=[[tuple(p) for p in b.footprint.tolist()] for b in plan.buildings])


def generate_city(output_dir: str | os.PathLike, width: int, height: int, seed: int = 0,
                  crs: str = DEFAULT_CRS, pixel_size: float = DEFAULT_PIXEL_SIZE,
                  realism: SynthConfig | None = None) -> CityPaths:
    """Write image.tif, labels.tif and buildings.geojson for a `width` x `height` px city.

    The rasters are rendered and written one strip at a time, so memory stays flat at any
    size. Files appear under their final names only once complete. Labels equal the GeoJSON
    footprints rasterized on the image grid bit for bit when `pixel_size` is a power of two
    (the default 0.5 m is); the layout itself is in pixels and does not depend on it.
    `realism` (the config's `synth` section) changes the look; with its `ground_resolution`,
    the city is planned and rendered at `pixel_size` and resampled to that many metres per pixel
    (cubic), and the labels are the footprints rasterized on that grid.
    """
    realism = realism or SynthConfig()
    projected = CRS.from_user_input(crs)
    epsg = projected.to_epsg()
    if not projected.is_projected or epsg is None:
        raise ValueError(f"crs must be a projected CRS with an EPSG code, got {crs}")
    if not pixel_size > 0:
        raise ValueError(f"pixel_size must be positive, got {pixel_size}")
    resolution = realism.ground_resolution or pixel_size
    zoom = pixel_size / resolution  # written pixels per planned pixel
    plan, look = _plan(width if zoom == 1 else math.ceil(width / zoom),
                       height if zoom == 1 else math.ceil(height / zoom), seed, realism)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = CityPaths(out / "image.tif", out / "labels.tif", out / "buildings.geojson")
    final = [paths.image, paths.labels, paths.buildings]
    # Hidden temporary names in the same directory, so the final rename is atomic.
    temporary = [path.with_name(f".{path.name}.{os.getpid()}.partial") for path in final]
    planned = out / f".planned.{os.getpid()}.partial"
    transform = scene_transform(pixel_size)
    try:
        if zoom == 1:
            _write_rasters(plan, look, transform, projected, temporary[0], temporary[1])
        else:
            _write_rasters(plan, look, transform, projected, planned, None)
            _write_resampled(planned, plan, transform, scene_transform(resolution), (width, height), temporary[0],
                             temporary[1])
        _write_footprints(plan, transform, epsg, temporary[2])
        for source, target in zip(temporary, final, strict=True):
            os.replace(source, target)
    finally:
        for path in [*temporary, planned]:
            path.unlink(missing_ok=True)
    return paths


def _plan(width: int, height: int, seed: int, realism: SynthConfig) -> tuple[CityPlan, Look]:
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    plan = realistic_plan(plan_city(int(width), int(height), int(seed)), realism)
    return plan, look_of(realism, plan)


def _write_rasters(plan: CityPlan, look: Look, transform: Affine, crs: CRS, image_path: Path,
                   labels_path: Path | None) -> None:
    grid = {"width": plan.width, "height": plan.height, "crs": crs, "transform": transform,
            "dtype": "uint8", **GTIFF_OPTIONS}
    with contextlib.ExitStack() as files:
        image = files.enter_context(rasterio.open(image_path, "w", count=3, photometric="RGB", **grid))
        labels = files.enter_context(rasterio.open(labels_path, "w", count=1, **grid)) if labels_path else None
        for row in range(0, plan.height, STRIP_ROWS):
            rows = min(STRIP_ROWS, plan.height - row)
            rgb, mask = render_strip(plan, row, row + rows, transform, look)
            window = Window(0, row, plan.width, rows)
            image.write(np.moveaxis(rgb, 2, 0), window=window)
            if labels is not None:
                labels.write(mask, 1, window=window)


def _write_resampled(planned: Path, plan: CityPlan, transform: Affine, target: Affine, size: tuple[int, int],
                     image_path: Path, labels_path: Path) -> None:
    """The planned image resampled onto the `target` grid of `size` pixels, and the footprints burned on it."""
    width, height = size
    with rasterio.open(planned) as source, WarpedVRT(source, transform=target, width=width, height=height,
                                                     resampling=Resampling.cubic) as warped:
        grid = {"width": width, "height": height, "crs": source.crs, "transform": target, "dtype": "uint8",
                **GTIFF_OPTIONS}
        with rasterio.open(image_path, "w", count=3, photometric="RGB", **grid) as image, \
                rasterio.open(labels_path, "w", count=1, **grid) as labels:
            footprints = [{"type": "Polygon", "coordinates": [map_ring(b.footprint, transform)]}
                          for b in plan.buildings]
            for row in range(0, height, STRIP_ROWS):
                window = Window(0, row, width, min(STRIP_ROWS, height - row))
                image.write(warped.read(window=window), window=window)
                mask = rasterize([(shape, BUILDING) for shape in footprints], out_shape=(window.height, width),
                                 transform=window_transform(window, target), fill=BACKGROUND, dtype="uint8") \
                    if footprints else np.zeros((window.height, width), np.uint8)
                labels.write(mask, 1, window=window)


def _write_footprints(plan: CityPlan, transform: Affine, epsg: int, path: Path) -> None:
    """A GeoJSON FeatureCollection laid out as GDAL writes it, one feature per line."""
    header = {"type": "FeatureCollection", "name": "buildings",
              "crs": {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{epsg}"}}}
    with open(path, "w", encoding="utf-8") as out:
        out.write(json.dumps(header)[:-1] + ',\n"features": [\n')
        for number, building in enumerate(plan.buildings, start=1):
            feature = {"type": "Feature", "properties": {"id": number},
                       "geometry": {"type": "Polygon",
                                    "coordinates": [map_ring(building.footprint, transform)]}}
            out.write(("," if number > 1 else "") + json.dumps(feature) + "\n")
        out.write("]\n}\n")
