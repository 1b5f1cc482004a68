"""Clean footprints: holes, minimum area, simplification, validity, ground units and CRS mapping."""
from __future__ import annotations

import dataclasses

import numpy as np
import pyproj
import pytest
import shapely
from affine import Affine
from rasterio.crs import CRS

from segcore.config import PolygonConfig
from segcore.raster.ground import pixel_size_m
from segcore.raster.io import RasterInfo, inspect_raster
from segcore.vectors.shapes import GroundFrame, clean_buildings, to_footprints
from tests.vectors.conftest import degrade, read_mask, run_blocks

RAW = PolygonConfig(min_area_m2=0, fill_holes_m2=0, simplify_px=0)
UTM_INFO = RasterInfo("utm.tif", 100, 100, 1, "uint8", CRS.from_epsg(32633).to_wkt(),
                      (0.5, 0.0, 500000.0, 0.0, -0.5, 5300000.0), None)


def _buildings(mask: np.ndarray):
    return run_blocks(mask.astype(np.uint8), None, 64)


def _same(a: shapely.Geometry, b: shapely.Geometry) -> bool:
    """Equal up to float rounding (outlines go through the metric frame and back)."""
    return shapely.normalize(a).equals_exact(shapely.normalize(b), tolerance=1e-6)


def _size(transform: Affine, crs: str, width: int, height: int) -> tuple[float, float]:
    size = pixel_size_m(transform, crs, width, height)
    assert size is not None
    return size


def test_pixel_size_on_the_ground_for_projected_geographic_and_web_mercator_crs():
    # UTM: map metres are ground metres divided by the point scale factor (0.9996 on the central meridian).
    x, y = _size(Affine(0.5, 0, 500000 - 50, 0, -0.5, 5300000), "EPSG:32633", 200, 200)
    assert x == pytest.approx(0.5 / 0.9996, rel=1e-6) and y == pytest.approx(0.5 / 0.9996, rel=1e-6)
    # Geographic: 1e-5 degree pixels at 60 N, against the geodesic distances on WGS 84.
    transform = Affine(1e-5, 0, 10.0, 0, -1e-5, 60.0)
    x, y = _size(transform, "EPSG:4326", 1000, 1000)
    lon, lat = transform * (500, 500)
    geod = pyproj.Geod(ellps="WGS84")
    assert x == pytest.approx(geod.inv(lon, lat, lon + 1e-5, lat)[2], rel=1e-6)
    assert y == pytest.approx(geod.inv(lon, lat, lon, lat - 1e-5)[2], rel=1e-6)
    assert x == pytest.approx(y / 2, rel=0.01)  # a degree of longitude is half as long at 60 N
    # Web Mercator: 1 m map pixels are cos(latitude) m on the ground (here about 45 N).
    x, y = _size(Affine(1.0, 0, 0, 0, -1.0, 5621521.0), "EPSG:3857", 10, 10)
    assert x == pytest.approx(np.cos(np.radians(45.0)), rel=0.01) and y == pytest.approx(x, rel=0.01)
    assert pixel_size_m(Affine.identity(), None, 10, 10) is None


def test_small_holes_are_filled_and_large_ones_kept():
    mask = np.zeros((40, 40), np.uint8)
    mask[5:35, 5:35] = 1
    mask[10:12, 10:12] = 0  # 4 px, about 1 m²
    mask[20:26, 20:26] = 0  # 36 px, about 9 m²
    frame = GroundFrame.of(UTM_INFO)
    clean = clean_buildings(_buildings(mask), frame, dataclasses.replace(RAW, fill_holes_m2=2.0))
    (polygon,) = clean.geometry
    assert len(polygon.interiors) == 1 and shapely.Polygon(polygon.interiors[0]).area == pytest.approx(36)
    assert polygon.area == pytest.approx(900 - 36)


def test_buildings_below_the_minimum_area_are_dropped():
    mask = np.zeros((30, 30), np.uint8)
    mask[2:4, 2:5] = 1  # 6 px, about 1.5 m²
    mask[10:20, 10:20] = 1  # 100 px, about 25 m²
    frame = GroundFrame.of(UTM_INFO)
    clean = clean_buildings(_buildings(mask), frame, dataclasses.replace(RAW, min_area_m2=2.0))
    assert clean.pixels.tolist() == [100]
    assert clean.id.tolist() == [10 * 30 + 10]


