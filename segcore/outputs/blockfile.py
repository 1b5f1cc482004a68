"""One block's results as one file: the unit of work, retry and resume of segmentation.

A block file holds the block core's uint8 mask (1 building, 0 background, 255 nodata), optionally its uint8
probability (round(p * 255)), its tile counts, optionally a thumbnail of its imagery for the preview and the
raw building vectors of `segcore.vectors.polygonize` (as their own bytes). It is a compressed .npz of plain
arrays, read with `allow_pickle=False`, and it appears under its final name only once complete.
"""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import numpy as np

from segcore.config import S3Config
from segcore.storage import filesystem, write_bytes


def block_file(index: int) -> str:
    return f"block_{index:06d}.npz"


@dataclass
class BlockResult:
    mask: np.ndarray  # uint8 [h, w] of the block's core
    tiles_computed: int
    tiles_skipped: int  # tiles holding nodata only: never sent to the model
    probability: np.ndarray | None = None  # uint8 [h, w]
    thumbnail: np.ndarray | None = None  # uint8 RGB [3, h', w'] of the core at the preview's scale
    vectors: bytes | None = None  # segcore.vectors.polygonize.BlockVectors.to_bytes()


def save_block(path: str, result: BlockResult, s3: S3Config | None = None) -> None:
    """Write one block's results atomically (temporary name + rename locally, one PUT on S3)."""
    arrays = {"mask": result.mask, "tiles": np.array([result.tiles_computed, result.tiles_skipped], np.int64)}
    for name in ("probability", "thumbnail"):
        if getattr(result, name) is not None:
            arrays[name] = getattr(result, name)
    if result.vectors is not None:
        arrays["vectors"] = np.frombuffer(result.vectors, np.uint8)
    write_bytes(path, _npz(arrays), s3)


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz (np.load reads it) deflated at level 3, not np.savez_compressed's 6: block files are scratch,
    read once by the assembly, so CPU matters more than bytes (BENCHMARKS.md, data path)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=3) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def load_block(path: str, s3: S3Config | None = None) -> BlockResult:
    with np.load(io.BytesIO(filesystem(path, s3).cat_file(path)), allow_pickle=False) as data:
        tiles = [int(v) for v in data["tiles"]]
        optional = {name: data[name] if name in data.files else None for name in ("probability", "thumbnail")}
        vectors = data["vectors"].tobytes() if "vectors" in data.files else None
        return BlockResult(data["mask"], tiles[0], tiles[1], vectors=vectors, **optional)
