"""Input specs to the rasters they stand for: files, directories, globs, s3:// prefixes, http(s):// URLs of
single rasters, and STAC JSON (an Item, ItemCollection or static Catalog, local or remote).

Each raster gets a name: its file stem, or its STAC Item's id, which names its outputs (segment's folders,
prepare's patches) and pairs it with labels of the same name. A spec that cannot be read fails as a whole;
a STAC Item without a usable raster fails alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from segcore.config import Config
from segcore.errors import InputError
from segcore.stac import StacFailure, is_stac, resolve_stac
from segcore.storage import absolute, describe_error, is_http, list_rasters


@dataclass(frozen=True)
class Source:
    """One raster of the inputs (or, with `error`, one input that failed)."""

    path: str  # absolute: a local path, s3:// or http(s)://
    name: str  # the file stem, or the STAC Item's id
    error: str | None = None


def stem(path: str) -> str:
    """A raster's file stem; for a URL, that of its path (never its query string)."""
    return PurePosixPath(urlsplit(path).path if is_http(path) else path).stem


def expand(specs: list[str] | tuple[str, ...], cfg: Config, *, fail_alone: bool) -> list[Source]:
    """Every raster the specs stand for, in order, each once.

    `fail_alone`: a spec that cannot be read becomes a failed Source (segment goes on with the others);
    otherwise it raises its InputError (prepare stops).
    """
    sources: dict[str, Source] = {}
    for spec in map(str, specs):
        try:
            if is_stac(spec):
                for found in resolve_stac(spec, cfg.stac, cfg.s3, cfg.http):
                    path = spec if isinstance(found, StacFailure) else absolute(found.href)
                    error = found.reason if isinstance(found, StacFailure) else None
                    if error and not fail_alone:
                        raise InputError(error)
                    sources.setdefault(f"{path}#{found.item_id}" if error else path, Source(path, found.item_id, error))
            else:
                for path in list_rasters([absolute(spec)], cfg.s3):
                    sources.setdefault(path, Source(path, stem(path)))
        except (InputError, OSError) as exc:
            if not fail_alone:
                raise
            message = str(exc) if isinstance(exc, InputError) else describe_error(spec, exc)
            sources.setdefault(spec, Source(spec, stem(spec), message))
    return list(sources.values())