def test_simplification_cuts_vertices_and_every_outline_is_valid(city):
    mask, probability = degrade(read_mask(city.labels))
    frame = GroundFrame.of(inspect_raster(str(city.labels)))
    raw = run_blocks(mask, probability, 256)
    simple = clean_buildings(raw, frame, PolygonConfig(min_area_m2=0, fill_holes_m2=0, simplify_px=1.0))
    assert len(simple) == len(raw)
    raw_vertices = shapely.get_num_coordinates(raw.geometry).sum()
    assert shapely.get_num_coordinates(simple.geometry).sum() < raw_vertices / 3
    assert shapely.is_valid(simple.geometry).all()
    for crs in ("image", "EPSG:4326"):
        footprints = to_footprints(simple, frame, crs, "city")
        assert shapely.is_valid(footprints.geometry).all()
        assert set(shapely.get_type_id(footprints.geometry).tolist()) <= {3, 6}  # polygons only


def test_self_touching_outlines_are_valid_after_simplification():
    # A ring of pixels whose hole meets the outside at a corner, and a comb that simplification squeezes.
    mask = np.zeros((12, 12), np.uint8)
    mask[1:6, 1:6] = 1
    mask[2:5, 2:5] = 0
    mask[1, 1] = 0
    mask[7:11, 1:11] = 1
    mask[7:10, 2:11:2] = 0
    frame = GroundFrame.of(UTM_INFO)
    for tolerance in (0.5, 1.0, 3.0):
        clean = clean_buildings(_buildings(mask), frame, dataclasses.replace(RAW, simplify_px=tolerance))
        assert shapely.is_valid(clean.geometry).all() and not shapely.is_empty(clean.geometry).any()


def test_footprints_in_the_image_crs_follow_the_affine_transform():
    mask = np.zeros((20, 20), np.uint8)
    mask[4:8, 3:13] = 1  # 10 x 4 pixels
    frame = GroundFrame.of(UTM_INFO)
    footprints = to_footprints(clean_buildings(_buildings(mask), frame, RAW), frame, "image", "m1")
    (polygon,) = footprints.geometry
    assert _same(polygon, shapely.box(500000 + 1.5, 5300000 - 4.0, 500000 + 6.5, 5300000 - 2.0))
    assert polygon.exterior.is_ccw
    ground = 0.5 / 0.9996  # the UTM point scale factor at its central meridian (x = 500000)
    assert footprints.area_m2[0] == pytest.approx(40 * ground**2, rel=1e-5)
    assert footprints.perimeter_m[0] == pytest.approx(28 * ground, rel=1e-5)
    assert footprints.mosaic == "m1" and footprints.id.tolist() == [4 * 20 + 3] and footprints.block.tolist() == [0]


def test_footprints_in_epsg_4326_are_longitude_latitude():
    mask = np.zeros((20, 20), np.uint8)
    mask[4:8, 3:13] = 1
    frame = GroundFrame.of(UTM_INFO)
    footprints = to_footprints(clean_buildings(_buildings(mask), frame, RAW), frame, "EPSG:4326", "m1")
    (polygon,) = footprints.geometry
    expected = pyproj.Transformer.from_crs(32633, 4326, always_xy=True).transform(500001.5, 5299996.0)
    assert polygon.bounds[0] == pytest.approx(expected[0], abs=1e-9)
    assert polygon.bounds[1] == pytest.approx(expected[1], abs=1e-9)
    assert 14 < polygon.bounds[0] < 16 and 47 < polygon.bounds[1] < 48
    assert frame.output_crs("EPSG:4326") == CRS.from_epsg(4326) and frame.output_crs("image") == frame.crs


def test_a_geographic_raster_has_areas_in_square_metres():
    info = RasterInfo("geo.tif", 100, 100, 1, "uint8", CRS.from_epsg(4326).to_wkt(),
                      (1e-5, 0.0, 10.0, 0.0, -1e-5, 60.0), None)
    mask = np.zeros((100, 100), np.uint8)
    mask[40:60, 30:70] = 1
    frame = GroundFrame.of(info)
    footprints = to_footprints(clean_buildings(_buildings(mask), frame, RAW), frame, "image", "geo")
    area, perimeter = pyproj.Geod(ellps="WGS84").geometry_area_perimeter(footprints.geometry[0])
    assert footprints.area_m2[0] == pytest.approx(abs(area), rel=1e-3)
    assert footprints.perimeter_m[0] == pytest.approx(perimeter, rel=1e-3)


def test_a_raster_without_crs_gives_pixel_coordinates_and_pixel_units():
    info = RasterInfo("plain.tif", 20, 20, 1, "uint8", None, tuple(Affine.identity())[:6], None)
    mask = np.zeros((20, 20), np.uint8)
    mask[2:5, 6:10] = 1
    frame = GroundFrame.of(info)
    assert frame.output_crs("EPSG:4326") is None and frame.pixel_size == (1.0, 1.0)
    footprints = to_footprints(clean_buildings(_buildings(mask), frame, RAW), frame, "EPSG:4326", "plain")
    assert _same(footprints.geometry[0], shapely.box(6, 2, 10, 5))
    assert footprints.area_m2.tolist() == [12.0]
    assert np.isnan(footprints.confidence).all()
