"""Open rasters (local or s3://), check they are usable imagery, read windows as 8-bit RGB.

Every image, whatever its dtype, becomes uint8 RGB through `to_uint8` before anything else sees it:
patches for training are stored that way, and inference sends those bytes to the device, where the
model input is `uint8 / 255` in both cases. One rule, one place, so training and inference agree.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from segcore.config import InputConfig, S3Config
from segcore.errors import InputError
from segcore.storage import describe_error, filesystem, is_s3


@dataclass(frozen=True)
class RasterInfo:
    """What the pipelines need to know about a raster, as plain picklable data."""

    path: str
    width: int
    height: int
    count: int
    dtype: str
    crs: Optional[str]  # WKT, or None for a raster with no georeference
    transform: tuple  # affine coefficients (a, b, c, d, e, f)
    nodata: Optional[float]

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None


def open_raster(path: str, s3: S3Config | None = None):
    """Open a raster for reading; failures become one-line `InputError`s naming the file."""
    try:
        if is_s3(path):
            return rasterio.open(path, opener=filesystem(path, s3))
        return rasterio.open(path)
    except RasterioIOError as exc:
        reason = " ".join(str(exc).split())
        if "No such file" in reason or "does not exist" in reason:
            raise InputError(f"{path}: does not exist") from None
        if "Opener failed" in reason:  # the storage failed (e.g. S3 unreachable), not the file
            raise InputError(f"{path}: could not be read from storage ({reason[:200]})") from None
        raise InputError(f"{path}: not a readable raster ({reason[:160]})") from None
    except (OSError, PermissionError) as exc:
        raise InputError(describe_error(path, exc)) from None


def raster_info(dataset, path: str) -> RasterInfo:
    crs = dataset.crs.to_wkt() if dataset.crs else None
    transform = tuple(dataset.transform)[:6]
    return RasterInfo(path, dataset.width, dataset.height, dataset.count, dataset.dtypes[0], crs,
                      transform, dataset.nodata)


def inspect_raster(path: str, s3: S3Config | None = None) -> RasterInfo:
    with open_raster(path, s3) as dataset:
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


def nodata_value(info: RasterInfo, input_cfg: InputConfig) -> Optional[float]:
    return input_cfg.nodata if input_cfg.nodata is not None else info.nodata


def to_uint8(array: np.ndarray, scale_max: Optional[float]) -> np.ndarray:
    """Scale pixel values so that `scale_max` maps to 255 (uint8 with no scale_max passes unchanged)."""
    if scale_max is None:
        if array.dtype != np.uint8:
            raise InputError(f"{array.dtype} imagery needs input.scale_max")
        return array
    scaled = np.rint(array.astype(np.float32) * np.float32(255.0 / scale_max))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def read_rgb(dataset, window: Window, input_cfg: InputConfig, nodata: Optional[float]) -> tuple[np.ndarray, np.ndarray]:
    """Read `window` (which may extend past the raster's edges) as (uint8 [3, h, w], valid bool [h, w]).

    Pixels outside the raster, and pixels whose selected bands all equal nodata, are not valid and are 0.
    """
    height, width = int(window.height), int(window.width)
    rgb = np.zeros((3, height, width), np.uint8)
    valid = np.zeros((height, width), bool)
    row0, col0 = int(window.row_off), int(window.col_off)
    r0, c0 = max(row0, 0), max(col0, 0)
    r1, c1 = min(row0 + height, dataset.height), min(col0 + width, dataset.width)
    if r1 <= r0 or c1 <= c0:
        return rgb, valid
    inner = Window(c0, r0, c1 - c0, r1 - r0)
    try:
        raw = dataset.read(input_cfg.bands, window=inner)
    except RasterioIOError as exc:
        raise InputError(f"{dataset.name}: read failed at window {inner} ({' '.join(str(exc).split())[:160]})") from None
    inside = np.ones(raw.shape[1:], bool)
    if nodata is not None:
        inside = ~np.all(raw == np.asarray(nodata, raw.dtype), axis=0) if not np.isnan(nodata) else \
            ~np.all(np.isnan(raw), axis=0)
    out = (slice(None), slice(r0 - row0, r1 - row0), slice(c0 - col0, c1 - col0))
    rgb[out] = to_uint8(np.nan_to_num(raw) if raw.dtype.kind == "f" else raw, input_cfg.scale_max)
    rgb[out] *= inside
    valid[out[1:]] = inside
    return rgb, valid


def check_readable(dataset, path: str) -> None:
    """Read the last pixel of every band, so a truncated file fails up front rather than mid-job."""
    corner = Window(dataset.width - 1, dataset.height - 1, 1, 1)
    try:
        dataset.read(window=corner)
    except RasterioIOError:
        raise InputError(f"{path}: truncated or corrupt raster (reading its last pixels failed)") from None
