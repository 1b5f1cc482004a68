"""From pixel outlines to clean building footprints in the raster's CRS (or EPSG:4326).

`clean_buildings` fills small holes, drops small buildings, simplifies, optionally regularizes and repairs,
all in a local metric frame: pixel coordinates scaled by the ground size of a pixel at the mosaic's centre
(`raster.ground.pixel_size_m`), so that areas are in m² and right angles are right on the ground for any
CRS, geographic ones included. Its output stays in pixel coordinates, so object metrics can compare it with
true buildings on the same grid. `to_footprints` then adds area, perimeter and confidence and maps the
outlines through the raster's affine transform, then to EPSG:4326 if asked. A raster without a CRS has no
ground size: lengths are in pixels (1 px = 1 m) and coordinates stay on its pixel grid (the caller warns).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform as transform_points
from shapely.geometry import MultiPolygon, Polygon

from segcore.config import PolygonConfig
from segcore.raster.ground import pixel_size_m
from segcore.raster.io import RasterInfo
from segcore.vectors.polygonize import Buildings
from segcore.vectors.regularize import regularize_polygons

WGS84 = CRS.from_epsg(4326)
# Outline simplification (px) from which regularization reads a building's orientation: chords this long
# follow a wall's pixel staircase (which strays up to 0.7 px either side) rather than its steps.
ORIENTATION_SMOOTHING_PX = 1.5


def map_affine(geometry: np.ndarray, affine: Affine) -> np.ndarray:
    """Geometries with every vertex mapped by an affine transform (vectorized; shapely.affinity is not)."""
    a, b, c, d, e, f = tuple(affine)[:6]
    return shapely.transform(geometry, lambda xy: np.column_stack(
        [a * xy[:, 0] + b * xy[:, 1] + c, d * xy[:, 0] + e * xy[:, 1] + f]))


def reproject(geometry: np.ndarray, source: CRS, target: CRS) -> np.ndarray:
    """Geometries from one CRS to another, vertex by vertex (in the traditional x/y, longitude/latitude order)."""
    if source == target or not len(geometry):
        return geometry
    return shapely.transform(geometry, lambda xy: np.column_stack(
        transform_points(source, target, xy[:, 0], xy[:, 1])))


@dataclass(frozen=True)
class GroundFrame:
    """A raster's pixel grid on the ground and in its CRS."""

    transform: Affine
    crs: CRS | None
    pixel_size: tuple[float, float]  # metres per pixel step along x and y; (1, 1) without a CRS

    @classmethod
    def of(cls, info: RasterInfo) -> GroundFrame:
        crs = CRS.from_wkt(info.crs) if info.crs else None
        size = pixel_size_m(info.transform, crs, info.width, info.height) if crs else None
        return cls(Affine(*info.transform[:6]), crs, size or (1.0, 1.0))

    @property
    def gsd(self) -> float:
        """Ground sample distance: the side of a square with a pixel's ground area, in metres."""
        return math.sqrt(self.pixel_size[0] * self.pixel_size[1])

    def to_metres(self, geometry: np.ndarray) -> np.ndarray:
        return shapely.transform(geometry, lambda xy: xy * np.array(self.pixel_size))

    def to_pixels(self, geometry: np.ndarray) -> np.ndarray:
        return shapely.transform(geometry, lambda xy: xy / np.array(self.pixel_size))

    def output_crs(self, crs: str) -> CRS | None:
        """The CRS of `to_crs`'s coordinates for the config's `crs` ("image" or "EPSG:4326")."""
        return None if self.crs is None else WGS84 if crs == "EPSG:4326" else self.crs

    def to_crs(self, geometry: np.ndarray, crs: str) -> np.ndarray:
        """Pixel-space geometries in the raster's CRS, or longitude/latitude for "EPSG:4326"."""
        mapped = map_affine(geometry, self.transform)
        target = self.output_crs(crs)
        return mapped if target is None or self.crs is None else reproject(mapped, self.crs, target)


