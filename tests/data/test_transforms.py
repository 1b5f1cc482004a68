"""Training augmentations: seeded per patch, independent per transform."""
from collections import Counter

import numpy as np

from segcore.config import AugmentConfig, S3Config
from segcore.data.patches import PatchReader
from segcore.data.transforms import build_augment, reseed
from tests.inputs import write_patch_set


def _corners(mask: np.ndarray) -> tuple[int, ...]:
    """Which corner a mark drawn in the top-left corner ended up in (none when rotated off the corners)."""
    return tuple(int(mask[rows, cols].all()) for rows in (slice(0, 1), slice(-1, None))
                 for cols in (slice(0, 3), slice(-3, None)))


def test_reseeded_flips_are_drawn_independently():
    """Every flip combination occurs: seeding each transform alike would flip both axes or neither."""
    transform = build_augment(AugmentConfig(rotate_p=0.0))
    image = np.zeros((16, 16, 3), np.uint8)
    mark = np.zeros((16, 16), np.uint8)
    mark[0, :3] = 1
    seen = Counter()
    for seed in range(200):
        reseed(transform, seed)
        seen[_corners(transform(image=image, mask=mark)["mask"])] += 1
    assert set(seen) == {(1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1)}, seen
    assert min(seen.values()) > 25, seen


def test_seeded_patches_augment_alike_in_any_reader_and_batch(tmp_path):
    root = write_patch_set(tmp_path, counts=(("train", 6),))
    images = sorted(str(p) for p in (root / "train" / "images").iterdir())
    labels = sorted(str(p) for p in (root / "train" / "labels").iterdir())
    batch = {"image": np.array(images), "label": np.array(labels), "seed": np.arange(6) * 7919}
    whole = PatchReader(S3Config(), AugmentConfig())(batch)
    halves = [PatchReader(S3Config(), AugmentConfig())({k: v[part] for k, v in batch.items()})
              for part in (slice(3, 6), slice(0, 3))]
    assert np.array_equal(whole["image"], np.concatenate([halves[1]["image"], halves[0]["image"]]))
    assert np.array_equal(whole["label"], np.concatenate([halves[1]["label"], halves[0]["label"]]))
    other = PatchReader(S3Config(), AugmentConfig())(dict(batch, seed=batch["seed"] + 1))
    assert not np.array_equal(whole["image"], other["image"])
