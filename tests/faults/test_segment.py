"""Faults and bad input of segment: bad inputs fail alone in one line, odd ones work, and killed actors, a killed job,
S3 outages and a full disk either recover or fail cleanly, with byte-identical masks after a rerun."""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from segcore.errors import InputError
from segcore.metrics import ConfusionCounts
from segcore.pipelines.segment import plan_segment, run_segment
from tests import inputs as fi
from tests import servers
from tests.conftest import write_geotiff
from tests.faults.common import GOOD_BLOCKS, ONE_BLOCK, seg_config, segment
from tests.helpers import (
    block_files,
    by_name,
    error_lines,
    one_line_error,
    read_band,
    run_in_thread,
    s3_block_count,
    tree,
    wait_for,
)

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


@pytest.mark.parametrize("actor", ["BlockSegmenter", "Assembler"])
def test_killed_segment_actor_is_restarted_and_the_mask_is_identical(actor, good, reference_mask, checkpoint,
                                                                      ray_local, tmp_path):
    """An inference actor killed mid-run is restarted and its block computed again; an assembler killed mid-run
    is restarted empty, and the mosaic it held is assembled again from its block files."""
    from ray._private import state

    out = tmp_path / "out"
    # Half a CPU each for the inference actor and the assembler: with a reader and a writer, the 2 CPUs hold all
    # four at once, so the assembler works beside the stream.
    cfg = seg_config("segment.cpus_per_actor=0.5", "segment.cpus_per_assembly=0.5")
    plan = plan_segment([str(good)], checkpoint, str(out), cfg)
    started_ms = time.time() * 1000

    def alive() -> list[dict]:
        return [a for a in state.actors().values() if actor in a["ActorClassName"] and a["State"] == "ALIVE"
                and a["StartTime"] >= started_ms]

    thread, result = run_in_thread(plan)
    assert wait_for(lambda: (block_files(out, "good") and alive()) or not thread.is_alive())
    pool = alive()
    assert len(pool) == 1, pool
    os.kill(pool[0]["Pid"], signal.SIGKILL)  # the actor process dies, as on an OOM kill or a lost node
    done_at_kill = len(block_files(out, "good"))
    thread.join(timeout=600)
    assert "exception" not in result, result.get("exception")
    assert 0 < done_at_kill < GOOD_BLOCKS
    assert state.actors()[pool[0]["ActorID"]]["NumRestarts"] >= 1  # max_restarts=-1 (Ray Data's default)
    summary = result["summary"]
    assert summary["ok"] == 1 and not error_lines(result["err"]), result["err"]
    if actor == "Assembler":
        assert f"note: {out / 'good'}: its assembler was lost; assembling it again from its block files" in \
            result["err"], result["err"]
    metrics = json.loads((out / "good" / "metrics.json").read_text())
    assert metrics["blocks"] == {"total": GOOD_BLOCKS, "computed": GOOD_BLOCKS, "reused": 0}
    assert (out / "good" / "mask.tif").read_bytes() == reference_mask


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


def _s3_run(server, bucket: str, checkpoint: str, endpoint: str, outage, *settings: str
            ) -> tuple[threading.Thread, dict]:
    """Segment s3://BUCKET/in/good.tif into s3://BUCKET/out through `endpoint`, as on a cluster, in a thread, and
    call `outage()` the moment its one block file is on S3. The mosaic's assembly, which reads that file and
    uploads every output, still needs S3 then; probability and polygon outputs give it more to do first.
    (They do not change the mask.)"""
    overrides = (*ONE_BLOCK, f"s3.endpoint_url={endpoint}", "segment.write_probability=true",
                 "segment.write_polygons=true", *settings)
    with contextlib.redirect_stderr(io.StringIO()):
        plan = plan_segment([f"s3://{bucket}/in/good.tif"], checkpoint, f"s3://{bucket}/out", seg_config(*overrides))
    thread, result = run_in_thread(plan)
    assert wait_for(lambda: s3_block_count(server.client(), bucket, "out") > 0 or not thread.is_alive(), every=0.002)
    outage()
    assert thread.is_alive(), result  # mid-run: the block is done, the assembly is still to come
    return thread, result


def _mask(server, bucket: str) -> bytes:
    return server.client().get_object(Bucket=bucket, Key="out/good/mask.tif")["Body"].read()


def test_s3_endpoint_down_for_3_s_mid_run_is_retried_and_the_run_finishes(good, one_block_reference, checkpoint,
                                                                          ray_local):
    """The endpoint refuses connections for 3 s (a proxy in front of moto goes down and comes back; the data
    stays): the product's retries (botocore 5 attempts within s3fs's 5) ride it out."""
    server = servers.MotoServer().start()
    proxy = servers.TcpProxy(server.port).up()
    try:
        servers.upload(server.client(), "faults-blip", {"in/good.tif": good})
        thread, result = _s3_run(server, "faults-blip", checkpoint, proxy.endpoint, proxy.down)
        time.sleep(3)
        alive_at_restart, proxy.accepted = thread.is_alive(), 0
        proxy.up()
        thread.join(timeout=600)
        assert "exception" not in result, result.get("exception")
        assert result["summary"]["ok"] == 1 and not error_lines(result["err"]), result["err"]
        assert alive_at_restart and proxy.accepted >= 1  # it still needed S3 after the outage, and got it
        metrics = result["summary"]["inputs"][0]["metrics"]
        assert metrics["blocks"] == {"total": 1, "computed": 1, "reused": 0}
        assert _mask(server, "faults-blip") == one_block_reference
    finally:
        proxy.down()
        server.stop()


def test_s3_server_stopped_mid_run_fails_the_input_cleanly_and_a_rerun_after_restart_completes(
        good, one_block_reference, checkpoint, ray_local):
    """The moto server is killed and stays down past the retries (one try per request here, s3fs's own five
    remain): the input fails in one line and publishes nothing; the server restarts empty, the input is uploaded
    again, a rerun completes."""
    server = servers.MotoServer().start()
    try:
        servers.upload(server.client(), "faults-outage", {"in/good.tif": good})
        thread, result = _s3_run(server, "faults-outage", checkpoint, server.endpoint, server.stop,
                                 "s3.max_attempts=1")
        thread.join(timeout=600)
        # The input fails in one line; then the run's summary.json cannot be written either (the store is gone).
        (error,) = error_lines(result["err"])
        one_line_error(InputError(error), "error: s3://faults-outage/out/good", "Could not connect to the endpoint URL",
                       server.endpoint)
        one_line_error(result["exception"], "s3://faults-outage/out/summary.json", "Could not connect to the endpoint")

        server.start()  # same port, but empty: moto keeps nothing across a restart, so the input is uploaded again
        servers.upload(server.client(), "faults-outage", {"in/good.tif": good})
        summary, err = segment(["s3://faults-outage/in/good.tif"], "s3://faults-outage/out", checkpoint, *ONE_BLOCK,
                               f"s3.endpoint_url={server.endpoint}", "segment.write_probability=true",
                               "segment.write_polygons=true")
        assert summary["ok"] == 1 and not error_lines(err), err
        assert summary["inputs"][0]["metrics"]["blocks"] == {"total": 1, "computed": 1, "reused": 0}
        assert _mask(server, "faults-outage") == one_block_reference
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

