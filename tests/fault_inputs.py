"""Builders of bad inputs and the fault machinery of tests/test_faults.py.

Bad inputs: broken rasters (empty, truncated, a PNG named .tif, odd band counts and dtypes, odd shapes,
all nodata), broken checkpoints (random bytes, a pickle that runs code, another backbone's weights).
Faults: a moto S3 server of its own that can be stopped, restarted and made to refuse credentials; a
small tmpfs that fills up; jobs run as subprocesses with a Ray of their own, killed with SIGKILL.
Every process started here is found again by its pid (or a marker in its environment), never by name.
"""
from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import rasterio
import torch

from segcore.checkpoint import Checkpoint
from segcore.config import InputConfig, ModelConfig
from segcore.model import build_model
from tests.conftest import REPO, write_geotiff

THRESHOLD = 0.493  # about the median probability of the random-weights model on the sample city


# ------------------------------------------------------------------------------------------- rasters

def read_city(path) -> tuple[np.ndarray, dict]:
    """(bands, h, w) pixels of a GeoTIFF and the keyword arguments that put a copy on its grid."""
    with rasterio.open(path) as src:
        return src.read(), dict(crs=src.crs, transform=src.transform)


def empty_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def truncated_copy(source: Path, path: Path) -> Path:
    """The first half of a real GeoTIFF: its header reads, its pixels do not."""
    data = Path(source).read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


def png_named_tif(path: Path, rgb: np.ndarray) -> Path:
    """A PNG (no georeference) under a .tif name."""
    import cv2

    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(rgb.transpose(1, 2, 0)[..., ::-1]))
    assert ok
    path.write_bytes(buffer.tobytes())
    return path


def odd_raster(path: Path, kind: str, rgb: np.ndarray, grid: dict) -> Path:
    """A raster of `kind`: oneband, float32 (rgb / 255), uint16 (rgb * 257), nodata (all 0, nodata 0)."""
    if kind == "oneband":
        return write_geotiff(path, rgb[:1], **grid)
    if kind == "float32":
        return write_geotiff(path, (rgb.astype(np.float32) / np.float32(255)), **grid)
    if kind == "uint16":
        return write_geotiff(path, rgb.astype(np.uint16) * 257, **grid)
    if kind == "nodata":
        return write_geotiff(path, np.zeros_like(rgb), nodata=0, **grid)
    raise ValueError(kind)


