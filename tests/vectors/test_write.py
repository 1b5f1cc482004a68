"""Footprint files: GeoParquet read by GeoPandas, DuckDB and pyarrow; GDAL formats read back; atomic writes."""
from __future__ import annotations

import io
import json
import os

import duckdb
import geopandas
import numpy as np
import pyarrow.parquet as pq
import pyogrio
import pytest
import shapely
from rasterio.crs import CRS

from segcore.config import S3Config
from segcore.errors import InputError
from segcore.storage import filesystem
from segcore.vectors import write
from segcore.vectors.shapes import Footprints
from segcore.vectors.write import open_vector_writer, write_footprint_file

UTM = CRS.from_epsg(32633)


def _batch(start: int, count: int, *, confidence: bool = True, multi: bool = False) -> Footprints:
    boxes = [shapely.box(500000 + 10 * k, 5300000, 500000 + 10 * k + 6, 5300000 + 4)
             for k in range(start, start + count)]
    if multi:
        boxes[0] = shapely.MultiPolygon([boxes[0], shapely.box(499000, 5299000, 499001, 5299001)])
    geometry = np.empty(count, object)
    geometry[:] = boxes
    ids = np.arange(start, start + count, dtype=np.int64)
    return Footprints(geometry, ids * 1000, ids % 3, shapely.area(geometry), shapely.length(geometry),
                      ids / 100 if confidence else np.full(count, np.nan), "mosaic-a")


def _all(batches: list[Footprints]) -> np.ndarray:
    return np.concatenate([b.geometry for b in batches])


def test_geoparquet_is_read_by_geopandas_duckdb_and_pyarrow(tmp_path, monkeypatch):
    monkeypatch.setattr(write, "ROW_GROUP_ROWS", 4)  # several row groups from a few rows
    batches = [_batch(0, 3), _batch(3, 0), _batch(3, 5, confidence=False), _batch(8, 2, multi=True)]
    path = str(tmp_path / "buildings.parquet")
    with open_vector_writer(path, "geoparquet", UTM) as writer:
        for batch in batches:
            writer.write(batch)
    assert writer.count == 10 and sorted(os.listdir(tmp_path)) == ["buildings.parquet"]

    frame = geopandas.read_parquet(path)
    assert frame.crs == UTM and len(frame) == 10
    # GeoPandas knows the bbox column for the geometry's covering and leaves it out.
    assert list(frame.columns) == ["id", "mosaic", "block", "area_m2", "perimeter_m", "confidence", "geometry"]
    assert frame["id"].tolist() == [k * 1000 for k in range(10)] and set(frame["mosaic"]) == {"mosaic-a"}
    assert frame["confidence"].isna().tolist() == [False] * 3 + [True] * 5 + [False] * 2  # unknown is null
    assert all(a.equals(b) for a, b in zip(frame.geometry, _all(batches), strict=True))

    relation = duckdb.sql(f"select id, geometry::BLOB, bbox.xmin from read_parquet('{path}') order by id")
    assert relation is not None
    rows = relation.fetchall()
    assert [r[0] for r in rows] == frame["id"].tolist()
    assert all(shapely.from_wkb(r[1]).equals(g) for r, g in zip(rows, _all(batches), strict=True))
    assert [r[2] for r in rows] == pytest.approx(shapely.bounds(_all(batches))[:, 0].tolist())

    parquet = pq.ParquetFile(path)
    assert parquet.num_row_groups >= 3 and parquet.schema_arrow.names[-1] == "bbox"
    geo = json.loads(parquet.metadata.metadata[b"geo"])
    column = geo["columns"]["geometry"]
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry" and column["encoding"] == "WKB"
    assert column["geometry_types"] == ["MultiPolygon", "Polygon"]
    assert CRS.from_user_input(json.dumps(column["crs"])) == UTM
    assert column["bbox"] == pytest.approx(list(shapely.total_bounds(_all(batches))))
    assert column["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]


@pytest.mark.parametrize("format", ["gpkg", "fgb", "geojson"])
def test_gdal_formats_read_back_with_their_crs_and_attributes(tmp_path, format):
    batches = [_batch(0, 4), _batch(4, 3, confidence=False)]
    path = str(tmp_path / f"buildings{write.SUFFIXES[format]}")
    with open_vector_writer(path, format, UTM) as writer:
        for batch in batches:
            writer.write(batch)
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(path)] and os.path.isfile(path)
    meta, _, geometry, fields = pyogrio.raw.read(path)
    assert CRS.from_user_input(meta["crs"]) == UTM and meta["geometry_type"] == "Polygon"
    columns = dict(zip(meta["fields"], fields, strict=True))
    order = np.argsort(columns["id"])  # FlatGeobuf stores features in its spatial index's order
    assert columns["id"][order].tolist() == [k * 1000 for k in range(7)]
    assert columns["area_m2"].tolist() == pytest.approx([24.0] * 7)
    assert np.isnan(columns["confidence"][order][4:].astype(float)).all()
    assert not np.isnan(columns["confidence"][order][:4].astype(float)).any()
    assert all(shapely.from_wkb(w).equals(g) for w, g in zip(geometry[order], _all(batches), strict=True))


