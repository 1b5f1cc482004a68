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
def ray_local(http_files):
    """One local Ray (2 CPUs) for the whole session, never an outside cluster. Its workers trust the loopback
    HTTPS server's CA, as a cluster's nodes trust their own CA bundle."""
    import ray

    env_vars = {"PYTHONPATH": str(REPO), "CURL_CA_BUNDLE": str(http_files.ca)}
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=1_500_000_000,
             runtime_env={"env_vars": env_vars})
    yield ray
    ray.shutdown()
