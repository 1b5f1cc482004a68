"""segcore.labels: polygons (the CRS of GeoJSON without a "crs" member, label files without buildings) and
matching label files to images."""
from __future__ import annotations

import json

import numpy as np
import pytest
from rasterio.crs import CRS
from rasterio.warp import transform
from rasterio.windows import Window

from segcore.errors import InputError
from segcore.labels import Polygons, match_labels
from segcore.raster.io import inspect_raster
from segcore.sources import Source
from tests.conftest import write_geotiff

UTM_NAME = {"type": "name", "properties": {"name": "EPSG:32633"}}


@pytest.fixture
def image(tmp_path):
    """A 60 x 40 image at 0.5 m in UTM 33N, whose top-left corner is (500000, 5300000)."""
    return inspect_raster(str(write_geotiff(tmp_path / "image.tif", np.zeros((3, 40, 60), np.uint8))))


def write_geojson(path, rings: list[list[list[float]]], crs: dict | None = None):
    data: dict = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}}
        for ring in rings]}
    if crs:
        data["crs"] = crs
    path.write_text(json.dumps(data))
    return str(path)


def square(x: float, y: float, side: float) -> list[list[float]]:
    return [[x, y], [x + side, y], [x + side, y - side], [x, y - side], [x, y]]


def test_metres_without_a_crs_member_is_one_line_suggesting_one(image, tmp_path):
    path = write_geojson(tmp_path / "b.geojson", [square(500005.0, 5299995.0, 5.0)])
    with pytest.raises(InputError) as error:
        Polygons(path, image)
    assert str(error.value) == (
        f"{path}: coordinates span x 500005.0 to 500010.0, y 5299990.0 to 5299995.0, which is not longitude/latitude, "
        'and without a "crs" member GeoJSON is read as longitude/latitude (RFC 7946): name the coordinates\' CRS '
        'in one, e.g. "crs": {"type": "name", "properties": {"name": "EPSG:32633"}}')


def test_the_suggested_crs_member_places_the_buildings(image, tmp_path):
    path = write_geojson(tmp_path / "b.geojson", [square(500005.0, 5299995.0, 5.0)], crs=UTM_NAME)
    with Polygons(path, image) as labels:
        assert not labels.empty and labels.empty_reason is None
        mask = labels.read(Window(0, 0, 60, 40))
    expected = np.zeros((40, 60), np.uint8)
    expected[10:20, 10:20] = 1  # 5 m from the corner at 0.5 m per pixel, 5 m a side
    assert np.array_equal(mask, expected)


def test_longitude_latitude_without_a_crs_member_is_reprojected(image, tmp_path):
    (lon,), (lat,) = transform(CRS.from_epsg(32633), CRS.from_epsg(4326), [500005.0], [5299995.0])
    path = write_geojson(tmp_path / "b.geojson", [square(lon, lat, 0.00005)])
    with Polygons(path, image) as labels:
        assert not labels.empty and labels.read(Window(0, 0, 60, 40))[10:13, 10:13].all()


def test_an_empty_feature_collection_is_ground_truth_without_buildings(image, tmp_path):
    path = write_geojson(tmp_path / "none.geojson", [])
    with Polygons(path, image) as labels:
        assert labels.empty and labels.empty_reason == "holds no building polygons"
        assert labels.read(Window(-5, -5, 70, 50)).shape == (50, 70)
        assert not labels.read(Window(-5, -5, 70, 50)).any()


def test_polygons_all_outside_the_image_are_ground_truth_without_buildings(image, tmp_path):
    path = write_geojson(tmp_path / "far.geojson", [square(600000.0, 5299995.0, 5.0)] * 2, crs=UTM_NAME)
    with Polygons(path, image) as labels:
        assert labels.empty
        assert labels.empty_reason.startswith(f"none of its 2 building polygons overlaps image {image.path} ")
        assert not labels.read(Window(0, 0, 60, 40)).any()


def test_a_label_directory_is_matched_by_name(tmp_path):
    (tmp_path / "labels").mkdir()
    for name in ("east.geojson", "west.tif", "readme.txt"):
        (tmp_path / "labels" / name).write_text("x")
    images = [Source(str(tmp_path / "img" / "west.tif"), "west"), Source(str(tmp_path / "img" / "east.tif"), "east")]
    assert match_labels(images, [str(tmp_path / "labels")]) == [str(tmp_path / "labels" / "west.tif"),
                                                                str(tmp_path / "labels" / "east.geojson")]
    with pytest.raises(InputError, match=r"north\.tif: no label file with stem 'north'"):
        match_labels([Source(str(tmp_path / "north.tif"), "north")], [str(tmp_path / "labels")])
    with pytest.raises(InputError, match=r"1 label file.* for 2 image"):
        match_labels(images, [str(tmp_path / "labels" / "west.tif")])
