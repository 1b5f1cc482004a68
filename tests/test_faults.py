"""The fault matrix: bad input and faults in prepare, train and segment, and what each must leave behind.

Every bad input fails in one line naming the file or key and the problem; a job that cannot go on exits
non-zero; other inputs of the same run are still processed; and nothing partial is left that looks whole
(no mask.tif, manifest.csv or best.pt for the failed piece). Faults (a killed actor, a SIGKILLed job, an
S3 outage, a full disk) either recover or fail the same clean way, and a rerun gives identical bytes.
FAULTS.md lists every row with its test. Run alone with `pytest -m faults`.

One tiny random-weights checkpoint (resnet18, decoder 16) and 64-pixel tiles keep runs short; in-process
runs share the session's local Ray; the job subprocesses start a Ray of their own (RAY_ADDRESS=local).
"""
from __future__ import annotations

import ast
import contextlib
import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
import torch

from segcore.checkpoint import Checkpoint, TrainingState
from segcore.config import ConfigError, InputConfig, ModelConfig, load_config
from segcore.data.patches import decode_image, list_pairs
from segcore.errors import InputError
from segcore.metrics import ConfusionCounts
from segcore.model import build_model
from segcore.pipelines.prepare import plan_dataset, prepare_dataset
from segcore.pipelines.segment import plan_segment, run_segment
from segcore.synth import generate_city
from tests import fault_inputs as fi
from tests.conftest import REPO, write_geotiff
from tests.test_train import small_config, write_patch_set

pytestmark = pytest.mark.faults

SEG = ("segment.tile_size=64", "segment.overlap=16", "segment.block_size=64", "segment.batch_size=16",
       "segment.preview_size=64")
PREP = ("prepare.tile_size=128", "prepare.split_block=512")
GOOD_BLOCKS = 20  # the 320 x 256 city in blocks of 64


def seg_config(*overrides: str):
    return load_config(None, [*SEG, *overrides])


