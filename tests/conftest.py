"""Shared fixtures: tiny real GeoTIFFs, a real S3 server (moto) and an HTTP(S) file server on loopback, one local
Ray per session."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

# Dummy credentials for the loopback S3 server only. Set before Ray starts so its workers inherit them.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "segcore-test-key-id")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "segcore-test-secret-value")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("AWS_PROFILE", None)
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

REPO = Path(__file__).resolve().parent.parent
UTM_33N = "EPSG:32633"
TEST_TRANSFORM = from_origin(500000.0, 5300000.0, 0.5, 0.5)


def write_geotiff(path, array: np.ndarray, crs=UTM_33N, transform=TEST_TRANSFORM, nodata=None, **profile) -> Path:
    """Write a (bands, h, w) or (h, w) array as a real GeoTIFF with a CRS and a geotransform."""
    array = array if array.ndim == 3 else array[None]
    meta = dict(driver="GTiff", width=array.shape[2], height=array.shape[1], count=array.shape[0],
                dtype=array.dtype, crs=crs, transform=transform, nodata=nodata)
    meta.update(profile)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **meta) as dst:
        dst.write(array)
    return path


@pytest.fixture
def geotiff(tmp_path):
    """Factory: geotiff(name, array, **kw) -> path of a real GeoTIFF in tmp_path."""
    return lambda name, array, **kw: write_geotiff(tmp_path / name, array, **kw)


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API (moto's server) on loopback for the whole session; yields its endpoint URL."""
    from tests.servers import MotoServer

    server = MotoServer().start()
    yield server.endpoint
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh bucket on the loopback S3 server; yields (endpoint, bucket name)."""
    import boto3

    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50].strip("-")
    client = boto3.client("s3", endpoint_url=s3_server)
    client.create_bucket(Bucket=name)
    yield s3_server, name


@dataclass(frozen=True)
class HttpFiles:
    root: Path  # files written here are served at {http,https}/files/NAME (and the other modes)
    http: str  # http://127.0.0.1:PORT
    https: str  # https://127.0.0.1:PORT, with a self-signed certificate
    ca: Path  # the PEM file that trusts it


@pytest.fixture(scope="session")
def http_files(tmp_path_factory):
    """A range-capable HTTP and HTTPS file server on loopback for the session (tests/http_server.py)."""
    root = tmp_path_factory.mktemp("http") / "www"
    root.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "tests.http_server", str(root), "--slow-s", "3"], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        urls = json.loads(proc.stdout.readline())
        yield HttpFiles(root, urls["http"], urls["https"], Path(urls["ca"]))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def cities(tmp_path_factory):
    """Factory: cities(width, height, seed=0) -> a generated city (image.tif, labels.tif, buildings.geojson; 0.5 m,
    UTM), made once per session for each size and seed."""
    from segcore.synth import generate_city

    made: dict = {}

    def city(width: int, height: int, seed: int = 0):
        if (width, height, seed) not in made:
            folder = tmp_path_factory.mktemp(f"city{width}x{height}s{seed}")
            made[width, height, seed] = generate_city(folder, width, height, seed=seed)
        return made[width, height, seed]

    return city


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A random-weights RefineNet-resnet18 (decoder 16) segcore checkpoint (tests.inputs.tiny_checkpoint)."""
    from tests.inputs import tiny_checkpoint as make

    return make(tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.fixture(scope="session")
def patch_set(tmp_path_factory) -> Path:
    """A generated patch set (tests.inputs.write_patch_set: 24 train, 8 val, 8 test patches of 64 px)."""
    from tests.inputs import write_patch_set

    return write_patch_set(tmp_path_factory.mktemp("patches"))


@dataclass(frozen=True)
class TrainedRun:
    run_dir: Path  # local; tests copy it before changing it
    bucket: str  # on the loopback S3 server: the patch set under patches/
    endpoint: str
    printed: str  # what the driver printed while training (Ray forwards the workers' lines to it)

    @property
    def data_root(self) -> str:
        return f"s3://{self.bucket}/patches"


@pytest.fixture(scope="session")
def trained_run(patch_set, ray_local, s3_server, tmp_path_factory) -> TrainedRun:
    """One training run for every test that reads one: 2 workers x 2 epochs on `patch_set` read from S3 with
    the session's credentials (the training tests check its outputs, the security tests search it)."""
    import contextlib
    import io

    import boto3

    from segcore.pipelines.train import run_training
    from tests import servers
    from tests.helpers import small_config

    bucket, run_dir, printed = "trained-run", tmp_path_factory.mktemp("trained") / "run", io.StringIO()
    servers.upload(boto3.client("s3", endpoint_url=s3_server), bucket,
                   {f"patches/{path.relative_to(patch_set).as_posix()}": path for path in patch_set.rglob("*.png")})
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        metrics = run_training(small_config(f"s3://{bucket}/patches", run_dir, "train.epochs=2",
                                            f"s3.endpoint_url={s3_server}"))
    assert metrics["epoch"] == 2, printed.getvalue()[-3000:]
    return TrainedRun(run_dir, bucket, s3_server, printed.getvalue())


@pytest.fixture(scope="session")
def ray_local(http_files):
    """One local Ray (2 CPUs) for the whole session, never an outside cluster. Its workers trust the loopback
    HTTPS server's CA, as a cluster's nodes trust their own CA bundle."""
    import ray

    env_vars = {"PYTHONPATH": str(REPO), "CURL_CA_BUNDLE": str(http_files.ca)}
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=1_500_000_000,
             runtime_env={"env_vars": env_vars})
    yield ray
    ray.shutdown()
