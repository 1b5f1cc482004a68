"""Ground sample distance: how many metres a pixel covers on the ground, for any CRS."""
from __future__ import annotations

import math

from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.warp import transform as transform_points

# WGS 84 ellipsoid: local radii of curvature turn small longitude/latitude steps into metres.
_SEMI_MAJOR = 6378137.0
_ECCENTRICITY2 = 6.69437999014e-3


def pixel_size_m(transform: Affine | tuple, crs: CRS | str | None, width: int, height: int
                 ) -> tuple[float, float] | None:
    """Ground length in metres of one pixel step along a row (x) and along a column (y), at the raster's centre.

    Measured on the WGS 84 ellipsoid, so it is right for geographic CRSs and for projections whose map metres
    are not ground metres (Web Mercator's grow as 1/cos(latitude); UTM's differ by up to 0.1%). A CRS that
    cannot be related to longitude/latitude falls back to its linear unit. None for a raster without a CRS.
    """
    if crs is None:
        return None
    source = crs if isinstance(crs, CRS) else CRS.from_user_input(crs)
    affine = transform if isinstance(transform, Affine) else Affine(*transform[:6])
    centre = (width / 2, height / 2)
    pixels = [centre, (centre[0] + 1, centre[1]), (centre[0], centre[1] + 1)]
    xs, ys = zip(*(affine * point for point in pixels), strict=True)
    try:
        lons, lats = transform_points(source, CRS.from_epsg(4326), list(xs), list(ys))
    except CRSError:
        lons = lats = []
    if len(lons) != 3 or not all(map(math.isfinite, [*lons, *lats])):
        if not source.is_projected:
            return None
        factor = source.linear_units_factor[1]
        return math.hypot(affine.a, affine.d) * factor, math.hypot(affine.b, affine.e) * factor
    latitude = math.radians(lats[0])
    curvature = 1 - _ECCENTRICITY2 * math.sin(latitude) ** 2
    east_per_degree = math.radians(1) * _SEMI_MAJOR / math.sqrt(curvature) * math.cos(latitude)
    north_per_degree = math.radians(1) * _SEMI_MAJOR * (1 - _ECCENTRICITY2) / curvature ** 1.5

    def step(index: int) -> float:
        east = ((lons[index] - lons[0] + 180) % 360 - 180) * east_per_degree
        return math.hypot(east, (lats[index] - lats[0]) * north_per_degree)

    return step(1), step(2)


def ground_sample_distance(transform: Affine | tuple, crs: CRS | str | None, width: int, height: int) -> float | None:
    """Metres per pixel on the ground: the mean of `pixel_size_m`'s two steps; None without a CRS."""
    size = pixel_size_m(transform, crs, width, height)
    return None if size is None else (size[0] + size[1]) / 2


# Resampling softens the image and costs time, and a model copes with buildings somewhat larger or smaller
# than in training: on real 0.264 m imagery, a model trained at 0.296 m lost 0.03 IoU when the imagery was
# resampled to 0.296 m (BENCHMARKS.md), while at twice or half its resolution it misses buildings. So only
# resolutions further apart than this ratio are resampled.
RESAMPLE_RATIO = 1.25


def resampling_scale(gsd_m: float | None, target_gsd_m: float | None) -> float:
    """Target pixels per source pixel that bring imagery of `gsd_m` to `target_gsd_m`: 1.0 when either is
    unknown or they are within RESAMPLE_RATIO of each other."""
    if not gsd_m or not target_gsd_m or max(gsd_m, target_gsd_m) / min(gsd_m, target_gsd_m) <= RESAMPLE_RATIO:
        return 1.0
    return gsd_m / target_gsd_m
