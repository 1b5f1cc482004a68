"""Footprint files written in batches: GeoParquet (pyarrow), GeoPackage, FlatGeobuf and GeoJSON (pyogrio).

- GeoParquet 1.1: a WKB `geometry` column, a `bbox` covering column (xmin, ymin, xmax, ymax) so readers can
  skip row groups by area, row groups of `ROW_GROUP_ROWS` as batches arrive, and the `geo` metadata (PROJJSON
  CRS, geometry types, bounding box) added to the footer when the file is closed.
- The GDAL formats are written by one `pyogrio.raw.write_arrow` call when the writer is closed, streaming the
  batches back from a local Arrow spool file: one layer creation and one transaction, whatever the number
  of batches, and the layer's geometry type is known by then. GeoJSON in EPSG:4326 is written as RFC 7946.

Everything is written under a temporary name next to `local_path` and renamed to it by `close`; a failure
removes it (`abort`, or leaving a `with` block by an exception). Publish the finished file with
`storage.publish_file` (or use `write_footprint_file`).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from pyogrio.raw import write_arrow
from rasterio.crs import CRS

from segcore.config import S3Config
from segcore.errors import InputError
from segcore.storage import describe_error, publish_file
from segcore.vectors.shapes import Footprints

SUFFIXES = {"geoparquet": ".parquet", "gpkg": ".gpkg", "fgb": ".fgb", "geojson": ".geojson"}
OGR_DRIVERS = {"gpkg": "GPKG", "fgb": "FlatGeobuf", "geojson": "GeoJSON"}
LAYER = "buildings"
# Rows per Parquet row group: large enough to compress well, small enough for bbox-filtered reads to skip most.
ROW_GROUP_ROWS = 65536
BBOX_TYPE = pa.struct([(name, pa.float64()) for name in ("xmin", "ymin", "xmax", "ymax")])
SCHEMA = pa.schema([("id", pa.int64()), ("mosaic", pa.string()), ("block", pa.int64()), ("area_m2", pa.float64()),
                    ("perimeter_m", pa.float64()), ("confidence", pa.float64()), ("geometry", pa.binary())])


def check_format(format: str) -> str:
    """The file suffix of a footprint format; an InputError for an unknown one."""
    if format not in SUFFIXES:
        raise InputError(f"footprint format {format!r} is unknown: expected one of {', '.join(SUFFIXES)}")
    return SUFFIXES[format]


def _table(footprints: Footprints, with_bbox: bool) -> pa.Table:
    bounds = shapely.bounds(footprints.geometry)
    columns = {
        "id": pa.array(footprints.id, pa.int64()), "mosaic": pa.array([footprints.mosaic] * len(footprints)),
        "block": pa.array(footprints.block, pa.int64()), "area_m2": pa.array(footprints.area_m2, pa.float64()),
        "perimeter_m": pa.array(footprints.perimeter_m, pa.float64()),
        "confidence": pa.array(footprints.confidence, pa.float64(), from_pandas=True),  # NaN -> null
        "geometry": pa.array(shapely.to_wkb(footprints.geometry, flavor="iso"), pa.binary()),
    }
    schema = SCHEMA
    if with_bbox:
        columns["bbox"] = pa.StructArray.from_arrays([pa.array(bounds[:, k]) for k in range(4)],
                                                     fields=list(BBOX_TYPE))
        schema = SCHEMA.append(pa.field("bbox", BBOX_TYPE))
    return pa.table(columns, schema=schema)


class VectorWriter:
    """Footprints into one file of `format`, with coordinates in `crs` (None: pixel coordinates)."""

    def __init__(self, local_path: str, format: str, crs: CRS | None):
        check_format(format)
        self.path, self.format, self.crs = local_path, format, crs
        self.count = 0
        self._types: set[str] = set()
        self._bbox = [math.inf, math.inf, -math.inf, -math.inf]
        self._pending: list[pa.Table] = []
        folder, name = os.path.split(os.path.abspath(local_path))
        # GDAL picks what to create by suffix (FlatGeobuf makes a folder of layers without one).
        self._temp = os.path.join(folder, f".{name}.partial-{uuid.uuid4().hex[:8]}{SUFFIXES[format]}")
        self._spool = f"{self._temp}.arrows"
        self._parquet: pq.ParquetWriter | None = None
        self._sink: pa.ipc.RecordBatchStreamWriter | None = None
        self._closed = False
        try:
            if format == "geoparquet":
                self._parquet = pq.ParquetWriter(self._temp, SCHEMA.append(pa.field("bbox", BBOX_TYPE)))
            else:
                self._sink = pa.ipc.new_stream(self._spool, SCHEMA)
        except OSError as exc:
            self.abort()
            raise InputError(describe_error(local_path, exc)) from None

    def write(self, footprints: Footprints) -> None:
        """Add a batch of footprints (an empty one is fine)."""
        if not len(footprints):
            return
        types = shapely.get_type_id(footprints.geometry)
        self._types.update("Polygon" if t == 3 else "MultiPolygon" for t in np.unique(types).tolist())
        xmin, ymin, xmax, ymax = shapely.total_bounds(footprints.geometry)
        self._bbox = [min(self._bbox[0], xmin), min(self._bbox[1], ymin),
                      max(self._bbox[2], xmax), max(self._bbox[3], ymax)]
        self.count += len(footprints)
        try:
            if self._parquet is not None:
                self._pending.append(_table(footprints, with_bbox=True))
                if sum(len(t) for t in self._pending) >= ROW_GROUP_ROWS:
                    self._flush()
            elif self._sink is not None:
                self._sink.write_table(_table(footprints, with_bbox=False))
        except OSError as exc:
            self.abort()
            raise InputError(describe_error(self.path, exc)) from None

    def _flush(self) -> None:
        if self._pending and self._parquet is not None:
            self._parquet.write_table(pa.concat_tables(self._pending), row_group_size=ROW_GROUP_ROWS)
        self._pending = []

    def _geo_metadata(self) -> dict:
        column: dict = {"encoding": "WKB", "geometry_types": sorted(self._types),
                        "crs": self.crs.to_dict(projjson=True) if self.crs else None,
                        "covering": {"bbox": {name: ["bbox", name] for name in ("xmin", "ymin", "xmax", "ymax")}}}
        if self.count:
            column["bbox"] = self._bbox
        return {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column}}

    def close(self) -> int:
        """Finish the file, rename it to `local_path`, and return the number of footprints written."""
        if self._closed:
            return self.count
        try:
            if self._parquet is not None:
                self._flush()
                self._parquet.add_key_value_metadata({"geo": json.dumps(self._geo_metadata())})
                self._parquet.close()
            elif self._sink is not None:
                self._sink.close()
                self._write_ogr()
            os.replace(self._temp, self.path)
        except OSError as exc:
            self.abort()
            raise InputError(describe_error(self.path, exc)) from None
        with contextlib.suppress(OSError):
            os.remove(self._spool)
        self._closed = True
        return self.count

    def _write_ogr(self) -> None:
        geometry_type = self._types.pop() if len(self._types) == 1 else "Unknown"
        options = {"RFC7946": "YES"} if self.format == "geojson" and self.crs == CRS.from_epsg(4326) else None
        with pa.memory_map(self._spool) as source, warnings.catch_warnings():
            warnings.filterwarnings("ignore", "'crs' was not provided")  # pixel coordinates: the caller warns
            write_arrow(pa.ipc.open_stream(source), self._temp, layer=LAYER, driver=OGR_DRIVERS[self.format],
                        geometry_name="geometry", geometry_type=geometry_type,
                        crs=self.crs.to_wkt() if self.crs else None, layer_options=options)

    def abort(self) -> None:
        """Stop and remove everything written so far."""
        self._closed = True
        for handle in (self._parquet, self._sink):
            with contextlib.suppress(Exception):
                if handle is not None:
                    handle.close()
        for path in (self._temp, self._spool):
            with contextlib.suppress(OSError):
                os.remove(path)

    def __enter__(self) -> VectorWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:
            self.abort()
        else:
            self.close()


def open_vector_writer(local_path: str, format: str, crs: CRS | None) -> VectorWriter:
    """A writer for `format` ("geoparquet", "gpkg", "fgb" or "geojson"); use it in a `with` block."""
    return VectorWriter(local_path, format, crs)


def write_footprint_file(path: str, batches: Iterable[Footprints], format: str, crs: CRS | None,
                         s3: S3Config | None = None) -> int:
    """Write batches to `path` (local or s3://) atomically; returns the number of footprints."""
    suffix = check_format(format)
    local = tempfile.mkdtemp(prefix="segcore-vectors-")
    try:
        with open_vector_writer(os.path.join(local, f"footprints{suffix}"), format, crs) as writer:
            for batch in batches:
                writer.write(batch)
        try:
            publish_file(writer.path, path, s3)
        except OSError as exc:
            raise InputError(describe_error(path, exc)) from None
        return writer.count
    finally:
        shutil.rmtree(local, ignore_errors=True)

