"""Local, s3:// and http(s):// paths behind one small API, with atomic writes.

A path is a plain string: `s3://bucket/key` goes through s3fs (endpoint and region from the config's
`s3` section; credentials only from the standard AWS environment or profile, never from config files, or
none at all with `s3.anonymous`), `http(s)://` URLs are read-only (fsspec over aiohttp, timeouts and retries
from the `http` section), anything else is the local disk. Writes go to a temporary name and are renamed
into place (local), or uploaded in one PUT (S3, where an object only appears once complete), so a reader
never sees half a file.
"""
from __future__ import annotations

import asyncio
import contextlib
import glob as globlib
import os
import shutil
import ssl
import time
import uuid
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import fsspec

from segcore.config import HTTPConfig, S3Config
from segcore.errors import InputError

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt")


def is_s3(path: str) -> bool:
    return str(path).startswith("s3://")


def is_http(path: str) -> bool:
    return str(path).startswith(("http://", "https://"))


def is_remote(path: str) -> bool:
    """s3:// or http(s)://: a path every node of a cluster reaches alike."""
    return is_s3(path) or is_http(path)


def display_url(url: str) -> str:
    """A URL for messages: its query string, which may hold a signature or a token, left out."""
    parts = urlsplit(url)
    return parts._replace(query="", fragment="").geturl() + ("?..." if parts.query else "")


def ca_bundle() -> str | None:
    """The CA file that HTTPS should trust instead of the default ones: $CURL_CA_BUNDLE, else $SSL_CERT_FILE.

    Both readers honour it, GDAL (which rasterio's wheels otherwise point at certifi) and Python.
    """
    return os.environ.get("CURL_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE") or None


def filesystem(path: str, s3: S3Config | None = None, http: HTTPConfig | None = None) -> fsspec.AbstractFileSystem:
    """The fsspec filesystem for `path`. Imported lazily: s3fs and aiohttp are only needed for their paths."""
    if is_http(path):
        import aiohttp

        http = http or HTTPConfig()
        return fsspec.filesystem("http", skip_instance_cache=True, ssl=ssl.create_default_context(cafile=ca_bundle()),
                                 client_kwargs={"timeout": aiohttp.ClientTimeout(total=http.timeout_s)})
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
    return s3fs.S3FileSystem(client_kwargs=client_kwargs, skip_instance_cache=True, anon=s3.anonymous,
                             config_kwargs={"retries": {"max_attempts": s3.max_attempts, "mode": "standard"}})


def absolute(path: str) -> str:
    """`path` as Ray workers and relative links need it: a local path made absolute; s3:// and http(s):// as is."""
    return path if is_remote(path) else os.path.abspath(path)


def join(base: str, *parts: str) -> str:
    if is_remote(base):
        return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])
    return str(Path(base, *parts))


def _http_failure(url: str, exc: BaseException, http: HTTPConfig) -> tuple[bool, str]:
    """(whether a retry may help, as GDAL_HTTP_MAX_RETRY retries 429, 5xx and network errors; a one-line reason)."""
    import aiohttp

    url = display_url(url)
    if isinstance(exc, aiohttp.ClientResponseError):
        return exc.status == 429 or exc.status >= 500, f"{url}: HTTP {exc.status} {exc.message}".rstrip()
    if isinstance(exc, aiohttp.ClientSSLError):
        return False, (f"{url}: TLS failed ({' '.join(str(exc).split())[:160]}); for a private CA, "
                       "set CURL_CA_BUNDLE to a file that trusts it")
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return True, f"{url}: timed out after {http.timeout_s:g} s (http.timeout_s)"
    return isinstance(exc, aiohttp.ClientConnectionError), describe_error(url, exc)


def read_bytes(path: str, s3: S3Config | None = None, http: HTTPConfig | None = None) -> bytes:
    """The whole file at `path`; failures are one-line `InputError`s naming it. HTTP reads retry as configured."""
    http = http or HTTPConfig()
    attempt = 0
    while True:
        try:
            return filesystem(path, s3, http).cat_file(path)
        except (FileNotFoundError, PermissionError) as exc:
            raise InputError(describe_error(display_url(path) if is_http(path) else path, exc)) from None
        except Exception as exc:
            if not is_http(path):
                if isinstance(exc, OSError):
                    raise InputError(describe_error(path, exc)) from None
                if type(exc).__name__ == "NoCredentialsError":  # botocore's, imported only with s3fs
                    raise InputError(f"{path}: no AWS credentials found (for a public bucket, set "
                                     "s3.anonymous=true)") from None
                raise
            retry, reason = _http_failure(path, exc, http)
            if not retry or attempt >= http.max_retries:
                raise InputError(reason) from None
        time.sleep(http.retry_delay_s * 2 ** attempt)
        attempt += 1


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


def _full(path: str, base: str) -> str:
    """fsspec lists s3:// paths without their scheme: put it back."""
    return f"s3://{path}" if is_s3(base) and not path.startswith("s3://") else path


def list_dir(folder: str, s3: S3Config | None = None) -> list[str]:
    """The paths directly in `folder` (local or s3://)."""
    return [_full(entry, folder) for entry in filesystem(folder, s3).ls(folder, detail=False)]


def list_rasters(specs: list[str] | tuple[str, ...], s3: S3Config | None = None) -> list[str]:
    """Expand files, directories, globs and s3:// prefixes into a sorted list of raster paths; URLs pass as they are."""
    found: list[str] = []
    for spec in specs:
        spec = str(spec)
        if is_http(spec):  # one URL, one file: HTTP has no directories to list (GDAL checks it on open)
            if PurePosixPath(urlsplit(spec).path).suffix.lower() not in RASTER_SUFFIXES:
                raise InputError(f"{display_url(spec)}: an http(s) input must name one raster file "
                                 f"({', '.join(RASTER_SUFFIXES)})")
            found.append(spec)
            continue
        fs = filesystem(spec, s3)
        try:
            if any(ch in spec for ch in "*?["):
                paths = [_full(match, spec) for match in (fs.glob(spec) if is_s3(spec) else globlib.glob(spec))]
            elif fs.isdir(spec):
                paths = [_full(path, spec) for path in fs.find(spec)]
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
