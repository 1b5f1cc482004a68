"""The segment pipeline on a local Ray: outputs on the input grid, nodata, odd sizes, uint16, labels, S3,
resume, and bad inputs failing alone. A random-weights resnet18/16 RefineNet on 64-pixel tiles keeps it fast."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.features import rasterize

from segcore.config import ConfigError, load_config
from segcore.errors import InputError
from segcore.metrics import ConfusionCounts
from segcore.model import build_model
from segcore.pipelines.segment import input_keys, plan_segment
from segcore.raster.grid import block_tiles, segment_blocks
from segcore.sources import stem
from segcore.storage import filesystem
from tests import helpers
from tests.conftest import REPO, write_geotiff
from tests.helpers import by_key
from tests.inputs import THRESHOLD, corrupt_middle_block

SEGMENT = ("segment.tile_size=64", "segment.overlap=16", "segment.block_size=192", "segment.batch_size=16",
           "segment.preview_size=200")


# Footprints as the mask's own pixel outlines, in GeoJSON: they burn back into exactly the mask.
RAW_POLYGONS = ("segment.write_polygons=true", "polygons.format=geojson", "polygons.simplify_px=0",
                "polygons.min_area_m2=0", "polygons.fill_holes_m2=0")


def config(*overrides: str):
    return load_config(None, [*SEGMENT, *overrides])


def segment(inputs, output, checkpoint, *overrides, labels=()) -> tuple[dict, str]:
    return helpers.segment(inputs, output, checkpoint, config(*overrides), labels=labels)


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint) -> str:
    return tiny_checkpoint


@pytest.fixture(scope="module")
def city(cities):
    return cities(517, 389)


@pytest.fixture(scope="module")
def inputs(city, tmp_path_factory) -> Path:
    """city.tif (nodata 0 over its left part), odd.tif (517 x 389), tiny.tif (50 x 40), plain.tif (no CRS),
    and labels/ with a label file of the same stem for each: rasters, and polygons for odd."""
    folder = tmp_path_factory.mktemp("inputs")
    with rasterio.open(city.image) as src:
        rgb, crs, transform = src.read(), src.crs, src.transform
    with rasterio.open(city.labels) as src:
        labels = src.read(1)
    with_nodata = rgb[:, :256, :320].copy()
    with_nodata[:, :, :120] = 0
    crops = {"city": (slice(0, 256), slice(0, 320)), "tiny": (slice(100, 140), slice(200, 250)),
             "plain": (slice(0, 90), slice(0, 100))}
    write_geotiff(folder / "city.tif", with_nodata, crs=crs, transform=transform, nodata=0)
    write_geotiff(folder / "odd.tif", rgb, crs=crs, transform=transform)
    write_geotiff(folder / "tiny.tif", rgb[(slice(None), *crops["tiny"])], crs=crs,
                  transform=transform * Affine.translation(200, 100))
    write_geotiff(folder / "plain.tif", rgb[(slice(None), *crops["plain"])], crs=None, transform=Affine.identity())
    write_geotiff(folder / "labels" / "city.tif", labels[crops["city"]], crs=crs, transform=transform)
    write_geotiff(folder / "labels" / "tiny.tif", labels[crops["tiny"]], crs=crs,
                  transform=transform * Affine.translation(200, 100))
    write_geotiff(folder / "labels" / "plain.tif", labels[crops["plain"]], crs=None, transform=Affine.identity())
    shutil.copy(city.buildings, folder / "labels" / "odd.geojson")
    return folder


def images(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.tif"))


@pytest.fixture(scope="module")
def first_run(inputs, checkpoint, ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    summary, err = segment(images(inputs), out, checkpoint, "segment.write_probability=true",
                           *RAW_POLYGONS, labels=[inputs / "labels"])
    return out, summary, err


def test_one_cog_mask_per_input_on_the_input_grid(first_run, inputs):
    out, summary, _ = first_run
    assert summary["ok"] == 4 and summary["failed"] == 0
    assert json.loads((out / "summary.json").read_text()) == summary
    for name in ("city", "odd", "tiny", "plain"):
        with rasterio.open(inputs / f"{name}.tif") as src, rasterio.open(out / name / "mask.tif") as mask:
            assert (mask.width, mask.height, mask.crs, mask.transform) == (src.width, src.height, src.crs,
                                                                           src.transform)
            assert mask.count == 1 and mask.dtypes[0] == "uint8" and mask.nodata == 255
            assert mask.tags(ns="IMAGE_STRUCTURE") == {"LAYOUT": "COG", "COMPRESSION": "DEFLATE",
                                                       "INTERLEAVE": "BAND"}
            assert set(np.unique(mask.read(1))) <= {0, 1, 255}
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert metrics == by_key(summary)[name]["metrics"]
        assert metrics["pixels"] == src.width * src.height
        assert metrics["building_count"] > 0 and 0 < metrics["building_fraction"] < 1
        assert metrics["tiles_per_s"] > 0 and metrics["megapixels_per_s"] > 0
    assert json.loads((out / "odd" / "metrics.json").read_text())["blocks"]["total"] == 3 * 3
    assert json.loads((out / "tiny" / "metrics.json").read_text())["blocks"]["total"] == 1


def test_nodata_is_255_and_its_tiles_are_not_computed(first_run, inputs):
    out, _, _ = first_run
    with rasterio.open(inputs / "city.tif") as src:
        nodata = np.all(src.read() == 0, axis=0)
    with rasterio.open(out / "city" / "mask.tif") as mask:
        assert np.array_equal(mask.read(1) == 255, nodata)
    valid = ~nodata
    skipped = total = 0
    for block in segment_blocks(320, 256, 192, 64, 16):
        read = block.read_window
        rows = slice(int(read.row_off), int(read.row_off + read.height))
        cols = slice(int(read.col_off), int(read.col_off + read.width))
        origins = block_tiles(block, 320, 256, 64, 16)
        total += len(origins)
        skipped += sum(not valid[rows, cols][r:r + 64, c:c + 64].any() for r, c in origins)
    metrics = json.loads((out / "city" / "metrics.json").read_text())
    assert skipped > 0 and metrics["tiles"] == {"computed": total - skipped, "skipped_nodata": skipped}
    assert metrics["valid_pixels"] == valid.sum()


def test_no_georeference_warns_and_writes_a_pixel_grid_mask(first_run):
    out, _, err = first_run
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "plain.tif: no georeference" in warnings[0]
    with rasterio.open(out / "plain" / "mask.tif") as mask:
        assert mask.crs is None and mask.transform == Affine.identity()
    assert json.loads((out / "plain" / "metrics.json").read_text())["georeferenced"] is False


def test_preview_is_a_downsampled_png(first_run):
    out, _, _ = first_run
    import cv2

    assert cv2.imread(str(out / "odd" / "preview.png")).shape == (150, 200, 3)  # longest side 200
    assert cv2.imread(str(out / "tiny" / "preview.png")).shape == (40, 50, 3)  # never upscaled


def test_label_metrics_from_rasters_and_polygons(first_run, city):
    out, summary, _ = first_run
    metrics = {key: entry["metrics"] for key, entry in by_key(summary).items()}
    for key in ("city", "tiny", "plain"):  # raster labels; city's nodata pixels are left out
        m = metrics[key]
        assert m["labels"].endswith(f"labels/{key}.tif")
        assert m["tp"] + m["fp"] + m["fn"] + m["tn"] == m["valid_pixels"]
    assert metrics["city"]["valid_pixels"] < metrics["city"]["pixels"]
    odd = metrics["odd"]  # polygons, burned per block: the same as the raster the sample city burned them into
    with rasterio.open(out / "odd" / "mask.tif") as src, rasterio.open(city.labels) as labels:
        mask = src.read(1)
        expected = ConfusionCounts.from_arrays(mask == 1, labels.read(1) > 0, mask != 255)
    assert odd["labels"].endswith("odd.geojson") and 0 < odd["iou"] < 1
    assert abs(odd["iou"] - expected.iou) < 0.01 and abs(odd["f1"] - expected.f1) < 0.01


def test_probability_and_polygons_agree_with_the_mask(first_run):
    out, summary, _ = first_run
    with rasterio.open(out / "odd" / "mask.tif") as src:
        mask, transform = src.read(1), src.transform
    with rasterio.open(out / "odd" / "prob.tif") as src:
        probability = src.read(1)
        assert src.dtypes[0] == "uint8" and src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    edge = round(THRESHOLD * 255)  # rounding p * 255 is monotone, so the two classes meet at this byte
    assert probability[mask == 1].min() >= edge >= probability[mask == 0].max()
    metrics = by_key(summary)["odd"]["metrics"]
    polygons = json.loads((out / "odd" / "buildings.geojson").read_text())
    assert polygons["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"
    assert len(polygons["features"]) == metrics["polygons"] == metrics["building_count"]
    burned = rasterize([(f["geometry"], 1) for f in polygons["features"]], out_shape=mask.shape, transform=transform)
    assert np.array_equal(burned == 1, mask == 1)
    assert "crs" not in json.loads((out / "plain" / "buildings.geojson").read_text())
    with rasterio.open(out / "city" / "prob.tif") as src:  # nodata is masked out of the probability too
        assert np.array_equal(src.read_masks(1) == 0, mask_of(out, "city") == 255)


def mask_of(out: Path, key: str) -> np.ndarray:
    with rasterio.open(out / key / "mask.tif") as src:
        return src.read(1)


def test_s3_four_band_uint16_input_gives_the_local_uint8_bytes(first_run, inputs, checkpoint, s3_bucket, tmp_path):
    import boto3

    out, _, _ = first_run
    endpoint, bucket = s3_bucket
    with rasterio.open(inputs / "city.tif") as src:
        rgb, crs, transform = src.read(), src.crs, src.transform
    noise = np.random.default_rng(0).integers(1, 65535, rgb.shape[1:], dtype=np.uint16)
    # v * 257 * 255 / 65535 == v: bands 2-4 scaled to 8 bits are exactly the 8-bit image again,
    # and nodata (0 in all of the selected bands) is where it was, whatever band 1 holds.
    write_geotiff(tmp_path / "city.tif", np.concatenate([noise[None], rgb.astype(np.uint16) * 257]),
                  crs=crs, transform=transform, nodata=0)
    boto3.client("s3", endpoint_url=endpoint).upload_file(str(tmp_path / "city.tif"), bucket, "in/city.tif")
    overrides = (f"s3.endpoint_url={endpoint}", "input.bands=[2, 3, 4]", "input.scale_max=65535")
    summary, _ = segment([f"s3://{bucket}/in/"], f"s3://{bucket}/out", checkpoint, *overrides)
    assert summary["ok"] == 1
    fs = filesystem(f"s3://{bucket}", config(*overrides).s3)
    assert fs.cat_file(f"s3://{bucket}/out/city/mask.tif") == (out / "city" / "mask.tif").read_bytes()
    assert fs.exists(f"s3://{bucket}/out/city/preview.png") and fs.exists(f"s3://{bucket}/out/summary.json")


@pytest.fixture(scope="module")
def rerun(first_run, inputs, checkpoint, s3_server, tmp_path_factory):
    """The first run's output as a stopped run leaves it, rerun with the same inputs plus bad ones.

    Stopped mid-way: odd's outputs and 3 of its 9 block files are gone, and city's blocks are all there
    but its mask was never assembled. The bad inputs (one bucket that does not exist among them) must
    fail alone, each with one line. One run checks both, as each run pays for starting an actor pool.
    """
    out = tmp_path_factory.mktemp("rerun") / "out"
    shutil.copytree(first_run[0], out)
    shutil.rmtree(out / "odd")
    (work,) = (out / ".work").glob("odd-*")
    for block in sorted(work.iterdir())[3:6]:
        block.unlink()
    (out / "city" / "mask.tif").unlink()

    bad = tmp_path_factory.mktemp("bad")
    with rasterio.open(inputs / "odd.tif") as src:
        rgb, crs, transform = src.read(), src.crs, src.transform
    (bad / "junk.tif").write_bytes(b"II*\0 not really a tiff")
    write_geotiff(bad / "twoband.tif", rgb[:2], crs=crs, transform=transform)
    write_geotiff(bad / "corrupt.tif", rgb[:, :384, :512], crs=crs, transform=transform, tiled=True,
                  blockxsize=128, blockysize=128, compress="deflate")
    corrupt_middle_block(bad / "corrupt.tif")
    (out / "corrupt").mkdir()
    (out / "corrupt" / "mask.tif").write_bytes(b"a complete-looking mask from an earlier run")
    specs = [*images(inputs), bad, bad / "nope.tif", "s3://segcore-no-such-bucket/town.tif"]
    summary, err = segment(specs, out, checkpoint, "segment.write_probability=true", *RAW_POLYGONS,
                           f"s3.endpoint_url={s3_server}")
    return out, summary, err


def test_two_blocks_at_once_per_inference_actor_give_the_same_mask(first_run, inputs, checkpoint, tmp_path):
    """segment.blocks_per_actor=2 runs two blocks' calls in the actor at once (threads sharing its model)."""
    out, _, _ = first_run
    summary, err = segment([inputs / "odd.tif"], tmp_path / "out", checkpoint, "segment.blocks_per_actor=2")
    assert summary["ok"] == 1 and summary["blocks_computed"] > 2, err
    assert (tmp_path / "out" / "odd" / "mask.tif").read_bytes() == (out / "odd" / "mask.tif").read_bytes()


