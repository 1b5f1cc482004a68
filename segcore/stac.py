"""STAC JSON as an input spec: an Item, an ItemCollection, or a static Catalog/Collection, read with pystac.

`resolve_stac` turns one such spec into the rasters it stands for: for each Item, the href of its asset
`stac.asset` (relative hrefs resolved against the Item's own location), filtered by `stac.bbox` and
`stac.datetime` when the spec holds many Items. An Item without a usable raster does not fail the spec:
it comes back as a `StacFailure` with a one-line reason, so that the caller fails that input alone.
Every file is read through `segcore.storage` (local, s3:// with the `s3` section, http(s):// with the
`http` section's timeouts and retries).
"""
from __future__ import annotations

import datetime
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pystac
from pystac.utils import make_absolute_href

from segcore.config import HTTPConfig, S3Config, StacConfig, datetime_interval
from segcore.errors import InputError
from segcore.storage import (
    RASTER_SUFFIXES,
    absolute,
    display_url,
    is_http,
    read_bytes,
    write_bytes,
)

# Media types of GeoTIFFs and COGs ("image/tiff; application=geotiff; profile=cloud-optimized" and its kin).
RASTER_MEDIA_TYPES = ("image/tiff", "image/vnd.stac.geotiff")


@dataclass(frozen=True)
class StacRaster:
    item_id: str
    href: str  # absolute: a local path, s3:// or http(s)://


@dataclass(frozen=True)
class StacFailure:
    item_id: str
    reason: str  # one line naming the spec and the Item


def is_stac(spec: str) -> bool:
    """Whether an input spec names STAC JSON rather than rasters (a `.json` file, local or remote)."""
    path = urlsplit(spec).path if is_http(spec) else spec
    return PurePosixPath(path).suffix.lower() == ".json"


class StorageStacIO(pystac.StacIO):
    """pystac's reads and writes through segcore.storage, so s3:// and http(s):// work as everywhere else."""

    def __init__(self, s3: S3Config | None = None, http: HTTPConfig | None = None):
        super().__init__()
        self.s3, self.http = s3, http

    def read_text(self, source: Any, *args: Any, **kwargs: Any) -> str:
        href = os.fspath(source)  # a path, a URL, or a pystac Link
        try:
            return read_bytes(href, self.s3, self.http).decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{_shown(href)}: not UTF-8 text (STAC JSON expected)") from None

    def read_json(self, source: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        text = self.read_text(source)
        try:
            data = self.json_loads(text)
        except ValueError as exc:
            raise InputError(f"{_shown(os.fspath(source))}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise InputError(f"{_shown(os.fspath(source))}: JSON {type(data).__name__}, not a STAC object")
        return data

    def write_text(self, dest: Any, txt: str, *args: Any, **kwargs: Any) -> None:
        write_bytes(os.fspath(dest), txt.encode("utf-8"), self.s3)


def _shown(href: str) -> str:
    return display_url(href) if is_http(href) else href


def _items(href: str, stac_io: StorageStacIO) -> tuple[Iterable[pystac.Item], bool]:
    """The Items of the STAC JSON at `href`, and whether it is a collection of them (filters apply) or one Item."""
    data = stac_io.read_json(href)
    if pystac.ItemCollection.is_item_collection(data):
        return pystac.ItemCollection.from_dict(data, preserve_dict=False).items, True
    stac_object = stac_io.stac_object_from_dict(data, href=href, preserve_dict=False)
    if isinstance(stac_object, pystac.Item):
        return [stac_object], False
    if isinstance(stac_object, pystac.Catalog):  # a Collection is a Catalog too
        return stac_object.get_items(recursive=True), True
    raise InputError(f"{_shown(href)}: a STAC {type(stac_object).__name__}, not an Item, ItemCollection or Catalog")


def _utc(moment: datetime.datetime | None) -> datetime.datetime | None:
    return moment.replace(tzinfo=datetime.timezone.utc) if moment and moment.tzinfo is None else moment


def _selected(item: pystac.Item, stac: StacConfig) -> bool:
    """Whether `item` meets stac.bbox and stac.datetime (an Item without a bbox or a time meets neither)."""
    if stac.bbox is not None:
        if not item.bbox:
            return False
        half = len(item.bbox) // 2  # [w, s, e, n] or, in 3D, [w, s, low, e, n, high]
        west, south, east, north = item.bbox[0], item.bbox[1], item.bbox[half], item.bbox[half + 1]
        if east < stac.bbox[0] or west > stac.bbox[2] or north < stac.bbox[1] or south > stac.bbox[3]:
            return False
    if stac.datetime is not None:
        start, end = datetime_interval(stac.datetime)
        first = _utc(item.common_metadata.start_datetime or item.datetime)
        last = _utc(item.common_metadata.end_datetime or item.datetime)
        if first is None or last is None or (end is not None and first > end) or (start is not None and last < start):
            return False
    return True


def _raster(item: pystac.Item, spec: str, asset_key: str) -> StacRaster | StacFailure:
    asset = item.assets.get(asset_key)
    where = f"{_shown(spec)}: item '{item.id}'"
    if asset is None:
        keys = ", ".join(sorted(item.assets)) or "none"
        return StacFailure(item.id, f"{where} has no asset '{asset_key}' (its assets: {keys}); set stac.asset")
    # Items of an ItemCollection have no location of their own: theirs is the file's.
    href = make_absolute_href(asset.href, item.get_self_href() or absolute(spec))
    suffix = PurePosixPath(urlsplit(href).path if is_http(href) else href).suffix.lower()
    media = (asset.media_type or "").lower()
    if media and not media.startswith(RASTER_MEDIA_TYPES):
        return StacFailure(item.id, f"{where}: asset '{asset_key}' has media type '{asset.media_type}', "
                           "not a GeoTIFF/COG raster")
    if not media and suffix not in RASTER_SUFFIXES:
        return StacFailure(item.id, f"{where}: asset '{asset_key}' has no media type and is not a "
                           f"{'/'.join(RASTER_SUFFIXES)} file ({_shown(href)})")
    return StacRaster(item.id, href)


def resolve_stac(spec: str, stac: StacConfig | None = None, s3: S3Config | None = None,
                 http: HTTPConfig | None = None) -> list[StacRaster | StacFailure]:
    """The rasters (and the Items without one) that the STAC JSON at `spec` stands for, in catalog order.

    A spec that cannot be read or is not STAC, or whose Items are all filtered out, raises an InputError.
    """
    stac = stac or StacConfig()
    try:
        items, many = _items(absolute(spec), StorageStacIO(s3, http))
        found = list(items)  # a catalog's Items are read here, as it is walked
    except InputError:  # a file that cannot be read: its own one line already
        raise
    except (pystac.STACError, pystac.STACTypeError, KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{_shown(spec)}: not a valid STAC Item, ItemCollection or Catalog "
                         f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]})") from None
    if not found:
        raise InputError(f"{_shown(spec)}: holds no STAC Items")
    selected = [item for item in found if not many or _selected(item, stac)]
    if not selected:
        filters = " and ".join(f"stac.{name} {value!r}" for name, value in
                               (("bbox", stac.bbox), ("datetime", stac.datetime)) if value is not None)
        raise InputError(f"{_shown(spec)}: none of its {len(found)} Items meets {filters}")
    return [_raster(item, spec, stac.asset) for item in selected]
