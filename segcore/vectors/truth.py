"""True building polygons from a vector file, on an image's pixel grid, for object metrics.

GeoJSON, GeoPackage and FlatGeobuf are read with pyogrio (the first layer), GeoParquet with pyarrow (its
`geo` metadata names the WKB column and the CRS). Polygons are reprojected to the image's CRS, mapped to its
pixel coordinates and clipped to it. Features without a geometry, empty ones and ones with no area are
skipped; invalid ones are repaired (make_valid), and both are counted, because a label file with many of
either deserves a look before its metrics are trusted.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
import pyarrow.parquet as pq
import shapely
from affine import Affine
from pyogrio.errors import DataLayerError, DataSourceError
from pyogrio.raw import read
from rasterio.crs import CRS
from rasterio.errors import CRSError

from segcore import storage
from segcore.config import S3Config
from segcore.errors import InputError
from segcore.raster.io import RasterInfo
from segcore.vectors.shapes import make_valid_polygons, map_affine, reproject

PARQUET_SUFFIXES = (".parquet", ".geoparquet")
VECTOR_SUFFIXES = (".geojson", ".json", ".gpkg", ".fgb", *PARQUET_SUFFIXES)


@dataclass
class TruthPolygons:
    geometry: np.ndarray  # shapely (Multi)Polygons in the image's pixel coordinates, inside the image
    repaired: int  # invalid geometries made valid
    skipped: int  # features without a geometry, or with an empty, non-polygonal or area-less one
    outside: int  # polygons entirely outside the image


def _read_parquet(path: str, source) -> tuple[np.ndarray, CRS | None]:
    try:
        parquet = pq.ParquetFile(source)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({' '.join(str(exc).split())[:160]})") from None
    metadata = parquet.metadata.metadata or {}
    if b"geo" not in metadata:
        raise InputError(f"{path}: Parquet file without GeoParquet 'geo' metadata: expected building polygons")
    geo = json.loads(metadata[b"geo"])
    name = geo.get("primary_column", "geometry")
    column = geo.get("columns", {}).get(name, {})
    if column.get("encoding", "WKB").upper() != "WKB":
        raise InputError(f"{path}: GeoParquet geometry encoding {column.get('encoding')!r}: expected WKB")
    crs_json = column.get("crs", "OGC:CRS84")  # GeoParquet's default; null means unknown
    crs = None if crs_json is None else CRS.from_user_input(
        crs_json if isinstance(crs_json, str) else json.dumps(crs_json))
    wkb = [value for batch in parquet.iter_batches(columns=[name]) for value in batch.column(0).to_pylist()]
    return np.array(wkb, object), crs


def _read_ogr(path: str, source) -> tuple[np.ndarray, CRS | None]:
    try:
        meta, _, wkb, _ = read(source, read_geometry=True, columns=[])
    except (DataSourceError, DataLayerError) as exc:
        raise InputError(f"{path}: not a readable vector file ({' '.join(str(exc).split())[:160]})") from None
    return wkb, CRS.from_user_input(meta["crs"]) if meta.get("crs") else None


def _polygons(wkb: np.ndarray) -> tuple[np.ndarray, int, int]:
    """(valid polygonal geometries, repaired, skipped) from WKB values (None for a missing geometry)."""
    geometry = shapely.from_wkb(wkb, on_invalid="ignore")
    polygonal = np.isin(shapely.get_type_id(geometry), (3, 6, 7)) & ~shapely.is_empty(geometry)
    geometry = geometry[polygonal]
    invalid = ~shapely.is_valid(geometry)
    geometry = make_valid_polygons(geometry)  # collections also keep only their polygons here
    kept = ~shapely.is_empty(geometry) & (shapely.area(geometry) > 0)
    return geometry[kept], int((invalid & kept).sum()), int(len(wkb) - kept.sum())


def read_truth_polygons(path: str, image: RasterInfo, s3: S3Config | None = None) -> TruthPolygons:
    """The building polygons of a GeoJSON, GeoPackage, FlatGeobuf or GeoParquet file on `image`'s grid."""
    suffix = PurePosixPath(path).suffix.lower()
    if suffix not in VECTOR_SUFFIXES:
        raise InputError(f"{path}: unknown label file type {suffix!r}: expected one of {', '.join(VECTOR_SUFFIXES)}")
    if not image.georeferenced:
        raise InputError(f"{image.path}: has no CRS, so polygon labels {path} cannot be placed on it")
    if not storage.exists(path, s3):
        raise InputError(f"{path}: does not exist")
    try:
        source = io.BytesIO(storage.filesystem(path, s3).cat_file(path)) if storage.is_s3(path) else path
    except OSError as exc:
        raise InputError(storage.describe_error(path, exc)) from None
    try:
        wkb, crs = (_read_parquet if suffix in PARQUET_SUFFIXES else _read_ogr)(path, source)
    except CRSError as exc:
        raise InputError(f"{path}: unrecognised CRS ({' '.join(str(exc).split())[:160]})") from None
    geometry, repaired, skipped = _polygons(wkb)
    if crs is not None:
        geometry = reproject(geometry, crs, CRS.from_wkt(image.crs or ""))
    pixels = map_affine(geometry, ~Affine(*image.transform[:6]))
    clipped = make_valid_polygons(shapely.clip_by_rect(pixels, 0, 0, image.width, image.height))
    inside = shapely.area(clipped) > 0
    if len(geometry) and not inside.any():
        raise InputError(f"{path}: none of its {len(geometry)} building polygons overlaps image {image.path} "
                         f"(polygon CRS {crs.to_string() if crs else 'unknown'}; check the file's CRS)")
    return TruthPolygons(clipped[inside], repaired, skipped, int((~inside).sum()))
