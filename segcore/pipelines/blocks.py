"""The segment pipeline's CPU stages, around the inference actors: reading blocks, and writing their files.
Imports neither torch nor the model, so their worker processes start in about 2 s (torchvision alone pulls
in torch._dynamo) instead of competing with the inference actors' start for the same cores.

A dataset row describes one block: its input, its `Block` fields as plain columns, its block file, and the
preview scale. Each stage adds to the row; a failure becomes the row's `error` and the later stages pass the
row on untouched, so one input's failure never stops the others.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from segcore.config import HTTPConfig, InputConfig, S3Config
from segcore.errors import InputError
from segcore.outputs.blockfile import BlockResult, save_block
from segcore.outputs.preview import thumbnail
from segcore.raster.grid import Block
from segcore.raster.io import open_raster, read_rgb
from segcore.storage import describe_error

BLOCK_FIELDS = tuple(f.name for f in dataclasses.fields(Block))


def block_of(row: dict) -> Block:
    """The Block a dataset row describes (rows carry the Block's fields as plain columns)."""
    return Block(**{name: int(row[name]) for name in BLOCK_FIELDS})


def _failure(row: dict, exc: Exception, writing: bool) -> str:
    if isinstance(exc, InputError):
        return str(exc)
    if writing:
        return f"{row['path']}: block {row['index']}: {describe_error(str(row['dest']), exc)}"
    return describe_error(str(row["path"]), exc)


class BlockReader:
    """Ray Data actor: one block's read window as uint8 RGB and a valid mask, plus the thumbnail of its core for
    the preview. A long-lived actor rather than a task per block: Ray ends idle task workers within about a
    second, and a fresh worker spends seconds of CPU importing Ray Data and rasterio."""

    def __init__(self, input_cfg: InputConfig, s3: S3Config, http: HTTPConfig):
        self.input_cfg, self.s3, self.http = input_cfg, s3, http

    def __call__(self, row: dict) -> dict:
        started = time.process_time()
        rgb, valid, small = np.zeros((3, 0, 0), np.uint8), np.zeros((0, 0), bool), np.zeros((3, 0, 0), np.uint8)
        seen, seen_valid = rgb, valid  # what the model gets: resampled to the target ground resolution, if asked
        error, read_s, scale = "", 0.0, float(row["gsd_scale"])
        try:
            block = block_of(row)
            with open_raster(row["path"], self.s3, self.http) as dataset:
                rgb, valid = read_rgb(dataset, block.read_window, self.input_cfg)
                if scale != 1:
                    seen, seen_valid = read_rgb(dataset, block.read_window, self.input_cfg, scale)
            read_s = time.process_time() - started
            if float(row["preview_scale"]):
                small = thumbnail(block.crop(rgb), block, float(row["preview_scale"]))
        except Exception as exc:
            error = _failure(row, exc, writing=False)
        if scale == 1:  # the input grid's valid mask only travels when the model sees another grid
            seen, seen_valid, valid = rgb, valid, np.zeros((0, 0), bool)
        return dict(row, rgb=seen, valid=seen_valid, valid_native=valid, thumbnail=small, error=error,
                    cpu_read=read_s, cpu_thumbnail=time.process_time() - started - read_s)


class BlockWriter:
    """Ray Data actor: one block's results into its block file, with its building vectors when footprints are
    written (polygonized here, in parallel, rather than in the mosaic's assembly)."""

    def __init__(self, s3: S3Config, keep_probability: bool, polygons: bool):
        self.s3, self.keep_probability, self.polygons = s3, keep_probability, polygons

    def __call__(self, row: dict) -> dict:
        started = time.process_time()
        out = {name: value for name, value in row.items() if name not in ("mask", "probability", "thumbnail")}
        polygons_s = 0.0
        if row["error"]:
            return dict(out, cpu_polygonize=0.0, cpu_write_block=0.0)
        try:
            block, mask = block_of(row), row["mask"]
            probability: np.ndarray | None = row["probability"] if row["probability"].size else None
            vectors = None
            if self.polygons:
                from segcore.vectors.polygonize import polygonize_block

                vectors = polygonize_block(mask, probability, block, int(row["mosaic_width"]),
                                           int(row["mosaic_height"])).to_bytes()
                polygons_s = time.process_time() - started
            result = BlockResult(mask, int(row["tiles"]), int(row["skipped"]),
                                 probability if self.keep_probability else None,
                                 row["thumbnail"] if row["thumbnail"].size else None, vectors)
            save_block(str(row["dest"]), result, self.s3)
        except Exception as exc:
            out["error"] = _failure(row, exc, writing=True)
        return dict(out, cpu_polygonize=polygons_s, cpu_write_block=time.process_time() - started - polygons_s)