def test_geojson_in_epsg_4326_follows_rfc_7946(tmp_path):
    square = np.empty(1, object)
    square[:] = [shapely.Polygon([(16.0, 48.0), (16.0, 48.001), (16.001, 48.001), (16.001, 48.0)])]  # clockwise
    footprints = Footprints(square, np.array([1]), np.array([0]), np.array([1.0]), np.array([4.0]),
                            np.array([0.9]), "m")
    path = tmp_path / "b.geojson"
    with open_vector_writer(str(path), "geojson", CRS.from_epsg(4326)) as writer:
        writer.write(footprints)
    document = json.loads(path.read_text())
    assert "crs" not in document  # RFC 7946: always WGS 84 longitude/latitude
    ring = document["features"][0]["geometry"]["coordinates"][0]
    assert shapely.LinearRing(ring).is_ccw  # exterior rings counter-clockwise
    assert min(p[0] for p in ring) == pytest.approx(16.0) and min(p[1] for p in ring) == pytest.approx(48.0)


def test_pixel_coordinates_are_written_without_a_crs(tmp_path):
    path = str(tmp_path / "b.parquet")
    with open_vector_writer(path, "geoparquet", None) as writer:
        writer.write(_batch(0, 2))
    geo = json.loads(pq.ParquetFile(path).metadata.metadata[b"geo"])
    assert geo["columns"]["geometry"]["crs"] is None  # GeoParquet: null means unknown (not the OGC:CRS84 default)
    path = str(tmp_path / "b.gpkg")
    with open_vector_writer(path, "gpkg", None) as writer:
        writer.write(_batch(0, 2))
    assert pyogrio.read_info(path)["crs"] is None and len(pyogrio.raw.read(path)[2]) == 2


def test_an_empty_file_is_still_a_valid_file(tmp_path):
    for format, suffix in write.SUFFIXES.items():
        path = str(tmp_path / f"empty{suffix}")
        with open_vector_writer(path, format, UTM):
            pass
        if format == "geoparquet":
            assert len(geopandas.read_parquet(path)) == 0
        else:
            assert len(pyogrio.raw.read(path)[2]) == 0


def test_an_unknown_format_is_one_line_and_writes_nothing(tmp_path):
    with pytest.raises(InputError) as error:
        open_vector_writer(str(tmp_path / "b.shp"), "shapefile", UTM)
    assert "'shapefile'" in str(error.value) and "geoparquet" in str(error.value) and "\n" not in str(error.value)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("format", ["geoparquet", "fgb"])
def test_an_unwritable_path_is_one_line_and_leaves_nothing(tmp_path, format):
    (tmp_path / "file").write_text("not a folder")
    target = str(tmp_path / "file" / f"b{write.SUFFIXES[format]}")
    with pytest.raises(InputError) as error:
        write_footprint_file(target, [_batch(0, 2)], format, UTM)
    assert str(error.value).startswith(target) and "\n" not in str(error.value)
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_a_failure_while_writing_leaves_nothing(tmp_path):
    for format in write.SUFFIXES:
        with pytest.raises(RuntimeError), open_vector_writer(str(tmp_path / f"b.{format}"), format, UTM) as writer:
            writer.write(_batch(0, 2))
            raise RuntimeError("the caller failed half-way")
    assert os.listdir(tmp_path) == []


def test_write_footprint_file_publishes_to_s3(s3_bucket):
    endpoint, bucket = s3_bucket
    s3 = S3Config(endpoint_url=endpoint)
    path = f"s3://{bucket}/city/buildings.parquet"
    assert write_footprint_file(path, [_batch(0, 3), _batch(3, 2)], "geoparquet", UTM, s3) == 5
    local = filesystem(path, s3).cat_file(path)
    frame = geopandas.read_parquet(io.BytesIO(local))
    assert frame["id"].tolist() == [0, 1000, 2000, 3000, 4000] and frame.crs == UTM