def test_resume_recomputes_only_missing_blocks_and_gives_identical_bytes(first_run, rerun):
    out, summary, _ = rerun
    entries = by_key(summary)
    assert entries["odd"]["metrics"]["blocks"] == {"total": 9, "computed": 3, "reused": 6}
    for name in ("city", "tiny", "plain"):
        blocks = entries[name]["metrics"]["blocks"]
        assert blocks["computed"] == 0 and blocks["reused"] == blocks["total"]
    for name in ("odd", "city", "tiny", "plain"):
        for output in ("mask.tif", "prob.tif", "buildings.geojson"):
            assert (out / name / output).read_bytes() == (first_run[0] / name / output).read_bytes(), (name, output)


def test_bad_inputs_fail_alone_with_one_line_each(rerun):
    out, summary, err = rerun
    entries = {Path(e["input"]).name: e for e in summary["inputs"]}
    assert summary["ok"] == 4 and all(entries[f"{name}.tif"]["status"] == "ok" for name in ("city", "odd", "tiny"))
    expected = {"junk.tif": "not a readable raster", "twoband.tif": "has 2 band(s)", "corrupt.tif": "read failed",
                "nope.tif": "does not exist", "town.tif": "does not exist"}
    failed = {name: e for name, e in entries.items() if e["status"] == "failed"}
    assert summary["failed"] == len(failed) == len(expected)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == len(expected)
    for name, problem in expected.items():
        assert problem in failed[name]["error"], failed[name]
        assert sum(name in line and problem in line for line in errors) == 1, errors
    assert "segcore-no-such-bucket" in failed["town.tif"]["input"]
    assert not (out / "corrupt" / "mask.tif").exists()  # a failed input never leaves a mask behind