def segment(inputs, out, checkpoint, *overrides, labels=()) -> tuple[dict, str]:
    """Plan and run in this process; the summary and everything printed to stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        plan = plan_segment([str(p) for p in inputs], str(checkpoint), str(out), seg_config(*overrides),
                            [str(p) for p in labels])
        summary = run_segment(plan)
    return summary, err.getvalue()


def by_name(summary: dict) -> dict:
    return {Path(entry["input"]).name: entry for entry in summary["inputs"]}


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def read_band(path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def block_files(out: Path, key: str) -> list[Path]:
    """Finished block files of one input (temporary names end otherwise and are never counted)."""
    return sorted((out / ".work").glob(f"{key}-*/block_*.npz"))


def wait_for(condition, timeout: float = 300, every: float = 0.02) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(every)
    return False


def one_line_error(exc: BaseException, *words: str) -> str:
    message = str(exc)
    assert "\n" not in message, message
    for word in words:
        assert word in message, (word, message)
    return message


# ----------------------------------------------------------------------------------------------- data

@pytest.fixture(scope="module")
def city(tmp_path_factory):
    return generate_city(tmp_path_factory.mktemp("city"), 320, 256, seed=0)


@pytest.fixture(scope="module")
def pixels(city):
    return fi.read_city(city.image)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return fi.tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


MARKER = "faults-pwned-marker"


@pytest.fixture(scope="module")
def good(pixels, tmp_path_factory) -> Path:
    """The city as a plain GeoTIFF: the good input of every run."""
    rgb, grid = pixels
    return write_geotiff(tmp_path_factory.mktemp("good") / "good.tif", rgb, **grid)


@pytest.fixture(scope="module")
def mixed_run(good, pixels, checkpoint, ray_local, tmp_path_factory):
    """One segment run of good, bad and oddly named inputs, so one actor pool serves them all.

    in/: good.tif (the city, 20 blocks), photo.tif (a PNG under a .tif name), void.tif (all nodata), and
    the bad ones: empty, truncated, 1 band, float32 and uint16 without input.scale_max.
    odd/: names that try to leave OUT (`..%2f..%2fescape`, `...` whose stem is `..`, shell syntax) and a
    symlink to a raster outside the input folders.
    """
    rgb, grid = pixels
    root = tmp_path_factory.mktemp("mixed")
    src, odd = root / "in", root / "odd"
    src.mkdir()
    shutil.copy(good, src / "good.tif")
    fi.empty_file(src / "empty.tif")
    fi.truncated_copy(good, src / "cut.tif")
    for name, kind in (("oneband", "oneband"), ("float", "float32"), ("deep", "uint16")):
        fi.odd_raster(src / f"{name}.tif", kind, rgb, grid)
    fi.png_named_tif(src / "photo.tif", rgb[:, :48, :60])
    crop = rgb[:, :60, :60]
    fi.odd_raster(src / "void.tif", "nodata", crop, grid)
    odd_names = ["..%2f..%2fescape.tif", "...tif", f"$(touch {MARKER}); x y.tif"]
    for name in odd_names:
        write_geotiff(odd / name, crop, **grid)
    write_geotiff(root / "outside" / "real.tif", crop, **grid)
    (odd / "link.tif").symlink_to(Path("..") / "outside" / "real.tif")
    before = tree(root)
    out = root / "out"
    summary, err = segment([src, odd], out, checkpoint)
    return SimpleNamespace(root=root, src=src, odd=odd, out=out, summary=summary, err=err,
                           before=before, after=tree(root), odd_names=odd_names + ["link.tif"])


@pytest.fixture(scope="module")
def reference_mask(mixed_run) -> bytes:
    """mask.tif of the city from an uninterrupted run with the SEG settings: every fault run must match it."""
    assert by_name(mixed_run.summary)["good.tif"]["status"] == "ok"
    return (mixed_run.out / "good" / "mask.tif").read_bytes()


# ------------------------------------------------------------------------------ 1. bad inputs: segment

SEGMENT_BAD = {
    "empty.tif": "not a readable raster",
    "cut.tif": "truncated or corrupt raster (reading its last pixels failed)",
    "oneband.tif": "has 1 band(s)",
    "float.tif": "float32 imagery needs a scaling rule: set input.scale_max",
    "deep.tif": "uint16 imagery needs a scaling rule: set input.scale_max",
}


def test_segment_bad_inputs_fail_alone_in_one_line_each_and_leave_no_mask(mixed_run):
    entries, errors = by_name(mixed_run.summary), error_lines(mixed_run.err)
    assert mixed_run.summary["failed"] == len(SEGMENT_BAD) == len(errors)
    for name, problem in SEGMENT_BAD.items():
        entry = entries[name]
        assert entry["status"] == "failed" and problem in entry["error"], entry
        assert str(mixed_run.src / name) in entry["error"]
        assert sum(str(mixed_run.src / name) in line and problem in line for line in errors) == 1, errors
        assert not (mixed_run.out / Path(name).stem).exists()  # no mask.tif, no folder at all
    ok = {name for name, entry in entries.items() if entry["status"] == "ok"}
    assert ok == {"good.tif", "photo.tif", "void.tif", *mixed_run.odd_names}
    for name in ok:  # the good inputs of the same run were all processed
        assert (mixed_run.out / entries[name]["key"] / "mask.tif").exists()


def test_png_named_tif_is_read_by_content_with_a_georeference_warning(mixed_run):
    warnings = [line for line in mixed_run.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "photo.tif: no georeference" in warnings[0]
    with rasterio.open(mixed_run.out / "photo" / "mask.tif") as mask:
        assert (mask.width, mask.height, mask.crs) == (60, 48, None)
        assert set(np.unique(mask.read(1))) <= {0, 1}


def test_all_nodata_input_gives_an_all_nodata_mask_without_computing_a_tile(mixed_run):
    assert set(np.unique(read_band(mixed_run.out / "void" / "mask.tif"))) == {255}
    metrics = json.loads((mixed_run.out / "void" / "metrics.json").read_text())
    assert metrics["tiles"]["computed"] == 0 and metrics["tiles"]["skipped_nodata"] > 0
    assert metrics["valid_pixels"] == 0 and metrics["building_count"] == 0


@pytest.fixture(scope="module")
def scaled_run(mixed_run, city, checkpoint, tmp_path_factory):
    """float.tif (the city / 255 as float32) with input.scale_max=1, and polygon labels in lon/lat."""
    root = tmp_path_factory.mktemp("scaled")
    lonlat = fi.polygons_in_lonlat(city.buildings, root / "buildings_lonlat.geojson")
    summary, err = segment([mixed_run.src / "float.tif"], root / "out", checkpoint, "input.scale_max=1",
                           labels=[lonlat])
    return root / "out", summary, err


def test_float32_with_scale_max_gives_the_uint8_mask_and_lonlat_polygons_are_reprojected(
        scaled_run, reference_mask, city):
    out, summary, err = scaled_run
    assert summary["ok"] == 1 and not error_lines(err)
    assert (out / "float" / "mask.tif").read_bytes() == reference_mask
    metrics = json.loads((out / "float" / "metrics.json").read_text())
    mask = read_band(out / "float" / "mask.tif")
    truth = read_band(city.labels) > 0
    expected = ConfusionCounts.from_arrays(mask == 1, truth, mask != 255)
    assert metrics["labels"].endswith("buildings_lonlat.geojson") and 0 < metrics["iou"] < 1
    assert abs(metrics["iou"] - expected.iou) < 0.01, (metrics["iou"], expected.iou)


@pytest.fixture(scope="module")
def odd_shapes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")
    speck = fi.strip_raster(folder / "images" / "speck.tif", 10, 10, seed=1)
    ribbon = fi.strip_raster(folder / "images" / "ribbon.tif", 1, 100_000, seed=2)
    for name, (w, h) in (("speck", (10, 10)), ("ribbon", (1, 100_000))):
        label = np.zeros((h, w), np.uint8)
        label[::7] = 1
        write_geotiff(folder / "labels" / f"{name}.tif", label)
    return SimpleNamespace(folder=folder, speck=speck, ribbon=ribbon)


def test_10x10_and_1x100000_rasters_segment(odd_shapes, checkpoint, ray_local, tmp_path):
    # 32-pixel tiles without overlap: a 100000-pixel ribbon is then 3125 small tiles, the least compute.
    summary, err = segment([odd_shapes.speck, odd_shapes.ribbon], tmp_path / "out", checkpoint,
                           "segment.tile_size=32", "segment.overlap=0", "segment.block_size=4096",
                           "segment.batch_size=64")
    assert summary["ok"] == 2 and not error_lines(err), err
    for name, (width, height), tiles in (("speck", (10, 10), 1), ("ribbon", (1, 100_000), 3125)):
        with rasterio.open(tmp_path / "out" / name / "mask.tif") as mask:
            assert (mask.width, mask.height) == (width, height)
            assert set(np.unique(mask.read(1))) <= {0, 1}
        assert json.loads((tmp_path / "out" / name / "metrics.json").read_text())["tiles"]["computed"] == tiles


@pytest.mark.parametrize("case", ["size", "transform"])
def test_segment_label_raster_off_the_image_grid_fails_that_input(case, good, pixels, checkpoint, tmp_path, capsys):
    rgb, grid = pixels
    label = np.zeros(rgb.shape[1:], np.uint8)
    if case == "size":
        bad = write_geotiff(tmp_path / "good.tif", label[:, :-1], **grid)
        problem = "label raster is 319x256 pixels but image"
    else:
        moved = dict(grid, transform=grid["transform"] * rasterio.Affine.translation(3, 0))
        bad = write_geotiff(tmp_path / "good.tif", label, **moved)
        problem = "label raster transform"
    plan = plan_segment([str(good)], checkpoint, str(tmp_path / "out"), seg_config(), [str(bad)])
    (job,) = plan.jobs
    one_line_error(InputError(job.error), str(bad), problem, "labels must be on the image's grid")
    assert error_lines(capsys.readouterr().err) == [f"error: {job.error}"]
    assert tree(tmp_path / "out") == {".work", ".work/settings.json"}


# --------------------------------------------------------------------------- 1. bad inputs: checkpoints

def _other_backbone(path: Path, marker: Path) -> tuple[Path, list[str]]:
    fi.tiny_checkpoint(path, stored_backbone="resnet34")  # resnet18 weights, labelled resnet34
    return path, ["weights do not match refinenet(resnet34, decoder_width=16)", "missing keys", "encoder.layer1.2."]


BAD_CHECKPOINTS = {
    "other backbone": _other_backbone,
    "random bytes": lambda p, m: (fi.random_bytes(p), ["refused: not a plain-data checkpoint", "Unsupported operand"]),
    "empty file": lambda p, m: (fi.empty_file(p), ["not a PyTorch checkpoint (empty file)"]),
    "pickled code": lambda p, m: (fi.malicious_checkpoint(p, m), ["refused: not a plain-data checkpoint",
                                                                  "GLOBAL posix.system"]),
}


@pytest.mark.parametrize("case", BAD_CHECKPOINTS)
def test_bad_checkpoint_stops_segment_evaluate_and_resume_in_one_line(case, good, tmp_path):
    """Segment, evaluate and train --resume all refuse it on the driver, before any worker starts."""
    from segcore.pipelines.evaluate import run_evaluation
    from segcore.pipelines.train import run_training

    marker = tmp_path / MARKER
    path, words = BAD_CHECKPOINTS[case](tmp_path / "model.pt", marker)
    with pytest.raises(InputError) as info:
        plan_segment([str(good)], str(path), str(tmp_path / "out"), seg_config())
    one_line_error(info.value, f"{path}: ", *words)
    assert not (tmp_path / "out").exists()

    data = write_patch_set(tmp_path / "data", counts=(("train", 2), ("val", 2)))
    with pytest.raises(InputError) as info:
        run_evaluation(small_config(data, tmp_path / "eval"), str(path), str(data), "val")
    one_line_error(info.value, f"{path}: ", *words)

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    last = run / "checkpoints" / "last.pt"
    if case == "other backbone":  # a run of resnet18, resumed with a config that says resnet34
        torch.manual_seed(0)
        model_cfg = ModelConfig(backbone="resnet18", decoder_width=16)
        Checkpoint(model_cfg, InputConfig(), build_model("refinenet", "resnet18", 16, False).state_dict(), epoch=1,
                   training=TrainingState(optimizer={}, scheduler={}, config={}, progress={})).save(str(last))
        cfg = small_config(data, run, "model.backbone=resnet34")
    else:
        shutil.copy(path, last)
        cfg = small_config(data, run)
    with pytest.raises(InputError) as info:
        run_training(cfg, resume=str(run))
    one_line_error(info.value, f"{last}: ", *words)
    assert sorted(p.name for p in run.rglob("*")) == ["checkpoints", "last.pt"]  # nothing written
    assert not marker.exists(), "unpickling ran the payload"


def test_malicious_checkpoint_cli_exits_2_and_runs_no_code(good, tmp_path):
    marker = tmp_path / MARKER
    bad = fi.malicious_checkpoint(tmp_path / "model.pt", marker)
    result = fi.run_job("segment", "--input", good, "--checkpoint", bad, "--output", tmp_path / "out",
                        env=fi.job_env(tmp_path / "ray"), timeout=180)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [f"error: {bad}: refused: not a plain-data checkpoint (weights_only load "
                                          "failed: Trying to load unsupported GLOBAL posix.system whose module posix "
                                          "is blocked.)"]
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_only_weights_only_torch_load_in_the_source_tree():
    """Every torch.load outside the tests passes a literal weights_only=True, and nothing unpickles directly."""
    loads, offenders = 0, []
    for folder in ("segcore", "jobs", "scripts", "benchmarks", "cluster"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.serialization", "pickle"):
                    offenders += [f"{path}:{node.lineno}: from {node.module} import {a.name}" for a in node.names
                                  if a.name in ("load", "loads", "Unpickler")]
                if not isinstance(node, ast.Call):
                    continue
                name = ast.unparse(node.func)
                if name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "joblib.load"):
                    offenders.append(f"{path}:{node.lineno}: {name}")
                if name in ("np.load", "numpy.load"):  # arrays only: allow_pickle must stay off
                    flag = {kw.arg: kw.value for kw in node.keywords}.get("allow_pickle")
                    if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                        offenders.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
                if name in ("torch.load", "torch.serialization.load"):
                    loads += 1
                    flag = {kw.arg: kw.value for kw in node.keywords}.get("weights_only")
                    if not (isinstance(flag, ast.Constant) and flag.value is True):
                        offenders.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    assert loads == 1 and not offenders, offenders  # one reader: segcore.checkpoint.read_checkpoint


# ------------------------------------------------------------------------------ 1. bad inputs: prepare

def prep_config(*overrides: str):
    return load_config(None, [*PREP, *overrides])


def manifest(root: Path) -> list[dict]:
    with open(root / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def leftovers(out: Path) -> list[Path]:
    return sorted(out.parent.glob(out.name + "*"))


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


# -------------------------------------------------------------------------------- 1. bad inputs: train

def test_train_bad_data_root_is_one_line_before_workers_start(s3_server, refusing_s3, tmp_path):
    from segcore.pipelines.train import run_training

    root = write_patch_set(tmp_path / "data", counts=(("train", 3), ("val", 2)))
    (root / "train" / "images" / "p001.png").write_bytes(b"")
    with pytest.raises(InputError) as info:
        run_training(small_config(root, tmp_path / "run"))
    one_line_error(info.value, "p001.png: not a readable image")
    with pytest.raises(InputError) as info:
        run_training(small_config("s3://segcore-no-such-bucket/ds", tmp_path / "run", f"s3.endpoint_url={s3_server}"))
    one_line_error(info.value, "s3://segcore-no-such-bucket/ds/train/images: missing")
    with pytest.raises(InputError) as info:
        run_training(small_config(f"s3://{refusing_s3.bucket}/ds", tmp_path / "run",
                                  f"s3.endpoint_url={refusing_s3.endpoint}"))
    one_line_error(info.value, f"s3://{refusing_s3.bucket}/ds/train/images: access denied", "Access Key Id")
    assert not (tmp_path / "run").exists()


def test_negative_threshold_and_overlap_not_below_tile_are_refused(tmp_path):
    from segcore.pipelines.evaluate import run_evaluation

    for override, words in (("train.threshold=-0.1", ["train.threshold", "-0.1", "(0, 1)"]),
                            ("segment.threshold=-0.1", ["segment.threshold", "-0.1", "(0, 1)"]),
                            ("segment.overlap=64", ["segment.overlap", "64", "tile_size (64)"]),
                            ("prepare.overlap=128", ["prepare.overlap", "128", "overlap < tile_size"])):
        with pytest.raises(ConfigError) as info:
            load_config(None, [*SEG, *PREP, override])
        one_line_error(info.value, *words)
    data = write_patch_set(tmp_path / "data", counts=(("val", 1),))
    with pytest.raises(InputError) as info:  # evaluate's --threshold is not a config key: checked on its own
        run_evaluation(small_config(data, tmp_path / "e"), str(tmp_path / "any.pt"), str(data), "val", -0.5)
    one_line_error(info.value, "threshold -0.5: expected a probability in (0, 1)")


CLI_CASES = {
    "train: YAML with an unknown key": (
        "train", lambda t: ["--config", _yaml(t, "train:\n  epochs: 2\n  learning_rate: 0.1\n")],
        "error: config key 'train.learning_rate' is unknown: expected one of data_root, run_dir, "),
    "segment: negative threshold": (
        "segment", lambda t: ["--input", t / "in.tif", "--checkpoint", t / "m.pt", "--output", t / "out",
                              "--set", "segment.threshold=-0.1"],
        "error: config key 'segment.threshold' has value -0.1: expected a probability in (0, 1) or null"),
    "prepare: overlap >= tile size": (
        "prepare", lambda t: ["--images", t / "in.tif", "--labels", t / "l.tif", "--output", t / "out",
                              "--set", "prepare.tile_size=128", "--set", "prepare.overlap=128"],
        "error: config key 'prepare.overlap' has value 128: expected 0 <= overlap < tile_size"),
    "prepare: truncated GeoTIFF": (
        "prepare", lambda t: ["--images", _truncated(t), "--labels", t / "l.geojson", "--output", t / "out"],
        "error: {t}/cut.tif: "),
}


def _truncated(folder: Path) -> Path:
    return fi.truncated_copy(write_geotiff(folder / "full.tif", np.ones((3, 64, 64), np.uint8)), folder / "cut.tif")


def _yaml(folder: Path, text: str) -> Path:
    (folder / "bad.yaml").write_text(text)
    return folder / "bad.yaml"


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_bad_input_exits_2_with_one_line_before_ray_starts(case, tmp_path):
    name, args, start = CLI_CASES[case]
    result = fi.run_job(name, *args(tmp_path), env=fi.job_env(tmp_path / "ray"), timeout=180)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(start.format(t=tmp_path)), result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "ray").exists()  # Ray never started


# ------------------------------------------------------------------------------- 1. refused credentials

@pytest.fixture(scope="module")
def refusing_s3(city):
    """A moto server that refuses every access key after the two setup requests (bucket, city.tif)."""
    server = fi.MotoServer(refuse_after=2).start()
    try:
        fi.upload(server.client(), "faults-refusing", {"in/city.tif": city.image})
        yield SimpleNamespace(endpoint=server.endpoint, bucket="faults-refusing")
    finally:
        server.stop()


def test_refused_s3_credentials_verified_with_a_plain_client(refusing_s3):
    import botocore.exceptions

    import boto3

    client = boto3.client("s3", endpoint_url=refusing_s3.endpoint, region_name="us-east-1")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        client.head_object(Bucket=refusing_s3.bucket, Key="in/city.tif")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_refused_s3_credentials_prepare_cli_exits_2_without_echoing_them(refusing_s3, city, tmp_path):
    secret, key_id = f"faults-refused-secret-{uuid.uuid4().hex}", f"AKIAREFUSED{uuid.uuid4().hex[:9].upper()}"
    env = fi.job_env(tmp_path / "ray", AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY=secret)
    result = fi.run_job("prepare", "--images", f"s3://{refusing_s3.bucket}/in/", "--labels", city.buildings,
                        "--output", tmp_path / "ds", "--set", f"s3.endpoint_url={refusing_s3.endpoint}",
                        env=env, timeout=180)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [f"error: s3://{refusing_s3.bucket}/in/: access denied (The AWS Access Key "
                                          "Id you provided does not exist in our records.)"]
    assert secret not in result.stdout + result.stderr and key_id not in result.stdout + result.stderr
    assert not (tmp_path / "ds").exists()


def test_refused_s3_credentials_segment_input_fails_alone_output_stops_the_job(refusing_s3, good, checkpoint,
                                                                                 tmp_path, capsys):
    cfg = seg_config(f"s3.endpoint_url={refusing_s3.endpoint}")
    plan = plan_segment([f"s3://{refusing_s3.bucket}/in/city.tif", str(good)], checkpoint,
                        str(tmp_path / "out"), cfg)
    refused, good = plan.jobs
    one_line_error(InputError(refused.error), f"s3://{refusing_s3.bucket}/in/city.tif: access denied")
    assert good.error is None and len(good.todo) == GOOD_BLOCKS  # the other input goes on
    assert error_lines(capsys.readouterr().err) == [f"error: {refused.error}"]
    with pytest.raises(InputError) as info:
        plan_segment([str(good)], checkpoint, f"s3://{refusing_s3.bucket}/out", cfg)
    one_line_error(info.value, f"s3://{refusing_s3.bucket}/out: access denied")


# ------------------------------------------------------------------------------------------- 2. faults

def _run_in_thread(plan) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def work():
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                result["summary"] = run_segment(plan)
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                result["exception"] = exc
        result["err"] = err.getvalue()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread, result


def test_killed_segment_actor_is_restarted_and_the_mask_is_identical(good, reference_mask, checkpoint, ray_local,
                                                                      tmp_path):
    from ray._private import state

    out = tmp_path / "out"
    plan = plan_segment([str(good)], checkpoint, str(out), seg_config())
    started_ms = time.time() * 1000
    thread, result = _run_in_thread(plan)
    assert wait_for(lambda: block_files(out, "good") or not thread.is_alive())
    pool = [a for a in state.actors().values() if "BlockSegmenter" in a["ActorClassName"] and a["State"] == "ALIVE"
            and a["StartTime"] >= started_ms]
    assert len(pool) == 1, pool
    os.kill(pool[0]["Pid"], signal.SIGKILL)  # the actor process dies, as on an OOM kill or a lost node
    done_at_kill = len(block_files(out, "good"))
    thread.join(timeout=600)
    assert "exception" not in result, result.get("exception")
    assert 0 < done_at_kill < GOOD_BLOCKS
    assert state.actors()[pool[0]["ActorID"]]["NumRestarts"] >= 1  # Ray Data's default: max_restarts=-1
    summary = result["summary"]
    assert summary["ok"] == 1 and not error_lines(result["err"]), result["err"]
    metrics = json.loads((out / "good" / "metrics.json").read_text())
    assert metrics["blocks"] == {"total": GOOD_BLOCKS, "computed": GOOD_BLOCKS, "reused": 0}
    assert (out / "good" / "mask.tif").read_bytes() == reference_mask


@pytest.fixture(scope="module")
def killed_job(good, checkpoint, s3_server, tmp_path_factory):
    """jobs/segment.py on an s3:// input (and an empty file) with distinctive credentials, SIGKILLed (its
    whole process group and its own Ray) after 3 blocks, then rerun. Yields what both runs printed and left."""
    import boto3

    root = tmp_path_factory.mktemp("sigkill")
    secrets = dict(AWS_ACCESS_KEY_ID=f"AKIAFAULTS{uuid.uuid4().hex[:10].upper()}",
                   AWS_SECRET_ACCESS_KEY=f"faults-secret-{uuid.uuid4().hex}",
                   AWS_SESSION_TOKEN=f"faults-token-{uuid.uuid4().hex}")
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1",
                          **{k.lower(): v for k, v in secrets.items()})
    fi.upload(client, "faults-sigkill", {"in/good.tif": good})
    ray_tmp = fi.short_tmp("sfk")
    env = fi.job_env(ray_tmp, **secrets)
    out = root / "out"
    # An empty file beside it: the CLI must segment the good input anyway, name the bad one, and exit 1.
    args = ["--input", "s3://faults-sigkill/in/good.tif", fi.empty_file(root / "empty.tif"), "--checkpoint",
            checkpoint, "--output", out]
    for item in (*SEG, f"s3.endpoint_url={s3_server}"):
        args += ["--set", item]
    logs = {}
    try:
        with open(root / "first.out", "w") as stdout, open(root / "first.err", "w") as stderr:
            proc = subprocess.Popen(fi.job("segment", *args), stdout=stdout, stderr=stderr, env=env, cwd=REPO,
                                    start_new_session=True)
            try:
                wait_for(lambda: len(block_files(out, "good")) >= 3 or proc.poll() is not None, timeout=400,
                         every=0.01)
            finally:
                with contextlib.suppress(ProcessLookupError):  # the driver, its raylet, GCS and workers
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)
        orphans = fi.kill_marked(str(ray_tmp))
        kept = {p.name: p.stat().st_mtime_ns for p in block_files(out, "good")}
        left = tree(out)
        logs["first"] = (root / "first.out").read_text() + (root / "first.err").read_text()
        second = subprocess.run(fi.job("segment", *args), capture_output=True, text=True, env=env, cwd=REPO,
                                timeout=400)
        logs["second"] = second.stdout + second.stderr
        fi.kill_marked(str(ray_tmp))
        yield SimpleNamespace(out=out, rc=(proc.returncode, second.returncode), kept=kept, left=left,
                              orphans=orphans, logs=logs, secrets=secrets, ray_tmp=ray_tmp, second=second)
    finally:
        fi.kill_marked(str(ray_tmp))
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_segment_job_killed_with_sigkill_resumes_from_its_blocks_with_identical_output(killed_job, reference_mask):
    job = killed_job
    assert job.rc[0] == -signal.SIGKILL and job.rc[1] == 1, job.logs["second"][-3000:]  # 1: an input failed
    assert 3 <= len(job.kept) < GOOD_BLOCKS, job.kept
    # What the kill left: block files and the plan's settings, nothing that looks like a finished output.
    assert not {"good/mask.tif", "good/metrics.json", "summary.json"} & job.left, sorted(job.left)
    metrics = json.loads((job.out / "good" / "metrics.json").read_text())
    assert metrics["blocks"] == {"total": GOOD_BLOCKS, "computed": GOOD_BLOCKS - len(job.kept),
                                 "reused": len(job.kept)}
    for path in block_files(job.out, "good"):  # the finished blocks were reused, not recomputed
        if path.name in job.kept:
            assert path.stat().st_mtime_ns == job.kept[path.name], path.name
    assert (job.out / "good" / "mask.tif").read_bytes() == reference_mask
    summary = json.loads((job.out / "summary.json").read_text())
    assert summary["ok"] == 1 and summary["blocks_computed"] == GOOD_BLOCKS - len(job.kept)
    assert "1 input(s) segmented, 1 failed" in job.second.stdout
    assert error_lines(job.second.stderr) == [f"error: {job.out.parent / 'empty.tif'}: not a readable raster "
                                              f"('{job.out.parent / 'empty.tif'}' not recognized as being in a "
                                              "supported file format.)"]


ONE_BLOCK = ("segment.block_size=512",)


@pytest.fixture(scope="module")
def one_block_reference(good, checkpoint, ray_local, tmp_path_factory) -> bytes:
    """mask.tif of the city segmented as one block, uninterrupted: the S3 outage runs must match it.

    With one block the outage hits the run deterministically: once its block file exists, the run's next
    S3 access is the assembly reading the image again (for the preview)."""
    out = tmp_path_factory.mktemp("one_block") / "out"
    summary, _ = segment([good], out, checkpoint, *ONE_BLOCK)
    assert summary["ok"] == 1
    return (out / "good" / "mask.tif").read_bytes()


def _s3_run(spec: str, out: Path, checkpoint: str, endpoint: str, outage) -> tuple[threading.Thread, dict]:
    """Segment `spec` in a thread and call `outage()` the moment its one block file exists.

    Probability and polygon outputs are on, so the assembly has more to do before it reads the image from
    S3 again: the outage always starts first. (They do not change the mask.)"""
    overrides = (*ONE_BLOCK, f"s3.endpoint_url={endpoint}", "segment.write_probability=true",
                 "segment.write_polygons=true")
    with contextlib.redirect_stderr(io.StringIO()):
        plan = plan_segment([spec], checkpoint, str(out), seg_config(*overrides))
    thread, result = _run_in_thread(plan)
    assert wait_for(lambda: block_files(out, "good") or not thread.is_alive(), every=0.002)
    outage()
    assert thread.is_alive(), result  # mid-run: the block is done, the assembly is still to come
    return thread, result


def test_s3_endpoint_down_for_3_s_mid_run_is_retried_and_the_run_finishes(good, one_block_reference, checkpoint,
                                                                          ray_local, tmp_path):
    """The endpoint refuses connections for 3 s (a proxy in front of moto goes down and comes back; the data
    stays): the product's retries (botocore 5 attempts within s3fs's 5) ride it out."""
    server = fi.MotoServer().start()
    proxy = fi.TcpProxy(server.port).up()
    try:
        fi.upload(server.client(), "faults-blip", {"in/good.tif": good})
        out = tmp_path / "out"
        thread, result = _s3_run("s3://faults-blip/in/good.tif", out, checkpoint, proxy.endpoint, proxy.down)
        time.sleep(3)
        alive_at_restart, proxy.accepted = thread.is_alive(), 0
        proxy.up()
        thread.join(timeout=600)
        assert "exception" not in result, result.get("exception")
        assert result["summary"]["ok"] == 1 and not error_lines(result["err"]), result["err"]
        assert alive_at_restart and proxy.accepted >= 1  # it still needed S3 after the outage, and got it
        assert json.loads((out / "good" / "metrics.json").read_text())["blocks"] == {"total": 1, "computed": 1,
                                                                                     "reused": 0}
        assert (out / "good" / "mask.tif").read_bytes() == one_block_reference
    finally:
        proxy.down()
        server.stop()


def test_s3_server_stopped_mid_run_fails_the_input_cleanly_and_a_rerun_after_restart_completes(
        good, one_block_reference, checkpoint, ray_local, tmp_path):
    """The moto server is killed and stays down past the retries (~35 s for one read): the input fails in
    one line and leaves no output; the server restarts empty, the input is uploaded again, a rerun completes."""
    server = fi.MotoServer().start()
    try:
        fi.upload(server.client(), "faults-outage", {"in/good.tif": good})
        spec, out = "s3://faults-outage/in/good.tif", tmp_path / "out"
        thread, result = _s3_run(spec, out, checkpoint, server.endpoint, server.stop)
        thread.join(timeout=600)
        assert "exception" not in result, result.get("exception")
        (entry,) = result["summary"]["inputs"]
        assert entry["status"] == "failed" and result["summary"]["failed"] == 1
        one_line_error(InputError(entry["error"]), f"{spec}: could not be read from storage",
                       "Could not connect to the endpoint URL", server.endpoint)
        assert error_lines(result["err"]) == [f"error: {entry['error']}"]
        # prob.tif and buildings.geojson were published before the preview failed: removed again with it.
        assert not list((out / "good").glob("*"))
        assert [p.name for p in block_files(out, "good")] == ["block_000000.npz"]

        server.start()  # same port, but empty: moto keeps nothing across a restart, so the input is uploaded again
        fi.upload(server.client(), "faults-outage", {"in/good.tif": good})
        summary, err = segment([spec], out, checkpoint, *ONE_BLOCK, f"s3.endpoint_url={server.endpoint}",
                               "segment.write_probability=true", "segment.write_polygons=true")
        assert summary["ok"] == 1 and not error_lines(err), err
        metrics = json.loads((out / "good" / "metrics.json").read_text())
        # A new upload is a new object (LastModified), so the earlier block is not trusted but recomputed.
        assert metrics["blocks"] == {"total": 1, "computed": 1, "reused": 0}
        assert (out / "good" / "mask.tif").read_bytes() == one_block_reference
    finally:
        server.stop()


def test_full_disk_fails_the_segment_run_in_one_line_per_failure_and_leaves_no_partial_file(good, checkpoint,
                                                                                             ray_local, tmp_path):
    with fi.Tmpfs(tmp_path / "disk", "1m") as disk:
        out = disk.path / "out"
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            plan = plan_segment([str(good)], checkpoint, str(out), seg_config(*ONE_BLOCK))
            disk.fill(leave=0)  # the disk fills up after the job has started
            with pytest.raises(InputError) as info:
                run_segment(plan)
        one_line_error(info.value, f"{out}/summary.json", "No space left on device")
        (error,) = error_lines(err.getvalue())
        assert error.startswith(f"error: {good}: block 0: {out}/.work/good-") and error.endswith(
            "/block_000000.npz: [Errno 28] No space left on device"), error
        files = [str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()]
        assert files == [".work/settings.json"], files  # no block file, no half-written temporary file
        assert not (out / "good").exists() and not (out / "summary.json").exists()


def test_full_disk_fails_prepare_in_one_line_and_leaves_nothing(city, ray_local, tmp_path):
    with fi.Tmpfs(tmp_path / "disk", "1m") as disk:
        disk.fill(leave=0)
        out = disk.path / "ds"
        with pytest.raises(InputError) as info:
            prepare_dataset([str(city.image)], [str(city.labels)], str(out), prep_config())
        one_line_error(info.value, "No space left on device")
        assert sorted(p.name for p in disk.path.iterdir()) == [".filler"]


# ----------------------------------------------------------------------------------------- 3. security

def test_no_secret_in_the_killed_and_resumed_jobs_logs_outputs_or_ray_logs(killed_job):
    texts = {f"{name} stdout+stderr": text.encode() for name, text in killed_job.logs.items()}
    files = fi.files_under(killed_job.out, killed_job.ray_tmp)
    texts.update({str(path): path.read_bytes() for path in files})
    assert any("/logs/" in name for name in texts) and any(name.endswith("mask.tif") for name in texts)
    assert fi.leaks(killed_job.secrets.values(), texts) == []


def test_no_secret_in_prepare_and_training_outputs_checkpoints_metrics_or_ray_logs(city, ray_local, s3_bucket,
                                                                                     tmp_path, capsys):
    """Prepare reads and writes S3, training reads the patches from S3 and writes checkpoints: none of the
    credentials the workers used appears anywhere they or Ray wrote."""
    import boto3
    import ray

    from segcore.pipelines.train import run_training

    endpoint, bucket = s3_bucket
    secrets = [os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
               if os.environ.get(k)]
    client = boto3.client("s3", endpoint_url=endpoint)
    fi.upload(client, bucket, {"in/city.tif": city.image, "in/city.geojson": city.buildings})
    s3 = f"s3.endpoint_url={endpoint}"
    prepare_dataset([f"s3://{bucket}/in/city.tif"], [f"s3://{bucket}/in/city.geojson"], f"s3://{bucket}/ds",
                    load_config(None, ["prepare.tile_size=64", "prepare.split_block=128", s3]))
    run_dir = tmp_path / "run"
    run_training(small_config(f"s3://{bucket}/ds", run_dir, "train.epochs=1", "train.num_workers=1",
                              "train.cpus_per_worker=1", s3))
    assert (run_dir / "checkpoints" / "best.pt").exists() and (run_dir / "metrics.csv").exists()
    texts = {f"s3://{bucket}/{key}": data for key, data in fi.s3_objects(client, bucket).items()}
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    for path in fi.files_under(run_dir, session / "logs"):
        texts[str(path)] = path.read_bytes()
    captured = capsys.readouterr()
    texts["stdout+stderr"] = (captured.out + captured.err).encode()
    assert any(name.endswith("best.pt") for name in texts) and any(name.endswith("manifest.csv") for name in texts)
    assert fi.leaks(secrets, texts) == []


def test_prepare_output_names_from_odd_input_names_stay_inside_the_dataset(pixels, city, ray_local, tmp_path):
    rgb, grid = pixels
    crop = rgb[:, :128, :128]
    images = [write_geotiff(tmp_path / "in" / name, crop, **grid) for name in ("..%2f..%2fescape.tif", "...tif",
                                                                             f"$(touch {MARKER}); x.tif")]
    (tmp_path / "in" / "link.tif").symlink_to(images[0])
    labels = tmp_path / "labels"
    for image in [*images, tmp_path / "in" / "link.tif"]:
        write_geotiff(labels / image.name, np.zeros((128, 128), np.uint8), **grid)
    before = tree(tmp_path)
    out = tmp_path / "ds"
    prepare_dataset([str(tmp_path / "in")], [str(labels)], str(out), prep_config())
    assert {p for p in tree(tmp_path) - before if not p.startswith("ds/") and p != "ds"} == set()
    rows = manifest(out)
    assert len(rows) == 4 and not (REPO / MARKER).exists() and not (tmp_path / MARKER).exists()
    for row in rows:  # inside ROOT, and none hidden (readers skip dot files): every patch is trained on
        path = (out / row["image"]).resolve()
        assert path.is_relative_to(out.resolve()) and not path.name.startswith(".")
    assert sum(len(list_pairs(str(out), split)) for split in ("train", "val", "test")) == 4


def test_segment_output_names_from_odd_input_names_stay_inside_out(mixed_run):
    created = mixed_run.after - mixed_run.before
    assert {p for p in created if p != "out" and not p.startswith("out/")} == set()
    entries = by_name(mixed_run.summary)
    keys = [entries[name]["key"] for name in mixed_run.odd_names]
    assert len(set(keys)) == 4 and all("/" not in key and not key.startswith(".") for key in keys), keys
    out = mixed_run.out.resolve()
    for key in keys:
        assert (mixed_run.out / key / "mask.tif").resolve().parent.parent == out
    assert all(p.resolve().is_relative_to(out) for p in mixed_run.out.rglob("*"))
    assert not (REPO / MARKER).exists() and not (mixed_run.root / MARKER).exists()


def _row_numbers(text: str) -> list[str]:
    return re.findall(r"^\| (\d+\.\d+) \|", text, flags=re.MULTILINE)


def test_the_readme_table_lists_every_row_of_the_matrix():
    readme_rows = _row_numbers((REPO / "README.md").read_text())
    matrix_rows = _row_numbers((REPO / "FAULTS.md").read_text())
    assert len(matrix_rows) >= 38 and readme_rows == matrix_rows
