"""Settings and runners the fault matrix shares: small tiles and blocks, and one tiny checkpoint, keep runs short."""
from __future__ import annotations

from segcore.config import load_config
from segcore.raster.grid import segment_blocks
from tests import helpers

SEG = ("segment.tile_size=64", "segment.overlap=16", "segment.block_size=64", "segment.batch_size=16",
       "segment.preview_size=64")
PREP = ("prepare.tile_size=128", "prepare.split_block=512")
GOOD_BLOCKS = len(segment_blocks(320, 256, 64, 64, 16))  # the 320 x 256 city with the SEG settings
ONE_BLOCK = ("segment.block_size=512",)
MARKER = "faults-pwned-marker"


def seg_config(*overrides: str):
    return load_config(None, [*SEG, *overrides])


def prep_config(*overrides: str):
    return load_config(None, [*PREP, *overrides])


def segment(inputs, out, checkpoint, *overrides: str, labels=()) -> tuple[dict, str]:
    """Plan and run in this process with the SEG settings; the summary and everything printed to stderr."""
    return helpers.segment(inputs, out, checkpoint, seg_config(*overrides), labels=labels)
