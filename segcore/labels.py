"""Building labels for windows of an image, from a mask raster or from polygons.

- A mask raster (GeoTIFF/COG/VRT) must lie on the image's grid (same size, transform and CRS); any
  value > 0 is building.
- Polygons (GeoJSON, `.geojson`/`.json`) are read once, reprojected to the image CRS when their CRS
  differs (the GeoJSON "crs" member, else EPSG:4326 as RFC 7946 says), and burned window by window
  with `rasterio.features.rasterize`, using only the polygons whose bounds reach the window. A file
  without buildings (none at all, or none over the image) is ground truth too: every window is 0.
Both give uint8 masks in {0, 1} that are 0 outside the image, and both check their input when opened,
so opening a label source is also its up-front validation.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import PurePosixPath

import numpy as np
from affine import Affine
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import CRSError, RasterioIOError
from rasterio.features import is_valid_geom, rasterize
from rasterio.warp import transform_geom
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from segcore.config import S3Config
from segcore.errors import InputError
from segcore.raster.io import RasterInfo, check_readable, open_raster, raster_info, resampled_view
from segcore.sources import Source
from segcore.storage import RASTER_SUFFIXES, filesystem, list_dir, read_bytes

POLYGON_SUFFIXES = (".geojson", ".json")
LABEL_SUFFIXES = RASTER_SUFFIXES + POLYGON_SUFFIXES


def match_labels(images: Sequence[Source], specs: list[str], s3: S3Config | None = None) -> list[str]:
    """One label path per image: `specs` in the images' order, or the files of one directory matched by name
    (a label file's stem is the image's: its file stem, or its STAC Item's id)."""
    if len(specs) == 1 and filesystem(specs[0], s3).isdir(specs[0]):
        folder = specs[0]
        by_stem: dict[str, str] = {}
        for path in list_dir(folder, s3):
            name = PurePosixPath(path)
            if name.suffix.lower() not in LABEL_SUFFIXES:
                continue
            if name.stem in by_stem:
                raise InputError(f"{path}: two label files with stem '{name.stem}' in {folder} ({by_stem[name.stem]})")
            by_stem[name.stem] = path
        missing = [image for image in images if image.name not in by_stem]
        if missing:
            raise InputError(f"{missing[0].path}: no label file with stem '{missing[0].name}' in {folder}")
        return [by_stem[image.name] for image in images]
    if len(specs) != len(images):
        shown = ", ".join(image.path for image in images[:3])
        more = ", ..." if len(images) > 3 else ""
        raise InputError(f"labels: {len(specs)} label file(s) for {len(images)} image(s) ({shown}{more}): "
                         "give one per image in the same order, or one directory")
    return list(specs)


def open_labels(path: str, image: RasterInfo, s3: S3Config | None = None,
                native: RasterInfo | None = None) -> MaskRaster | Polygons:
    """The label source at `path` for `image`; raises InputError if it does not fit the image. `native`: the
    image's own grid when `image` is a resampled view of it (a label raster fits that, and is resampled too)."""
    if PurePosixPath(path).suffix.lower() in POLYGON_SUFFIXES:
        return Polygons(path, image, s3)
    return MaskRaster(path, image, s3, native)


def _corners(transform: Affine, width: float, height: float) -> np.ndarray:
    """(4, 2) CRS coordinates of a pixel rectangle's corners (any affine, rotated ones included)."""
    return np.array([transform * (x, y) for x, y in ((0, 0), (width, 0), (0, height), (width, height))])


class MaskRaster:
    """An 8-bit building mask on the image's grid."""

    def __init__(self, path: str, image: RasterInfo, s3: S3Config | None = None, native: RasterInfo | None = None):
        self.path = path
        self.dataset = self.source = open_raster(path, s3)
        try:
            self._check(raster_info(self.source, path), native or image)
            check_readable(self.source, path)
        except InputError:
            self.source.close()
            raise
        if native is not None:  # nearest: labels stay labels
            self.dataset = resampled_view(self.source, image.width, image.height, Resampling.nearest)

    @staticmethod
    def _check(info: RasterInfo, image: RasterInfo) -> None:
        if (info.width, info.height) != (image.width, image.height):
            raise InputError(f"{info.path}: label raster is {info.width}x{info.height} pixels but image {image.path} "
                             f"is {image.width}x{image.height}: labels must be on the image's grid")
        pixel = max(abs(image.transform[0]), abs(image.transform[4]), 1e-12)
        if not np.allclose(info.transform, image.transform, rtol=0, atol=1e-3 * pixel):
            raise InputError(f"{info.path}: label raster transform {info.transform} differs from image {image.path} "
                             f"{image.transform}: labels must be on the image's grid")
        if info.crs and image.crs and CRS.from_wkt(info.crs) != CRS.from_wkt(image.crs):
            raise InputError(f"{info.path}: label raster CRS differs from image {image.path}'s: "
                             "labels must be on the image's grid")

    def read(self, window: Window) -> np.ndarray:
        """uint8 {0,1} mask of `window` (which may extend past the raster; outside is 0)."""
        height, width = int(window.height), int(window.width)
        mask = np.zeros((height, width), np.uint8)
        row0, col0 = int(window.row_off), int(window.col_off)
        r0, c0 = max(row0, 0), max(col0, 0)
        r1, c1 = min(row0 + height, self.dataset.height), min(col0 + width, self.dataset.width)
        if r1 <= r0 or c1 <= c0:
            return mask
        try:
            raw = self.dataset.read(1, window=Window(c0, r0, c1 - c0, r1 - r0))
        except RasterioIOError as exc:
            raise InputError(f"{self.path}: read failed ({' '.join(str(exc).split())[:160]})") from None
        mask[r0 - row0:r1 - row0, c0 - col0:c1 - col0] = raw > 0
        return mask

    def close(self) -> None:
        self.dataset.close()
        self.source.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _load_geojson(path: str, s3: S3Config | None) -> tuple[list[dict], CRS | None]:
    """Polygon geometries of a GeoJSON file and the CRS its "crs" member names (None without one)."""
    try:
        data = json.loads(read_bytes(path, s3))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not valid GeoJSON ({exc})") from None
    kind = data.get("type") if isinstance(data, dict) else None
    if kind == "FeatureCollection":
        geoms = [feature.get("geometry") for feature in data.get("features") or []]
    elif kind == "Feature":
        geoms = [data.get("geometry")]
    elif kind in ("Polygon", "MultiPolygon"):
        geoms = [data]
    else:
        raise InputError(f"{path}: GeoJSON of type {kind!r}: expected a FeatureCollection of building polygons")
    geoms = [geom for geom in geoms if geom]  # features without geometry carry nothing to burn
    for index, geom in enumerate(geoms):
        if geom.get("type") not in ("Polygon", "MultiPolygon") or not is_valid_geom(geom):
            raise InputError(f"{path}: feature {index} is a {geom.get('type')!r} that is not a valid "
                             "Polygon or MultiPolygon")
    return geoms, _geojson_crs(data, path)


def _geojson_crs(data: dict, path: str) -> CRS | None:
    """The CRS its "crs" member names, or None without one (RFC 7946: longitude/latitude on WGS 84)."""
    member = data.get("crs")
    if not member:
        return None
    props = member.get("properties", {}) if isinstance(member, dict) else {}
    name = props.get("name") or (f"EPSG:{props['code']}" if "code" in props else None)
    try:
        return CRS.from_user_input(name)
    except (CRSError, TypeError, ValueError):
        raise InputError(f"{path}: unrecognised \"crs\" member {member!r}") from None


def _bounds(geom: dict) -> tuple[float, float, float, float]:
    rings = geom["coordinates"] if geom["type"] == "Polygon" else [r for p in geom["coordinates"] for r in p]
    xy = np.concatenate([np.asarray(ring, float)[:, :2] for ring in rings])
    return xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()


def _not_lon_lat(path: str, bounds: np.ndarray, image_crs: CRS) -> InputError:
    """The error for a file without a "crs" member whose coordinates cannot be longitude/latitude."""
    (xmin, ymin), (xmax, ymax) = bounds[:, :2].min(axis=0), bounds[:, 2:].max(axis=0)
    example = f"EPSG:{image_crs.to_epsg()}" if image_crs.to_epsg() else "EPSG:32633"
    return InputError(
        f"{path}: coordinates span x {xmin:.1f} to {xmax:.1f}, y {ymin:.1f} to {ymax:.1f}, which is not "
        "longitude/latitude, and without a \"crs\" member GeoJSON is read as longitude/latitude (RFC 7946): "
        f"name the coordinates' CRS in one, e.g. \"crs\": {{\"type\": \"name\", \"properties\": "
        f"{{\"name\": \"{example}\"}}}}")


class Polygons:
    """Building polygons burned into windows of the image grid.

    A file with no polygons, or none over the image, is ground truth without buildings: `empty` is True,
    `empty_reason` says which, and every window reads as zeros. The caller decides whether that is
    acceptable (a training dataset needs a building somewhere; scoring a mosaic does not).
    """

    def __init__(self, path: str, image: RasterInfo, s3: S3Config | None = None):
        self.path = path
        self.transform = Affine(*image.transform)
        self.width, self.height = image.width, image.height
        if not image.georeferenced:
            raise InputError(f"{image.path}: has no CRS, so polygon labels {path} cannot be placed on it")
        geoms, stated_crs = _load_geojson(path, s3)
        crs = stated_crs or CRS.from_epsg(4326)
        image_crs = CRS.from_wkt(image.crs)
        self.empty_reason: str | None = "holds no building polygons" if not geoms else None
        self.geoms: list[dict] = []
        self.bounds = np.zeros((0, 4))
        if not geoms:
            return
        bounds = np.array([_bounds(geom) for geom in geoms])
        if stated_crs is None and (np.abs(bounds[:, [0, 2]]).max() > 180 or np.abs(bounds[:, [1, 3]]).max() > 90):
            raise _not_lon_lat(path, bounds, image_crs)
        if crs != image_crs:
            try:
                geoms = transform_geom(crs, image_crs, geoms)
            except CPLE_BaseError as exc:
                raise InputError(f"{path}: its polygons cannot be reprojected from {crs.to_string() or 'its CRS'} "
                                 f"to image {image.path}'s CRS ({exc})") from None
            bounds = np.array([_bounds(geom) for geom in geoms])
        keep = self._overlapping(bounds, _corners(self.transform, self.width, self.height))
        if not keep.any():
            self.empty_reason = (f"none of its {len(geoms)} building polygons overlaps image {image.path} "
                                 f"(polygon CRS {crs.to_string() or 'custom'}; check the file and its \"crs\" member)")
            return
        self.geoms = [geom for geom, kept in zip(geoms, keep, strict=True) if kept]
        self.bounds = bounds[keep]

    @property
    def empty(self) -> bool:
        """No building polygon lies over the image (`empty_reason` says why)."""
        return self.empty_reason is not None

    @staticmethod
    def _overlapping(bounds: np.ndarray, corners: np.ndarray) -> np.ndarray:
        (xmin, ymin), (xmax, ymax) = corners.min(axis=0), corners.max(axis=0)
        return (bounds[:, 0] < xmax) & (bounds[:, 2] > xmin) & (bounds[:, 1] < ymax) & (bounds[:, 3] > ymin)

    def read(self, window: Window) -> np.ndarray:
        """uint8 {0,1} mask of `window` (which may extend past the image; outside is 0)."""
        height, width = int(window.height), int(window.width)
        affine = window_transform(window, self.transform)
        selected = np.flatnonzero(self._overlapping(self.bounds, _corners(affine, width, height)))
        if not len(selected):
            return np.zeros((height, width), np.uint8)
        mask = rasterize(((self.geoms[i], 1) for i in selected), out_shape=(height, width), transform=affine,
                         fill=0, dtype="uint8")
        # Buildings cut by the image edge must not spill into the padding beyond it.
        row0, col0 = int(window.row_off), int(window.col_off)
        mask[max(0, self.height - row0):, :] = 0
        mask[:, max(0, self.width - col0):] = 0
        mask[:max(0, -row0), :] = 0
        mask[:, :max(0, -col0)] = 0
        return mask

    def close(self) -> None:
        self.geoms = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
