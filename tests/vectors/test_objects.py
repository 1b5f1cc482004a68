"""Object metrics: SpaceNet matching, IoUs computed by hand, streaming equal to whole, label sources."""
from __future__ import annotations

import dataclasses
import json

import geopandas
import numpy as np
import pytest
import shapely
from affine import Affine

from segcore.config import PolygonConfig
from segcore.errors import InputError
from segcore.raster.grid import plan_blocks
from segcore.raster.io import RasterInfo, inspect_raster
from segcore.vectors.merge import FragmentMerger
from segcore.vectors.objects import IOU_BINS, ObjectCounts, ObjectEvaluator, mask_object_counts, spacenet_match
from segcore.vectors.polygonize import Buildings, geometry_array, polygonize_block
from segcore.vectors.shapes import GroundFrame, clean_buildings, map_affine, reach_px
from segcore.vectors.truth import TruthPolygons, read_truth_polygons
from tests.conftest import TEST_TRANSFORM, UTM_33N, write_geotiff
from tests.vectors.conftest import degrade, read_mask


def _stream(mask, probability, block_size, *, truths=None, truth_mask=None, cfg=None, frame=None,
            threshold=0.5, held=None) -> ObjectCounts:
    """Object counts of a predicted mask against truths, fed block by block in row-major order."""
    height, width = mask.shape
    blocks = plan_blocks(width, height, block_size)
    reach = reach_px(cfg, frame) if cfg else 0.0
    merger, evaluator = FragmentMerger(), ObjectEvaluator(blocks, truths, iou_threshold=threshold, reach=reach)
    for block in blocks:
        core = np.s_[block.row:block.row + block.height, block.col:block.col + block.width]
        finished = merger.add(polygonize_block(mask[core], None if probability is None else probability[core],
                                               block, width, height))
        if cfg:
            finished = clean_buildings(finished, frame, cfg)
        truth = None if truth_mask is None else polygonize_block(truth_mask[core], None, block, width, height)
        evaluator.add(block, finished, merger.pending_bounds(), truth)
        if held is not None:
            held.append(evaluator.held)
    merger.finish()
    return evaluator.finish()


def _truths(*polygons) -> TruthPolygons:
    return TruthPolygons(geometry_array(list(polygons)), 0, 0, 0)


def test_the_sample_citys_labels_against_themselves_score_one(city):
    labels = read_mask(city.labels)
    buildings = len(json.loads(city.buildings.read_text())["features"])
    counts = _stream(labels, None, 200, truth_mask=labels)
    assert counts.f1 == 1.0 and counts.mean_iou == 1.0
    assert counts.true == counts.predicted == counts.matched == buildings
    assert counts.iou_histogram[-1] == buildings
    # The GeoJSON footprints against themselves, as predictions of one block.
    info = inspect_raster(str(city.image))
    truths = read_truth_polygons(str(city.buildings), info)
    blocks = plan_blocks(info.width, info.height, 4096)
    evaluator = ObjectEvaluator(blocks, truths)
    n = len(truths.geometry)
    predicted = Buildings(truths.geometry, np.arange(n), np.ones(n, np.int64), None, np.zeros(n, np.int64))
    evaluator.add(blocks[0], predicted, np.zeros((0, 4)))
    counts = evaluator.finish()
    assert counts.f1 == 1.0 and counts.mean_iou == 1.0 and counts.matched == buildings


def test_labels_shifted_by_k_pixels_give_the_iou_computed_by_hand():
    truth = np.zeros((120, 160), np.uint8)
    for row, col, height, width in ((10, 10, 15, 20), (50, 55, 20, 30), (90, 100, 10, 12), (30, 120, 40, 25)):
        truth[row:row + height, col:col + width] = 1  # 64 px blocks: some of them straddle seams
    for k in (3, 5):
        shifted = np.zeros_like(truth)
        shifted[:, k:] = truth[:, :-k]
        expected = [(w - k) / (w + k) for w in (20, 30, 12, 25)]  # same height, x overlap w - k, union w + k
        matched = [iou for iou in expected if iou >= 0.5]
        counts = _stream(shifted, None, 64, truth_mask=truth)
        assert (counts.true, counts.predicted, counts.matched) == (4, 4, len(matched))
        assert counts.mean_iou == pytest.approx(np.mean(matched), abs=1e-8)
        assert counts.precision == counts.recall == counts.f1 == len(matched) / 4
        alone = mask_object_counts(shifted > 0, truth > 0)  # one patch scored alone (evaluate's way)
        assert (alone.true, alone.predicted, alone.matched) == (4, 4, len(matched))
        assert alone.mean_iou == pytest.approx(np.mean(matched), abs=1e-8)