@dataclass
class Footprints:
    """Output rows: one building each, geometry in the output CRS."""

    geometry: np.ndarray  # shapely Polygons (MultiPolygons where a repair split one)
    id: np.ndarray  # int64, stable: the raster-order index of the building's first pixel
    block: np.ndarray  # int64, the block holding that pixel
    area_m2: np.ndarray  # float64, on the ground
    perimeter_m: np.ndarray  # float64, on the ground, holes included
    confidence: np.ndarray  # float64 mean probability of its pixels; NaN without a probability raster
    mosaic: str  # the mosaic's key, the same for every row

    def __len__(self) -> int:
        return len(self.id)


def _polygonal(geometry: shapely.Geometry) -> shapely.Geometry:
    """The polygonal part of a repaired geometry (a Polygon, a MultiPolygon or an empty Polygon)."""
    if isinstance(geometry, (Polygon, MultiPolygon)):
        return geometry
    parts = [part for part in shapely.get_parts(geometry) if isinstance(part, (Polygon, MultiPolygon))]
    return shapely.union_all(parts) if parts else Polygon()


def make_valid_polygons(geometry: np.ndarray) -> np.ndarray:
    """Every geometry a valid Polygon or MultiPolygon (maybe empty): invalid ones are repaired (GEOS 'structure'
    method), collections keep their polygons, valid polygons pass unchanged."""
    out = geometry.copy()
    polygonal = np.isin(shapely.get_type_id(geometry), (3, 6))
    for i in np.flatnonzero(~polygonal | ~shapely.is_valid(geometry)):
        out[i] = _polygonal(shapely.make_valid(geometry[i], method="structure", keep_collapsed=False))
    return out


def fill_holes(polygons: np.ndarray, max_area: float) -> np.ndarray:
    """Polygons without their holes smaller than max_area (in the polygons' units)."""
    out = polygons.copy()
    if max_area <= 0:
        return out
    for i in np.flatnonzero(shapely.get_num_interior_rings(polygons) > 0):
        polygon = polygons[i]
        holes = [ring for ring in polygon.interiors if Polygon(ring).area >= max_area]
        out[i] = Polygon(polygon.exterior, holes)
    return out


def reach_px(cfg: PolygonConfig, frame: GroundFrame) -> float:
    """How far, in pixels, a clean outline may lie outside its building's pixels (simplification and
    regularization move edges); object metrics widen unfinished buildings' boxes by this much."""
    regularize = cfg.regularize_min_edge_m / frame.gsd if cfg.regularize else 0.0
    return cfg.simplify_px + regularize + 1.0


def clean_buildings(buildings: Buildings, frame: GroundFrame, cfg: PolygonConfig) -> Buildings:
    """Fill holes, drop small buildings, simplify, regularize and repair; pixel coordinates in and out."""
    metric = fill_holes(frame.to_metres(buildings.geometry), cfg.fill_holes_m2)
    keep = shapely.area(metric) >= max(cfg.min_area_m2, 1e-12)
    metric, buildings = metric[keep], buildings.take(keep)
    if cfg.simplify_px > 0:
        metric = shapely.simplify(metric, cfg.simplify_px * frame.gsd, preserve_topology=True)
    if cfg.regularize:
        metric, _ = regularize_polygons(metric, cfg.regularize_angle_deg, cfg.regularize_min_edge_m,
                                        cfg.regularize_max_change, ORIENTATION_SMOOTHING_PX * frame.gsd)
    metric = make_valid_polygons(metric)
    keep = ~shapely.is_empty(metric)
    cleaned = buildings.take(keep)
    cleaned.geometry = frame.to_pixels(metric[keep])
    return cleaned


def to_footprints(buildings: Buildings, frame: GroundFrame, crs: str, mosaic: str) -> Footprints:
    """Output rows for (clean) pixel-space buildings, in the raster's CRS or in EPSG:4326 (`crs`)."""
    metric = frame.to_metres(buildings.geometry)
    geometry = make_valid_polygons(frame.to_crs(buildings.geometry, crs))  # reprojection can bend edges
    geometry = shapely.orient_polygons(geometry, exterior_cw=False)  # counter-clockwise shells (RFC 7946)
    return Footprints(geometry, buildings.id.copy(), buildings.block.copy(), shapely.area(metric),
                      shapely.length(metric), buildings.confidence, mosaic)
