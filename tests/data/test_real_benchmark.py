"""benchmarks/real_quality.py's pieces that need no training: finding the mosaics, the valid masks as GDAL
masks, object scoring of a mask file, and a clean exit without the data."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import rasterio
from rasterio.windows import Window

from segcore.config import InputConfig, load_config
from segcore.raster.io import read_rgb
from tests.conftest import REPO, write_geotiff

sys.path.insert(0, str(REPO / "benchmarks"))
import real_quality

MERCATOR = "EPSG:3857"


def _mosaic(folder, name: str, valid: bool) -> None:
    rgb = np.full((3, 40, 60), 120, np.uint8)
    mask = np.zeros((40, 60), np.uint8)
    mask[5:15, 5:20] = 1
    write_geotiff(folder / f"{name}_rgb.tif", rgb, crs=MERCATOR)
    write_geotiff(folder / f"{name}_mask.tif", mask, crs=MERCATOR)
    if valid:
        ok = np.ones((40, 60), np.uint8)
        ok[:, 50:] = 0
        write_geotiff(folder / f"{name}_valid.tif", ok, crs=MERCATOR)


def test_sites_are_found_with_their_masks_and_valid_masks(tmp_path):
    _mosaic(tmp_path, "site1_z19_c00", valid=False)
    _mosaic(tmp_path, "site1_z19_c01", valid=True)
    _mosaic(tmp_path, "site2_z19_c00", valid=False)
    (tmp_path / "site3_z19_c00_rgb.tif").write_bytes(b"")  # no mask: not a mosaic of the benchmark
    sites = real_quality.find_sites(tmp_path)
    assert sorted(sites) == ["site1", "site2"] and len(sites["site1"]) == 2
    assert sites["site1"][1][2] == tmp_path / "site1_z19_c01_valid.tif" and sites["site1"][0][2] is None


def test_a_valid_mask_becomes_the_images_gdal_mask(tmp_path):
    _mosaic(tmp_path, "site1_z19_c00", valid=True)
    rgb = tmp_path / "site1_z19_c00_rgb.tif"
    copy = real_quality.masked_copy(rgb, tmp_path / "site1_z19_c00_valid.tif", tmp_path / "copy.tif")
    with rasterio.open(copy) as dataset:
        pixels, valid = read_rgb(dataset, Window(0, 0, 60, 40), InputConfig())
    assert valid[:, :50].all() and not valid[:, 50:].any()
    assert (pixels[:, :, :50] == 120).all()
    assert real_quality.masked_copy(rgb, None, tmp_path / "unused.tif") == rgb


def test_object_counts_of_a_mask_file_against_the_labels(tmp_path):
    truth = np.zeros((64, 64), np.uint8)
    truth[4:20, 4:20] = 1  # found exactly
    truth[30:50, 30:40] = 1  # found shifted by 3 px: IoU 7 / 13 = 0.54 -> matched
    truth[4:12, 40:60] = 1  # missed
    predicted = np.zeros((64, 64), np.uint8)
    predicted[4:20, 4:20] = 1
    predicted[30:50, 33:43] = 1
    predicted[54:62, 4:14] = 1  # a false positive
    predicted[:, 62:] = 255  # no-data: labels there do not count
    truth[0:8, 62:64] = 1
    labels = write_geotiff(tmp_path / "labels.tif", truth, crs=MERCATOR)
    mask = write_geotiff(tmp_path / "mask.tif", predicted, crs=MERCATOR)
    cfg = load_config(None, ["polygons.min_area_m2=0", "polygons.simplify_px=0"])
    counts = real_quality.object_counts(mask, labels, cfg)
    assert (counts.true, counts.predicted, counts.matched) == (3, 3, 2)
    assert abs(counts.f1 - 2 / 3) < 1e-9


def test_without_the_data_it_says_so_and_exits_cleanly(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "real_quality.py"), "--data",
                           str(tmp_path / "absent")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "not found" in done.stdout


def test_the_threshold_sweep_counts_valid_pixels_at_each_threshold(tmp_path):
    probability = np.array([[0, 100, 140, 200], [255, 90, 130, 10]], np.uint8)
    mask = np.array([[0, 0, 1, 1], [1, 0, 1, 255]], np.uint8)  # the last pixel is no-data
    truth = np.array([[0, 1, 1, 1], [1, 0, 0, 1]], np.uint8)
    write_geotiff(tmp_path / "prob.tif", probability, crs=MERCATOR)
    write_geotiff(tmp_path / "mask.tif", mask, crs=MERCATOR)
    labels = write_geotiff(tmp_path / "labels.tif", truth, crs=MERCATOR)
    counts = real_quality.threshold_counts(tmp_path, labels)
    assert counts[0.5] == [3, 1, 1]  # >= 128: 140, 200, 255 hit, 130 is a false positive, 100 missed
    assert counts[0.35] == [4, 2, 0]  # >= 89: also 100 and 90 (a false positive)