def test_spacenet_matching_with_overlapping_truths_and_predictions():
    # One prediction over two nested true buildings: it takes the one it fits best, the other is missed.
    outer, inner = shapely.box(0, 0, 10, 10), shapely.box(0, 0, 10, 6)
    predicted = geometry_array([shapely.box(0, 0, 10, 9)])
    matches = spacenet_match(predicted, np.array([0.5]), np.array([0]), geometry_array([inner, outer]), 0.5)
    assert matches == [(0, 1, pytest.approx(0.9))]
    # Two predictions over one true building: the more confident one is taken first, even with the lower IoU.
    truth = geometry_array([shapely.box(0, 0, 10, 10)])
    overlapping = geometry_array([shapely.box(0, 0, 10, 7), shapely.box(0, 4, 10, 10)])  # IoU 0.7 and 0.6
    ids = np.array([0, 1])
    assert spacenet_match(overlapping, np.array([0.6, 0.9]), ids, truth, 0.5) == [(1, 0, pytest.approx(0.6))]
    assert spacenet_match(overlapping, np.array([0.9, 0.6]), ids, truth, 0.5) == [(0, 0, pytest.approx(0.7))]
    # A true building split in two halves, each under the threshold: two false positives and one miss.
    halves = geometry_array([shapely.box(0, 0, 10, 4.9), shapely.box(0, 5.1, 10, 10)])
    assert spacenet_match(halves, np.array([0.5, 0.5]), np.array([0, 1]), truth, 0.5) == []


def test_streamed_metrics_with_overlapping_vector_truths():
    mask = np.zeros((64, 64), np.uint8)
    mask[10:19, 30:40] = 1  # rows 10..18: 9 x 10 pixels, across the 32 px seams
    truths = _truths(shapely.box(30, 10, 40, 20), shapely.box(30, 10, 40, 16))  # nested labels
    counts = _stream(mask, None, 32, truths=truths)
    assert (counts.true, counts.predicted, counts.matched) == (2, 1, 1)
    assert counts.mean_iou == pytest.approx(0.9) and counts.recall == 0.5 and counts.precision == 1.0


def test_streaming_at_any_block_size_equals_scoring_the_whole_mosaic(city):
    labels = read_mask(city.labels)
    mask, probability = degrade(labels)
    frame = GroundFrame.of(inspect_raster(str(city.labels)))
    truths = read_truth_polygons(str(city.buildings), inspect_raster(str(city.image)))
    cfg = dataclasses.replace(PolygonConfig(), regularize=True)
    for kwargs in (dict(truth_mask=labels), dict(truths=truths)):
        whole = _stream(mask, probability, 2048, cfg=cfg, frame=frame, **kwargs)
        assert whole.matched > 0.9 * whole.true and whole.mean_iou > 0.9
        assert _stream(mask, probability, 160, cfg=cfg, frame=frame, **kwargs) == whole


def test_held_buildings_stay_near_the_blocks_being_added(city):
    labels = read_mask(city.labels)
    mask, probability = degrade(labels)
    held: list[int] = []
    counts = _stream(mask, probability, 160, truth_mask=labels, held=held)
    assert max(held) < 0.25 * (counts.true + counts.predicted), (max(held), counts.true + counts.predicted)


