"""The segment pipeline's block rows and their CPU reader. Imports neither torch nor the model.

The readers run in their own Ray worker processes; keeping this module free of torch (and torchvision,
which pulls in torch._dynamo: about 6 s of imports on a 2-core machine) lets those processes start in
about 2 s instead of competing with the inference actors' start for the same cores.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from segcore.config import InputConfig, S3Config
from segcore.errors import InputError
from segcore.raster.grid import Block
from segcore.raster.io import open_raster, read_rgb
from segcore.storage import describe_error

BLOCK_FIELDS = tuple(f.name for f in dataclasses.fields(Block))


def block_of(row: dict) -> Block:
    """The Block a dataset row describes (rows carry the Block's fields as plain columns)."""
    return Block(**{name: int(row[name]) for name in BLOCK_FIELDS})


def read_block(row: dict, input_cfg: InputConfig, s3: S3Config) -> dict:
    """Ray Data map: read one block's window as uint8 RGB + valid mask; a failure becomes the row's error."""
    try:
        with open_raster(row["path"], s3) as dataset:
            rgb, valid = read_rgb(dataset, block_of(row).read_window, input_cfg)
        return dict(row, rgb=rgb, valid=valid, error="")
    except Exception as exc:  # noqa: BLE001 - any failure of one input's read must not stop the others
        message = str(exc) if isinstance(exc, InputError) else describe_error(row["path"], exc)
        return dict(row, rgb=np.zeros((3, 0, 0), np.uint8), valid=np.zeros((0, 0), bool), error=message)


class BlockReader:
    """Ray Data actor around `read_block`. A long-lived reader rather than one task per block: Ray ends
    idle task workers within about a second, and reads come one per inference block (seconds apart), so
    each read task started a fresh worker process (about 3 s of CPU to import Ray Data and rasterio),
    which on a 16384^2 mosaic took a fifth of the CPU from inference."""

    def __init__(self, input_cfg: InputConfig, s3: S3Config):
        self.input_cfg, self.s3 = input_cfg, s3

    def __call__(self, row: dict) -> dict:
        return read_block(row, self.input_cfg, self.s3)