def test_bad_checkpoint_or_output_stops_before_anything_runs(checkpoint, inputs, s3_server, tmp_path):
    fork = tmp_path / "fork.pt"
    torch.save(build_model("refinenet", "resnet18", 16, False).state_dict(), fork)  # config says resnet50
    with pytest.raises(InputError, match=f"{fork}: "):
        plan_segment([str(inputs / "tiny.tif")], str(fork), str(tmp_path / "out"), config())
    with pytest.raises(ConfigError, match=r"polygons\.format"):
        plan_segment([str(inputs / "tiny.tif")], checkpoint, str(tmp_path / "out"), config("polygons.format=shp"))
    with pytest.raises(InputError, match="segcore-no-such-bucket"):
        plan_segment([str(inputs / "tiny.tif")], checkpoint, "s3://segcore-no-such-bucket/out",
                     config(f"s3.endpoint_url={s3_server}"))
    assert not (tmp_path / "out").exists()


def test_a_model_seeing_another_ground_resolution_than_it_was_trained_at_is_warned_about(inputs, tmp_path, capsys):
    from tests.inputs import tiny_checkpoint

    odd = inputs / "odd.tif"  # 0.5 m pixels; plain.tif has no CRS, so no resolution
    for trained, target, said in ((0.25, 0.5, f"warning: {odd}: the model sees 0.5 m per pixel, but was trained on "
                                   "0.25 m imagery: buildings look a different size than in training, so expect "
                                   "lower quality"),
                                  (0.25, 0.25, f"note: {odd}: 0.5 m per pixel, read resampled to 0.25 m "
                                   "(input.target_gsd); its outputs stay on its own grid"),
                                  (0.49, None, None)):
        checkpoint = tiny_checkpoint(tmp_path / f"at-{trained}.pt", gsd_m=trained)
        plan_segment([str(odd), str(inputs / "plain.tif")], checkpoint, str(tmp_path / "out"),
                     config(*([f"input.target_gsd={target}"] if target else [])))
        lines = [line for line in capsys.readouterr().err.splitlines() if "per pixel" in line]
        assert lines == ([said] if said else []), lines


