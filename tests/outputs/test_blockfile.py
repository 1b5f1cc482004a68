"""outputs.blockfile: one block's results round-trip through one atomically written file."""
import numpy as np

from segcore.outputs.blockfile import BlockResult, load_block, save_block
from tests.helpers import blobs


def test_block_files_round_trip_with_and_without_optional_parts(tmp_path):
    mask = blobs(30, 40, seed=0)
    path = str(tmp_path / "work" / "block_000003.npz")
    save_block(path, BlockResult(mask, 12, 3))
    data = load_block(path)
    assert np.array_equal(data.mask, mask) and data.probability is None and data.thumbnail is None
    assert (data.tiles_computed, data.tiles_skipped, data.vectors) == (12, 3, None)
    assert [p.name for p in (tmp_path / "work").iterdir()] == ["block_000003.npz"]  # no temporary file left
    probability = np.arange(1200, dtype=np.uint8).reshape(30, 40)
    thumbnail = np.full((3, 3, 4), 7, np.uint8)
    save_block(path, BlockResult(mask, 1, 0, probability, thumbnail, b"vector bytes"))
    data = load_block(path)
    assert np.array_equal(data.probability, probability) and np.array_equal(data.thumbnail, thumbnail)
    assert data.vectors == b"vector bytes"
