"""outputs.assemble: a mosaic's outputs from its block files, fed as the blocks are written, in any order."""
import json

import numpy as np
import pytest
import rasterio

from segcore.config import load_config
from segcore.outputs.assemble import MosaicAssembly, MosaicOutputs, assemble_mosaic
from segcore.outputs.blockfile import BlockResult, block_file, save_block
from segcore.raster.grid import segment_blocks
from segcore.raster.io import raster_info
from tests.conftest import write_geotiff
from tests.helpers import blobs

WIDTH, HEIGHT, BLOCK, TILE, OVERLAP = 200, 150, 64, 64, 16


@pytest.fixture
def mosaic(tmp_path) -> MosaicOutputs:
    """A 200 x 150 georeferenced raster and the block files of a mask of blobs, cut into 12 blocks."""
    image = write_geotiff(tmp_path / "image.tif", np.zeros((3, HEIGHT, WIDTH), np.uint8))
    with rasterio.open(image) as dataset:
        info = raster_info(dataset, str(image))
    mask = blobs(HEIGHT, WIDTH, seed=1)
    blocks = segment_blocks(WIDTH, HEIGHT, BLOCK, TILE, OVERLAP)
    for block in blocks:
        save_block(str(tmp_path / "work" / block_file(block.index)), BlockResult(block.crop(mask), 4, 0))
    return MosaicOutputs(info, "image", tuple(blocks), str(tmp_path / "work"), str(tmp_path / "out"))


def outputs(folder) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    return dict(mask=(folder / "mask.tif").read_bytes(), buildings=metrics["building_count"],
                tiles=metrics["tiles"])


def test_blocks_fed_out_of_order_wait_for_their_turn_and_give_the_in_order_outputs(mosaic, tmp_path):
    cfg = load_config(None, ["segment.preview_size=0"])
    in_order = assemble_mosaic(mosaic, cfg, dict(key="image"))
    expected = outputs(tmp_path / "out")
    (tmp_path / "out" / "mask.tif").unlink()

    blocks = mosaic.blocks
    assert len(blocks) > 4
    assembly = MosaicAssembly(mosaic, cfg)
    try:
        assembly.add_ready(block.index for block in blocks[1:])  # all but the first: nothing can be added yet
        assert assembly.added == 0
        with pytest.raises(RuntimeError, match="blocks were never added"):
            assembly.publish({})
        assert not (tmp_path / "out" / "mask.tif").exists()  # nothing partial is published
        assembly.add_ready([blocks[0].index])
        assert assembly.added == len(blocks)
        streamed = assembly.publish(dict(key="image"))
    finally:
        assembly.close(failed=False)
    assert outputs(tmp_path / "out") == expected
    assert streamed["building_count"] == in_order["building_count"] > 1
