"""Local and s3:// paths behind one small API, with atomic writes.

A path is a plain string: `s3://bucket/key` goes through s3fs (endpoint and region from the config's
`s3` section; credentials only from the standard AWS environment or profile, never from config files),
anything else is the local disk. Writes go to a temporary name and are renamed into place (local), or
uploaded in one PUT (S3, where an object only appears once complete), so a reader never sees half a file.
"""
from __future__ import annotations

import contextlib
import glob as globlib
import os
import shutil
import uuid
from pathlib import Path

import fsspec

from segcore.config import S3Config
from segcore.errors import InputError

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt")


def is_s3(path: str) -> bool:
    return str(path).startswith("s3://")


def filesystem(path: str, s3: S3Config | None = None) -> fsspec.AbstractFileSystem:
    """The fsspec filesystem for `path`. Imported lazily: s3fs is only needed for s3:// paths."""
    if not is_s3(path):
        return fsspec.filesystem("file")
    import s3fs

    s3 = s3 or S3Config()
    client_kwargs = {}
    if s3.endpoint_url:
        client_kwargs["endpoint_url"] = s3.endpoint_url
    if s3.region:
        client_kwargs["region_name"] = s3.region
    # Fresh instance per call site (no cross-process cache surprises after fork); retries for flaky networks.
    return s3fs.S3FileSystem(client_kwargs=client_kwargs, skip_instance_cache=True,
                             config_kwargs={"retries": {"max_attempts": 5, "mode": "standard"}})


def absolute(path: str) -> str:
    """`path` made absolute when local: Ray workers run in directories of their own, not the driver's."""
    return path if is_s3(path) else os.path.abspath(path)


def join(base: str, *parts: str) -> str:
    if is_s3(base):
        return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])
    return str(Path(base, *parts))


def describe_error(path: str, exc: BaseException) -> str:
    """A one-line reason for an I/O failure, without credentials (botocore messages never carry secrets)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, FileNotFoundError):
        return f"{path}: does not exist"
    if isinstance(exc, PermissionError):
        return f"{path}: access denied ({text[:160]})"
    return f"{path}: {text[:200]}"


def exists(path: str, s3: S3Config | None = None) -> bool:
    try:
        return filesystem(path, s3).exists(path)
    except (FileNotFoundError, PermissionError, OSError) as exc:
        raise InputError(describe_error(path, exc)) from None


def list_rasters(specs: list[str] | tuple[str, ...], s3: S3Config | None = None) -> list[str]:
    """Expand files, directories, globs and s3:// prefixes into a sorted list of raster paths."""
    found: list[str] = []
    for spec in specs:
        spec = str(spec)
        fs = filesystem(spec, s3)
        try:
            if any(ch in spec for ch in "*?["):
                matches = fs.glob(spec) if is_s3(spec) else globlib.glob(spec)
                paths = [f"s3://{m}" if is_s3(spec) and not m.startswith("s3://") else m for m in matches]
            elif fs.isdir(spec):
                paths = [p if not is_s3(spec) or p.startswith("s3://") else f"s3://{p}" for p in fs.find(spec)]
            elif fs.exists(spec):
                paths = [spec]
            else:
                raise InputError(f"{spec}: does not exist")
        except (PermissionError, OSError) as exc:
            raise InputError(describe_error(spec, exc)) from None
        rasters = sorted(p for p in paths if p.lower().endswith(RASTER_SUFFIXES))
        if not rasters:
            raise InputError(f"{spec}: no raster files (expected {', '.join(RASTER_SUFFIXES)})")
        found.extend(rasters)
    return list(dict.fromkeys(found))


def write_bytes(path: str, data: bytes, s3: S3Config | None = None) -> None:
    """Write `data` to `path` atomically."""
    if is_s3(path):
        filesystem(path, s3).pipe_file(path, data)
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:  # e.g. a full disk: leave no half-written temporary file behind
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def publish_file(local_file: str, path: str, s3: S3Config | None = None) -> None:
    """Move a finished local file to `path` (local rename, or one S3 upload then delete)."""
    if is_s3(path):
        filesystem(path, s3).put_file(local_file, path)
        os.remove(local_file)
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(local_file, path)
    except OSError:  # another device: copy next to the target, then rename there
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            shutil.copyfile(local_file, tmp)
            os.replace(tmp, path)
        except BaseException:  # e.g. a full disk: no half-copied temporary file is left behind
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
        os.remove(local_file)