def test_cli_bad_checkpoint_exits_2_with_one_line(inputs, tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint at all")
    result = subprocess.run([sys.executable, str(REPO / "jobs" / "segment.py"), "--config",
                             str(REPO / "configs" / "segment.yaml"), "--input", str(inputs / "tiny.tif"),
                             "--checkpoint", str(bad), "--output", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: "), result.stderr


def test_input_keys_are_safe_and_unique():
    paths = ["/a/city.tif", "/b/city.tif", "/c/../..tif", "s3://x/we ird/n a/me.tif", "/d/.hidden.tif",
             "https://host/scenes/tile 7.tif?X-Amz-Signature=secret&sig=1"]
    keys = input_keys([stem(path) for path in paths] + ["LC08/2023-05-01 item"])
    assert keys[0] != keys[1] and keys[0].startswith("city-") and keys[1].startswith("city-")
    assert keys[2:] == ["input", "me", "hidden", "tile_7", "LC08_2023-05-01_item"]  # no query string in a name
    assert all("/" not in key and not key.startswith(".") for key in keys)


def test_tta_is_part_of_the_block_settings_so_nothing_is_reused_across_it(inputs, checkpoint, tmp_path):
    work = {tta: plan_segment([str(inputs / "odd.tif")], checkpoint, str(tmp_path / "out"),
                              config(f"segment.tta={tta}")).jobs[0].work for tta in ("none", "flip", "d4")}
    assert len(set(work.values())) == 3, work
