"""outputs.components: counting 4-connected buildings block by block gives the whole mask's count."""
import cv2
import numpy as np
import pytest

from segcore.outputs.components import ComponentCounter
from segcore.raster.grid import plan_blocks
from tests.helpers import blobs


@pytest.mark.parametrize("block_size", [37, 64, 100, 1000])
def test_component_count_across_blocks_matches_whole_mask(block_size):
    mask = blobs(300, 260, seed=block_size)
    expected = cv2.connectedComponents((mask == 1).astype(np.uint8), connectivity=4)[0] - 1
    counter = ComponentCounter(260)
    for block in plan_blocks(260, 300, block_size):
        counter.add(mask[block.row:block.row + block.height, block.col:block.col + block.width], block)
    assert counter.count == expected > 20
