"""The fault matrix's shared inputs and runs (package-scoped: each is made once for every fault module).

Every test in tests/faults/ is marked `faults` (`pytest -m faults` runs the matrix alone).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests import inputs as fi
from tests import jobs, servers
from tests.conftest import REPO, write_geotiff
from tests.faults.common import MARKER, ONE_BLOCK, SEG, segment
from tests.helpers import block_files, by_name, tree, wait_for


def pytest_collection_modifyitems(items):
    for item in items:
        if "/tests/faults/" in str(item.fspath):
            item.add_marker(pytest.mark.faults)


@pytest.fixture(scope="package")
def city(cities):
    return cities(320, 256)


@pytest.fixture(scope="package")
def pixels(city):
    return fi.read_city(city.image)


@pytest.fixture(scope="package")
def checkpoint(tmp_path_factory) -> str:
    return fi.tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.fixture(scope="package")
def good(pixels, tmp_path_factory) -> Path:
    """The city as a plain GeoTIFF: the good input of every run."""
    rgb, grid = pixels
    return write_geotiff(tmp_path_factory.mktemp("good") / "good.tif", rgb, **grid)


@pytest.fixture(scope="package")
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
                           before=before, after=tree(root), odd_names=[*odd_names, "link.tif"])


@pytest.fixture(scope="package")
def reference_mask(mixed_run) -> bytes:
    """mask.tif of the city from an uninterrupted run with the SEG settings: every fault run must match it."""
    assert by_name(mixed_run.summary)["good.tif"]["status"] == "ok"
    return (mixed_run.out / "good" / "mask.tif").read_bytes()


@pytest.fixture(scope="package")
def odd_shapes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")
    speck = fi.strip_raster(folder / "images" / "speck.tif", 10, 10, seed=1)
    ribbon = fi.strip_raster(folder / "images" / "ribbon.tif", 1, 100_000, seed=2)
    for name, (w, h) in (("speck", (10, 10)), ("ribbon", (1, 100_000))):
        label = np.zeros((h, w), np.uint8)
        label[::7] = 1
        write_geotiff(folder / "labels" / f"{name}.tif", label)
    return SimpleNamespace(folder=folder, speck=speck, ribbon=ribbon)


@pytest.fixture(scope="package")
def refusing_s3(city):
    """A moto server that refuses every access key after the two setup requests (bucket, city.tif)."""
    server = servers.MotoServer(refuse_after=2).start()
    try:
        servers.upload(server.client(), "faults-refusing", {"in/city.tif": city.image})
        yield SimpleNamespace(endpoint=server.endpoint, bucket="faults-refusing")
    finally:
        server.stop()


@pytest.fixture(scope="package")
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
    servers.upload(client, "faults-sigkill", {"in/good.tif": good})
    ray_tmp = jobs.short_tmp("sfk")
    env = jobs.job_env(ray_tmp, **secrets)
    out = root / "out"
    # An empty file beside it: the CLI must segment the good input anyway, name the bad one, and exit 1.
    args = ["--input", "s3://faults-sigkill/in/good.tif", fi.empty_file(root / "empty.tif"), "--checkpoint",
            checkpoint, "--output", out]
    for item in (*SEG, f"s3.endpoint_url={s3_server}"):
        args += ["--set", item]
    logs = {}
    try:
        with open(root / "first.out", "w") as stdout, open(root / "first.err", "w") as stderr:
            proc = subprocess.Popen(jobs.job("segment", *args), stdout=stdout, stderr=stderr, env=env, cwd=REPO,
                                    start_new_session=True)
            try:
                wait_for(lambda: len(block_files(out, "good")) >= 3 or proc.poll() is not None, timeout=400,
                         every=0.01)
            finally:
                with contextlib.suppress(ProcessLookupError):  # the driver, its raylet, GCS and workers
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)
        orphans = jobs.kill_marked(str(ray_tmp))
        kept = {p.name: p.stat().st_mtime_ns for p in block_files(out, "good")}
        left = tree(out)
        logs["first"] = (root / "first.out").read_text() + (root / "first.err").read_text()
        second = subprocess.run(jobs.job("segment", *args), capture_output=True, text=True, env=env, cwd=REPO,
                                timeout=400)
        logs["second"] = second.stdout + second.stderr
        jobs.kill_marked(str(ray_tmp))
        yield SimpleNamespace(out=out, rc=(proc.returncode, second.returncode), kept=kept, left=left,
                              orphans=orphans, logs=logs, secrets=secrets, ray_tmp=ray_tmp, second=second)
    finally:
        jobs.kill_marked(str(ray_tmp))
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture(scope="package")
def one_block_reference(good, checkpoint, ray_local, tmp_path_factory) -> bytes:
    """mask.tif of the city segmented as one block, uninterrupted: the S3 outage runs must match it.

    With one block the outage hits the run deterministically: once its block file exists, the run's
    remaining S3 accesses are the assembly's (reading the block file, uploading the outputs)."""
    out = tmp_path_factory.mktemp("one_block") / "out"
    summary, _ = segment([good], out, checkpoint, *ONE_BLOCK)
    assert summary["ok"] == 1
    return (out / "good" / "mask.tif").read_bytes()

