"""Faults and bad input of prepare: one line before anything is written, odd shapes and dtypes work, and a
failure (all nodata, refused credentials, a full disk) leaves no dataset."""
from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import rasterio

from segcore.data.patches import decode_image, list_pairs
from segcore.errors import InputError
from segcore.pipelines.prepare import plan_dataset, prepare_dataset
from tests import inputs as fi
from tests import jobs
from tests.faults.common import prep_config
from tests.helpers import leftovers, manifest, one_line_error


@pytest.mark.parametrize("case", ["empty", "oneband", "float32", "png named .tif"])
def test_prepare_bad_image_is_one_line_before_anything_is_written(case, pixels, city, tmp_path):
    rgb, grid = pixels
    image = {"empty": lambda: fi.empty_file(tmp_path / "city.tif"),
             "oneband": lambda: fi.odd_raster(tmp_path / "city.tif", "oneband", rgb, grid),
             "float32": lambda: fi.odd_raster(tmp_path / "city.tif", "float32", rgb, grid),
             "png named .tif": lambda: fi.png_named_tif(tmp_path / "city.tif", rgb)}[case]()
    problem = {"empty": "not a readable raster", "oneband": "has 1 band(s)",
               "float32": "float32 imagery needs a scaling rule: set input.scale_max",
               "png named .tif": "has no CRS, so polygon labels"}[case]
    out = tmp_path / "ds"
    with pytest.raises(InputError) as info:
        plan_dataset([str(image)], [str(city.buildings)], str(out), prep_config())
    one_line_error(info.value, f"{image}: ", problem)
    assert leftovers(out) == []


def test_prepare_float32_with_scale_max_gives_the_uint8_patches(pixels, city, ray_local, tmp_path):
    rgb, grid = pixels
    image = fi.odd_raster(tmp_path / "city.tif", "float32", rgb, grid)
    out = tmp_path / "ds"
    summary = prepare_dataset([str(image)], [str(city.labels)], str(out), prep_config("input.scale_max=1"))
    rows = manifest(out)
    assert len(rows) == sum(summary.patches.values()) == 3 * 2
    padded = np.zeros((3, 384, 384), np.uint8)
    padded[:, :256, :320] = rgb
    for row in rows:
        r, c = int(row["row"]), int(row["col"])
        patch = decode_image((out / row["image"]).read_bytes(), row["image"])
        assert np.array_equal(patch, padded[:, r:r + 128, c:c + 128].transpose(1, 2, 0)), row["image"]


def test_prepare_10x10_and_1x100000_rasters(odd_shapes, ray_local, tmp_path):
    out = tmp_path / "ds"
    summary = prepare_dataset([str(odd_shapes.folder / "images")], [str(odd_shapes.folder / "labels")], str(out),
                              prep_config())
    rows = manifest(out)
    counts = {stem: sum(Path(r["source_image"]).stem == stem for r in rows) for stem in ("speck", "ribbon")}
    assert counts == {"speck": 1, "ribbon": 782}  # one padded patch; ceil(100000 / 128) patches
    assert summary.skipped_nodata == 0 and all(summary.patches.values())
    with rasterio.open(odd_shapes.ribbon) as src:
        column = src.read()
    for row in rows[::97]:
        patch = decode_image((out / row["image"]).read_bytes(), row["image"])
        assert patch.shape == (128, 128, 3)
        if Path(row["source_image"]).stem == "ribbon":
            r = int(row["row"])
            strip = column[:, r:r + 128, 0].T
            assert np.array_equal(patch[:len(strip), 0], strip) and not patch[:, 1:].any()
    assert sum(len(list_pairs(str(out), split)) for split in ("train", "val", "test")) == len(rows)


def test_prepare_all_nodata_is_an_error_and_leaves_nothing(pixels, city, ray_local, tmp_path):
    rgb, grid = pixels
    image = fi.odd_raster(tmp_path / "city.tif", "nodata", rgb, grid)
    out = tmp_path / "ds"
    with pytest.raises(InputError) as info:
        prepare_dataset([str(image)], [str(city.labels)], str(out), prep_config())
    one_line_error(info.value, f"{image}: every patch is nodata")
    assert leftovers(out) == []


def test_prepare_output_in_a_missing_bucket_is_one_line_before_any_task(city, s3_server, tmp_path):
    with pytest.raises(InputError) as info:
        plan_dataset([str(city.image)], [str(city.labels)], "s3://segcore-no-such-bucket/ds",
                     prep_config(f"s3.endpoint_url={s3_server}"))
    one_line_error(info.value, "s3://segcore-no-such-bucket/ds: bucket 'segcore-no-such-bucket' does not exist")
    with pytest.raises(InputError) as info:
        plan_dataset(["s3://segcore-no-such-bucket/city.tif"], [str(city.labels)], str(tmp_path / "ds"),
                     prep_config(f"s3.endpoint_url={s3_server}"))
    one_line_error(info.value, "s3://segcore-no-such-bucket/city.tif: does not exist")
    assert not (tmp_path / "ds").exists()


def test_refused_s3_credentials_prepare_cli_exits_2_without_echoing_them(refusing_s3, city, tmp_path):
    secret, key_id = f"faults-refused-secret-{uuid.uuid4().hex}", f"AKIAREFUSED{uuid.uuid4().hex[:9].upper()}"
    env = jobs.job_env(tmp_path / "ray", AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY=secret)
    result = jobs.run_job("prepare", "--images", f"s3://{refusing_s3.bucket}/in/", "--labels", city.buildings,
                        "--output", tmp_path / "ds", "--set", f"s3.endpoint_url={refusing_s3.endpoint}",
                        env=env, timeout=180)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [f"error: s3://{refusing_s3.bucket}/in/: access denied (The AWS Access Key "
                                          "Id you provided does not exist in our records.)"]
    assert secret not in result.stdout + result.stderr and key_id not in result.stdout + result.stderr
    assert not (tmp_path / "ds").exists()


def test_full_disk_fails_prepare_in_one_line_and_leaves_nothing(city, ray_local, tmp_path):
    with fi.Tmpfs(tmp_path / "disk", "1m") as disk:
        disk.fill(leave=0)
        out = disk.path / "ds"
        with pytest.raises(InputError) as info:
            prepare_dataset([str(city.image)], [str(city.labels)], str(out), prep_config())
        one_line_error(info.value, "No space left on device")
        assert sorted(p.name for p in disk.path.iterdir()) == [".filler"]