def test_counts_add_up_and_summarize():
    a = ObjectCounts.from_matches(3, 2, [0.5, 0.97])
    b = ObjectCounts.from_matches(1, 2, [1.0])
    total = a + b
    assert (total.true, total.predicted, total.matched) == (4, 4, 3)
    assert total.mean_iou == pytest.approx((0.5 + 0.97 + 1.0) / 3, abs=1e-9)
    assert total.iou_histogram[IOU_BINS // 2] == 1 and total.iou_histogram[-1] == 2 and sum(total.iou_histogram) == 3
    summary = total.summary()
    assert summary["f1"] == pytest.approx(2 * 3 / 8) and summary["iou_histogram"]["edges"][10] == 0.5
    assert ObjectCounts().summary()["f1"] == 0.0 and ObjectCounts().mean_iou == 0.0
    assert ObjectCounts.from_array(a.to_array() + b.to_array()) == total


def _image(tmp_path, size=64) -> RasterInfo:
    return inspect_raster(str(write_geotiff(tmp_path / "image.tif", np.zeros((3, size, size), np.uint8))))


def _pixel_box(col0, row0, col1, row1):
    """A box given in pixels, in the test image's CRS (tests/conftest.py: TEST_TRANSFORM)."""
    return map_affine(geometry_array([shapely.box(col0, row0, col1, row1)]), TEST_TRANSFORM)[0]


@pytest.mark.parametrize("suffix", [".geojson", ".gpkg", ".parquet", ".fgb"])
def test_truths_are_read_from_vector_files_in_another_crs(tmp_path, suffix):
    info = _image(tmp_path)
    frame = geopandas.GeoDataFrame({"name": ["a", "b"]}, crs=UTM_33N,
                                   geometry=[_pixel_box(5, 5, 20, 12), _pixel_box(30, 40, 70, 50)])
    path = tmp_path / f"labels{suffix}"
    lonlat = frame.to_crs(4326)
    if suffix == ".parquet":
        lonlat.to_parquet(path)
    else:
        lonlat.to_file(path)
    truths = read_truth_polygons(str(path), info)
    assert (truths.repaired, truths.skipped, truths.outside) == (0, 0, 0)
    expected = [shapely.box(5, 5, 20, 12), shapely.box(30, 40, 64, 50)]  # the second is clipped to the image
    for got, want in zip(sorted(truths.geometry, key=lambda g: g.bounds), expected, strict=True):
        assert got.symmetric_difference(want).area < 1e-3


def test_invalid_null_and_empty_label_geometries_are_repaired_or_skipped_and_counted(tmp_path):
    info = _image(tmp_path)
    inside = shapely.geometry.mapping(_pixel_box(2, 2, 10, 10))
    x0, y0 = TEST_TRANSFORM * (20, 20)
    bow_tie = {"type": "Polygon", "coordinates": [[(x0, y0), (x0 + 5, y0 - 5), (x0 + 5, y0), (x0, y0 - 5), (x0, y0)]]}
    outside = shapely.geometry.mapping(_pixel_box(100, 100, 110, 110))
    features = [inside, None, {"type": "GeometryCollection", "geometries": []},
                {"type": "Point", "coordinates": [x0, y0]}, bow_tie, outside]
    path = tmp_path / "labels.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "crs": {"type": "name", "properties": {
        "name": "urn:ogc:def:crs:EPSG::32633"}}, "features": [
        {"type": "Feature", "properties": {}, "geometry": g} for g in features]}))
    truths = read_truth_polygons(str(path), info)
    assert (truths.repaired, truths.skipped, truths.outside) == (1, 3, 1)
    assert len(truths.geometry) == 2 and shapely.is_valid(truths.geometry).all()
    assert sorted(shapely.area(truths.geometry).tolist()) == pytest.approx([50.0, 64.0])  # 2 triangles of 25 px
    counts = _stream(np.zeros((64, 64), np.uint8), None, 64, truths=truths)
    assert (counts.labels_repaired, counts.labels_skipped, counts.true) == (1, 3, 2)


def test_bad_label_files_fail_in_one_line(tmp_path):
    info = _image(tmp_path)
    far = geopandas.GeoDataFrame(geometry=[_pixel_box(1000, 1000, 1010, 1010)], crs=UTM_33N)
    far.to_file(tmp_path / "far.gpkg")
    (tmp_path / "broken.gpkg").write_bytes(b"not a geopackage")
    cases = {str(tmp_path / "missing.geojson"): "does not exist", str(tmp_path / "labels.shp"): "unknown label file",
             str(tmp_path / "far.gpkg"): "none of its 1 building polygons overlaps",
             str(tmp_path / "broken.gpkg"): "not a readable vector file"}
    for path, words in cases.items():
        with pytest.raises(InputError) as error:
            read_truth_polygons(path, info)
        assert words in str(error.value) and "\n" not in str(error.value)
    plain = dataclasses.replace(info, crs=None, transform=tuple(Affine.identity())[:6])
    with pytest.raises(InputError, match="has no CRS"):
        read_truth_polygons(str(tmp_path / "far.gpkg"), plain)
