"""Regularized outlines: right angles along the dominant orientation, few vertices, no loss of fit."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import shapely
from affine import Affine
from rasterio.features import rasterize

from segcore.config import PolygonConfig
from segcore.raster.io import inspect_raster
from segcore.vectors.regularize import dominant_angle, regularize_polygon
from segcore.vectors.shapes import GroundFrame, clean_buildings
from segcore.vectors.truth import read_truth_polygons
from tests.vectors.conftest import degrade, read_mask, run_blocks

SIMPLIFIED = PolygonConfig(min_area_m2=0, fill_holes_m2=0, simplify_px=1.0)
REGULARIZED = dataclasses.replace(SIMPLIFIED, regularize=True)


def _vertices(polygons: np.ndarray) -> np.ndarray:
    return shapely.get_num_coordinates(shapely.get_exterior_ring(polygons)) - 1


def _angles_are_right(polygon: shapely.Polygon) -> bool:
    ring = np.asarray(polygon.exterior.coords)
    step = np.diff(np.vstack([ring, ring[1:2]]), axis=0)
    unit = step / np.hypot(step[:, :1], step[:, 1:])
    return bool(np.all(np.abs(np.sum(unit[:-1] * unit[1:], axis=1)) < 1e-9))


def _mask_of(polygon: shapely.Polygon, size: int) -> np.ndarray:
    return rasterize([polygon], out_shape=(size, size), transform=Affine.identity(), dtype="uint8")


def _iou(a: shapely.Geometry, b: shapely.Geometry) -> float:
    return a.intersection(b).area / a.union(b).area


@pytest.mark.parametrize("angle", [0.0, 7.0, 23.0, 38.0, 61.0])
def test_a_rotated_rectangle_becomes_four_right_angles(angle):
    truth = shapely.affinity.rotate(shapely.box(30, 40, 90, 72), angle, origin="centroid")
    raw = run_blocks(_mask_of(truth, 128), None, 64)
    frame = GroundFrame(Affine.identity(), None, (1.0, 1.0))
    simple = clean_buildings(raw, frame, SIMPLIFIED).geometry[0]
    regular = clean_buildings(raw, frame, REGULARIZED).geometry[0]
    assert _vertices(np.array([regular])).tolist() == [4] and _angles_are_right(regular)
    found = math.degrees(dominant_angle(np.asarray(regular.exterior.coords)))
    assert (found - angle + 45) % 90 - 45 == pytest.approx(0, abs=1.0)
    assert _iou(regular, truth) >= _iou(simple, truth) and _iou(regular, truth) > 0.97


def test_an_l_shape_becomes_six_right_angles():
    truth = shapely.affinity.rotate(shapely.Polygon([(20, 20), (100, 20), (100, 50), (50, 50), (50, 100), (20, 100)]),
                                    17, origin="centroid")
    raw = run_blocks(_mask_of(truth, 128), None, 50)
    regular = clean_buildings(raw, GroundFrame(Affine.identity(), None, (1.0, 1.0)), REGULARIZED).geometry[0]
    assert _vertices(np.array([regular])).tolist() == [6] and _angles_are_right(regular)
    assert _iou(regular, truth) > 0.97


def test_shapes_that_regularization_would_change_too_much_keep_their_outline():
    # A 30 x 20 rectangle with a 12 m corner cut off at 45 degrees: squaring the cut adds 72 m² to 528 (13.6%).
    cut = shapely.Polygon([(0, 0), (30, 0), (30, 8), (18, 20), (0, 20)])
    assert regularize_polygon(cut, 15.0, 2.0, 0.10, 1.0) is None
    squared = regularize_polygon(cut, 15.0, 2.0, 0.15, 1.0)
    assert squared is not None
    assert squared.symmetric_difference(shapely.box(0, 0, 30, 20)).area < 1e-9 and _vertices(np.array([squared])) == 4
    assert regularize_polygon(shapely.box(0, 0, 1.5, 1.5), 15.0, 2.0, 1.0, 1.0) is None  # every edge too short


def test_on_the_degraded_sample_city_regularized_outlines_are_simpler_and_fit_as_well(city):
    truth_mask = read_mask(city.labels)
    mask, probability = degrade(truth_mask)
    info = inspect_raster(str(city.labels))
    frame = GroundFrame.of(info)
    raw = run_blocks(mask, probability, 512)
    truths = read_truth_polygons(str(city.buildings), info).geometry

    def fit(polygons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Best IoU against any true footprint, and exterior vertices, of each polygon."""
        p, t = shapely.STRtree(truths).query(polygons, predicate="intersects")
        inter = shapely.area(shapely.intersection(polygons[p], truths[t]))
        iou = np.zeros(len(polygons))
        np.maximum.at(iou, p, inter / (shapely.area(polygons[p]) + shapely.area(truths[t]) - inter))
        return iou, _vertices(polygons)

    cfg = PolygonConfig()  # the defaults: 4 m² minimum, 1 px simplification
    simple_iou, simple_vertices = fit(clean_buildings(raw, frame, cfg).geometry)
    regular = clean_buildings(raw, frame, dataclasses.replace(cfg, regularize=True)).geometry
    regular_iou, regular_vertices = fit(regular)
    assert len(regular) == len(simple_iou) >= 80
    assert np.median(regular_vertices) <= 6 < np.median(simple_vertices)
    assert regular_iou.mean() >= simple_iou.mean()
    assert shapely.is_valid(regular).all()