def strip_raster(path: Path, width: int, height: int, seed: int = 0) -> Path:
    """A uint8 RGB raster of any shape (1 x 100000 included): a smooth random walk, image-like enough."""
    walk = np.cumsum(np.random.default_rng(seed).normal(0, 4, width * height))
    line = ((walk - walk.min()) / max(np.ptp(walk), 1e-9) * 200 + 20).astype(np.uint8).reshape(height, width)
    return write_geotiff(path, np.stack([line, line // 2 + 60, 255 - line]))


def polygons_in_lonlat(source: Path, path: Path) -> Path:
    """The sample city's building polygons reprojected to longitude/latitude (RFC 7946: no "crs" member)."""
    import json

    from rasterio.warp import transform_geom

    data = json.loads(Path(source).read_text())
    crs = data.pop("crs")["properties"]["name"]
    for feature in data["features"]:
        feature["geometry"] = transform_geom(crs, "EPSG:4326", feature["geometry"])
    path.write_text(json.dumps(data))
    return path


# ----------------------------------------------------------------------------------------- checkpoints

def tiny_checkpoint(path: Path, *, stored_backbone: str = "resnet18", seed: int = 0) -> str:
    """A random-weights RefineNet-resnet18 (decoder 16) segcore checkpoint; `stored_backbone` may lie."""
    torch.manual_seed(seed)
    model = build_model("refinenet", "resnet18", 16, False)
    Checkpoint(ModelConfig(backbone=stored_backbone, decoder_width=16), InputConfig(), model.state_dict(),
               threshold=THRESHOLD).save(str(path))
    return str(path)


class _Payload:
    """Unpickling this runs a shell command: the canonical malicious checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def malicious_checkpoint(path: Path, marker: Path) -> Path:
    """A torch.save'd dict whose pickle calls os.system('touch MARKER') when loaded without weights_only."""
    buffer = io.BytesIO()
    torch.save({"format": "segcore-checkpoint/1", "state_dict": _Payload(marker)}, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path


def random_bytes(path: Path, size: int = 4096, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


# ------------------------------------------------------------------------------------------------ S3

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MotoServer:
    """A moto S3 server of one test's own, on a fixed loopback port so it can be stopped and restarted.

    refuse_after=N: moto's IAM enforcement (INITIAL_NO_AUTH_ACTION_COUNT=N): the first N requests are
    served without checks (test setup), every later one must be signed with a key moto's IAM knows, so
    any other key id is refused with 403 InvalidAccessKeyId.
    """

    def __init__(self, refuse_after: Optional[int] = None):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.refuse_after = refuse_after
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "MotoServer":
        env = dict(os.environ)
        if self.refuse_after is not None:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(self.refuse_after)
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server on port {self.port} did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc = None

    def client(self, **credentials):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", **credentials)


class TcpProxy:
    """A loopback TCP forwarder on a port of its own, in front of a server that keeps its state: `down()`
    closes the port and every open connection (clients get "connection refused", as from a stopped
    server), `up()` listens again on the same port. `accepted` counts the connections served since."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.accepted = 0
        self._listener: Optional[socket.socket] = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def up(self) -> "TcpProxy":
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            for sock in list(self._open):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # down()
            try:
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                self.accepted += 1
                self._open.update((client, server))
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
                with self._lock:
                    self._open.discard(sock)


def upload(client, bucket: str, files: dict[str, Path]) -> None:
    """Create `bucket` (if needed) and upload {key: local file}."""
    try:
        client.create_bucket(Bucket=bucket)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    for key, path in files.items():
        client.upload_file(str(path), bucket, key)


def s3_objects(client, bucket: str) -> dict[str, bytes]:
    """Every object of a bucket, {key: bytes}."""
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for entry in page.get("Contents", []):
            out[entry["Key"]] = client.get_object(Bucket=bucket, Key=entry["Key"])["Body"].read()
    return out


# ------------------------------------------------------------------------------------------- disk full

class Tmpfs:
    """A tmpfs of `size` mounted at `path` (needs root); `fill(leave)` leaves about `leave` bytes free."""

    def __init__(self, path: Path, size: str = "2m"):
        self.path, self.size = Path(path), size

    def __enter__(self) -> "Tmpfs":
        self.path.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0755", "tmpfs", str(self.path)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise OSError(f"cannot mount a tmpfs at {self.path}: {result.stderr.strip()}")
        return self

    def free(self) -> int:
        stats = os.statvfs(self.path)
        return stats.f_bavail * stats.f_frsize

    def fill(self, leave: int) -> None:
        """Write a filler file so that about `leave` bytes stay free."""
        with open(self.path / ".filler", "wb") as handle:
            handle.write(b"\0" * max(0, self.free() - leave))

    def __exit__(self, *exc) -> None:
        if subprocess.run(["umount", str(self.path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


# ------------------------------------------------------------------------------ jobs as subprocesses

def job_env(ray_tmp: Optional[Path], *, ray_address: Optional[str] = None, **extra: str) -> dict:
    """The environment of a job subprocess. Without `ray_address` it starts a Ray of its own: RAY_ADDRESS=local
    makes ray.init() start a new local instance even where another cluster could be found (a `ray start` head
    writes its address to <temp>/ray/ray_current_cluster, which ray.init() would otherwise join), and RAY_TMPDIR
    gives that instance its own session and log folder, which also marks every process of it. With it, the job
    joins that running cluster, as under `ray job submit`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RAY_", "AWS_"))}
    env.update({"RAY_DEDUP_LOGS": "0", "PYTHONUNBUFFERED": "1", "AWS_DEFAULT_REGION": "us-east-1", **extra})
    # A client of a running cluster sends the token (~/.ray/auth_token) only when RAY_AUTH_MODE=token.
    env.update({"RAY_ADDRESS": ray_address, "RAY_AUTH_MODE": "token"} if ray_address else
               {"RAY_ADDRESS": "local", "RAY_TMPDIR": str(ray_tmp)})
    return env


def job(name: str, *args: str) -> list[str]:
    return [sys.executable, str(REPO / "jobs" / f"{name}.py"), *[str(a) for a in args]]


def run_job(name: str, *args: str, env: Optional[dict] = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_job_command(job(name, *args), env=env, timeout=timeout)


def run_job_command(command: list[str], *, cwd: Path = REPO, env: Optional[dict] = None,
                    timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


def pids_marked(marker: str) -> list[int]:
    """Processes whose environment holds `marker` (e.g. a RAY_TMPDIR value unique to one test)."""
    needle = marker.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def kill_marked(marker: str, timeout: float = 30) -> list[int]:
    """SIGKILL every process carrying `marker` in its environment, until none is left; returns their pids."""
    killed: list[int] = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        pids = [pid for pid in pids_marked(marker) if _alive(pid)]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.3)
    return killed


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def short_tmp(prefix: str) -> Path:
    """A short folder under /tmp: Ray's socket paths must stay under 108 characters."""
    path = Path("/tmp") / f"{prefix}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path


# ------------------------------------------------------------------------------------------ scanning

def files_under(*roots: Path) -> list[Path]:
    return sorted(p for root in roots if Path(root).exists() for p in Path(root).rglob("*")
                  if p.is_file() and not p.is_symlink())


def leaks(secrets: Iterable[str], texts: dict[str, bytes]) -> list[tuple[str, str]]:
    """(where, secret) for every secret found in any of `texts` ({name: bytes})."""
    return [(name, secret) for name, data in texts.items() for secret in secrets if secret.encode() in data]
