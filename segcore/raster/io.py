"""Open rasters (local, s3:// or http(s)://), check they are usable imagery, read windows as 8-bit RGB.

Every image, whatever its dtype, becomes uint8 RGB through `to_uint8` before anything else sees it:
patches for training are stored that way, and inference sends those bytes to the device, where the
model input is `uint8 / 255` in both cases. One rule, one place, so training and inference agree.

Which pixels are valid is GDAL's mask (nodata values, alpha bands, internal or `.msk` mask bands), unless
`input.nodata` names the nodata value, which then decides alone.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import RasterioIOError
from rasterio.rpc import RPC
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from segcore.config import HTTPConfig, InputConfig, S3Config
from segcore.errors import InputError
from segcore.storage import (
    ca_bundle,
    describe_error,
    display_url,
    filesystem,
    is_http,
    is_s3,
)


@dataclass(frozen=True)
class RasterInfo:
    """What the pipelines need to know about a raster, as plain picklable data."""

    path: str
    width: int
    height: int
    count: int
    dtype: str
    crs: str | None  # WKT, or None for a raster with no geotransform-based georeference
    transform: tuple  # affine coefficients (a, b, c, d, e, f); the identity when there is no geotransform
    nodata: float | None
    # Ground control points (row, col, x, y, z, id, info), in `gcp_crs` (WKT): a scene georeferenced by GCPs.
    gcps: tuple[tuple[float, float, float, float, float, str, str], ...] = ()
    gcp_crs: str | None = None
    rpcs: dict[str, Any] | None = field(default=None, hash=False)  # rational polynomial coefficients

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None


def gdal_http_options(http: HTTPConfig) -> dict[str, Any]:
    """GDAL settings for reading http(s):// rasters with range requests (/vsicurl/)."""
    options: dict[str, Any] = dict(GDAL_HTTP_TIMEOUT=http.timeout_s, GDAL_HTTP_MAX_RETRY=http.max_retries,
                                   GDAL_HTTP_RETRY_DELAY=http.retry_delay_s,
                                   # A COG is one file: no directory listing, no probing for sidecar files.
                                   GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR")
    if ca_bundle():
        options["GDAL_CURL_CA_BUNDLE"] = ca_bundle()
    return options


def _reason(exc: BaseException) -> str:
    """GDAL's words for a failure, on one line: the first message along rasterio's chain of errors that says
    more than "see previous exception" (a failed read names its cause, e.g. a VRT source, only further in)."""
    chain: BaseException | None = exc
    while chain is not None and "See previous exception" in str(chain):
        chain = chain.__cause__ or chain.__context__
    return " ".join(str(chain if chain is not None else exc).split())


def _http_problem(url: str, reason: str, http: HTTPConfig) -> str:
    if "HTTP response code: 404" in reason:
        return f"{url}: does not exist (HTTP 404)"
    if "Range downloading not supported" in reason:
        return (f"{url}: the server does not support HTTP range requests, which reading a remote raster needs "
                "(serve it from one that does, or download the file)")
    if "timed out" in reason:
        return f"{url}: timed out after {http.timeout_s:g} s (http.timeout_s)"
    if "SSL certificate problem" in reason:
        return f"{url}: {reason[:160]} (for a private CA, set CURL_CA_BUNDLE to a file that trusts it)"
    return f"{url}: could not be read over HTTP ({reason[:160]})"


def open_raster(path: str, s3: S3Config | None = None, http: HTTPConfig | None = None):
    """Open a raster for reading; failures become one-line `InputError`s naming the file.

    URLs are read with range requests; the timeouts and retries in effect when a raster is opened stay
    with it for all its reads (GDAL takes them when it opens the file).
    """
    http = http or HTTPConfig()
    try:
        if is_s3(path):
            return rasterio.open(path, opener=filesystem(path, s3))
        if is_http(path):
            with rasterio.Env(**gdal_http_options(http)):
                return rasterio.open(path)
        return rasterio.open(path)
    except RasterioIOError as exc:
        reason = _reason(exc)
        if is_http(path):
            raise InputError(_http_problem(display_url(path), reason, http)) from None
        if "No such file" in reason or "does not exist" in reason:
            if not is_s3(path) and os.path.exists(path):  # a file it refers to is missing (a VRT's source)
                raise InputError(f"{path}: a file it refers to does not exist ({reason[:200]})") from None
            raise InputError(f"{path}: does not exist") from None
        if "Opener failed" in reason:  # the storage failed (e.g. S3 unreachable), not the file
            raise InputError(f"{path}: could not be read from storage ({reason[:200]})") from None
        raise InputError(f"{path}: not a readable raster ({reason[:160]})") from None
    except (OSError, PermissionError) as exc:
        raise InputError(describe_error(path, exc)) from None


def raster_info(dataset, path: str) -> RasterInfo:
    crs = dataset.crs.to_wkt() if dataset.crs else None
    transform = tuple(dataset.transform)[:6]
    points, gcp_crs = dataset.gcps
    gcps = tuple((p.row, p.col, p.x, p.y, p.z or 0.0, p.id or "", p.info or "") for p in points)
    return RasterInfo(path, dataset.width, dataset.height, dataset.count, dataset.dtypes[0], crs,
                      transform, dataset.nodata, gcps, gcp_crs.to_wkt() if gcp_crs else None,
                      dataset.rpcs.to_dict() if dataset.rpcs else None)


def resampled_view(dataset, width: int, height: int, resampling: Resampling):
    """`dataset` seen on a width x height grid over the same ground (GDAL's warper), as a dataset. Masked
    pixels stay masked: through the nodata value, or an alpha band when the raster's mask is another kind."""
    transform = dataset.transform * Affine.scale(dataset.width / width, dataset.height / height)
    flags = dataset.mask_flag_enums  # an alpha band comes along as the view's own alpha band
    mask_band = not any(MaskFlags.alpha in f for f in flags) and \
        any(MaskFlags.all_valid not in f and MaskFlags.nodata not in f for f in flags)
    return WarpedVRT(dataset, crs=dataset.crs, transform=transform, width=width, height=height,
                     resampling=resampling, add_alpha=mask_band)


def write_ground_control(dataset, info: RasterInfo) -> None:
    """Put `info`'s GCPs (with their CRS) and RPCs on `dataset`, open for writing: an output on the input's grid."""
    if info.gcps:
        dataset.gcps = ([GroundControlPoint(*point) for point in info.gcps],
                        CRS.from_wkt(info.gcp_crs) if info.gcp_crs else None)
    if info.rpcs:
        dataset.rpcs = RPC(**info.rpcs)


def inspect_raster(path: str, s3: S3Config | None = None, http: HTTPConfig | None = None) -> RasterInfo:
    with open_raster(path, s3, http) as dataset:
        return raster_info(dataset, path)


def check_imagery(info: RasterInfo, input_cfg: InputConfig) -> None:
    """Raise an InputError if this raster cannot be turned into RGB model input with this config."""
    needed = max(input_cfg.bands)
    if info.count < needed:
        raise InputError(f"{info.path}: has {info.count} band(s); input.bands {input_cfg.bands} needs at least {needed}"
                         " (RGB imagery expected)")
    if info.dtype != "uint8" and input_cfg.scale_max is None:
        raise InputError(f"{info.path}: {info.dtype} imagery needs a scaling rule: set input.scale_max "
                         "(the pixel value that maps to full brightness, e.g. 4095 or 65535)")


def to_uint8(array: np.ndarray, scale_max: float | None) -> np.ndarray:
    """Scale pixel values so that `scale_max` maps to 255 (uint8 with no scale_max passes unchanged)."""
    if scale_max is None:
        if array.dtype != np.uint8:
            raise InputError(f"{array.dtype} imagery needs input.scale_max")
        return array
    scaled = np.rint(array.astype(np.float32) * np.float32(255.0 / scale_max))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _read_failure(dataset, what: str, exc: RasterioIOError) -> InputError:
    name = display_url(dataset.name.removeprefix("/vsicurl/")) if "/vsicurl/" in dataset.name else dataset.name
    return InputError(f"{name}: {what} ({_reason(exc)[:200]})")


def read_rgb(dataset, window: Window, input_cfg: InputConfig, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Read `window` (which may extend past the raster's edges) as (uint8 [3, h, w], valid bool [h, w]).

    Valid pixels are those GDAL's mask of any selected band marks valid, or with `input.nodata` set, those
    whose selected bands do not all equal it. Invalid pixels, and pixels outside the raster, are 0.
    `scale` resamples as GDAL reads (bilinear; the mask nearest): h and w are the window's times `scale`.
    """
    height, width = round(int(window.height) * scale), round(int(window.width) * scale)
    row0, col0 = int(window.row_off), int(window.col_off)
    r0, c0 = max(row0, 0), max(col0, 0)
    r1, c1 = min(row0 + int(window.height), dataset.height), min(col0 + int(window.width), dataset.width)
    if r1 <= r0 or c1 <= c0:
        return np.zeros((3, height, width), np.uint8), np.zeros((height, width), bool)
    inner = Window(c0, r0, c1 - c0, r1 - r0)
    # Where the raster's part of the window lands in the output; rounding keeps both ends on the same grid.
    out = (slice(None), slice(round((r0 - row0) * scale), round((r1 - row0) * scale)),
           slice(round((c0 - col0) * scale), round((c1 - col0) * scale)))
    shape = (len(input_cfg.bands), out[1].stop - out[1].start, out[2].stop - out[2].start)
    resampled = {} if scale == 1 else {"out_shape": shape, "resampling": Resampling.bilinear}
    nodata = input_cfg.nodata
    # Most mosaics have no nodata, alpha or mask band: every pixel is valid, and GDAL's mask need not be read.
    all_valid = nodata is None and all(MaskFlags.all_valid in dataset.mask_flag_enums[band - 1]
                                       for band in input_cfg.bands)
    try:
        raw = dataset.read(input_cfg.bands, window=inner, **resampled)
        if nodata is None and not all_valid:
            masks = dataset.read_masks(input_cfg.bands, window=inner, **({} if scale == 1 else {"out_shape": shape}))
            inside = np.bitwise_or.reduce(masks, axis=0) > 0
    except RasterioIOError as exc:
        raise _read_failure(dataset, f"read failed at window {inner}", exc) from None
    if all_valid:
        inside = np.ones(shape[1:], bool)
    elif nodata is not None:
        inside = ~np.all(np.isnan(raw), axis=0) if np.isnan(nodata) else \
            ~np.all(raw == np.asarray(nodata, raw.dtype), axis=0)
    pixels = to_uint8(np.nan_to_num(raw) if raw.dtype.kind == "f" else raw, input_cfg.scale_max)
    if not all_valid:
        pixels *= inside
    if shape[1:] == (height, width):  # the window lies inside the raster: no copy into a zero canvas
        return pixels, inside
    rgb = np.zeros((3, height, width), np.uint8)
    valid = np.zeros((height, width), bool)
    rgb[out] = pixels
    valid[out[1:]] = inside
    return rgb, valid


def check_readable(dataset, path: str) -> None:
    """Read the last pixel of every band, so a truncated file fails up front rather than mid-job.

    A VRT is checked first for local sources that do not exist (whichever part of the mosaic they cover).
    """
    if dataset.driver == "VRT":
        for source in dataset.files[1:]:
            if not source.startswith("/vsi") and "://" not in source and not os.path.exists(source):
                raise InputError(f"{path}: VRT source {source} does not exist")
    corner = Window(dataset.width - 1, dataset.height - 1, 1, 1)
    try:
        dataset.read(window=corner)
    except RasterioIOError as exc:
        if dataset.driver == "VRT":
            raise InputError(f"{path}: a VRT source could not be read ({_reason(exc)[:200]})") from None
        raise InputError(f"{path}: truncated or corrupt raster (reading its last pixels failed)") from None
