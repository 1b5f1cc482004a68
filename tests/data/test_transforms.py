"""Training augmentations: seeded per patch, independent per transform, and each switch of train.augment
does what it says on tiny patches, alone."""
from __future__ import annotations

from collections import Counter

import cv2
import numpy as np
import pytest

from segcore.config import AugmentConfig, ConfigError, S3Config, load_config
from segcore.data.patches import PatchReader, encode_image, encode_label
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

OFF = dict(hflip=0.0, vflip=0.0, rotate_p=0.0)  # the fork's defaults switched off: one transform at a time


def _scene(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A textured image with an off-centre bright 'roof' and its mask: no symmetry hides a transform."""
    rng = np.random.default_rng(0)
    image = rng.integers(40, 120, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), np.uint8)
    mask[4:14, 6:22] = 1
    mask[14:20, 6:10] = 1  # an L shape
    image[mask == 1] = (210, 120, 90)
    return image, mask


def _seeded(cfg: AugmentConfig, seed: int = 0):
    transform = build_augment(cfg)
    reseed(transform, seed)
    return transform


def _apply(seed: int, **switches) -> tuple[np.ndarray, np.ndarray]:
    image, mask = _scene()
    out = _seeded(AugmentConfig(**{**OFF, **switches}), seed)(image=image, mask=mask)
    return out["image"], out["mask"]


def test_everything_off_is_the_identity():
    image, mask = _scene()
    for seed in range(3):
        out_image, out_mask = _apply(seed)
        assert np.array_equal(out_image, image) and np.array_equal(out_mask, mask)


def test_rot90_with_hflip_reaches_the_eight_symmetries_of_the_square_moving_image_and_mask_together():
    image, mask = _scene()
    symmetries = {k * 2 + flip: (np.rot90(f(image), k), np.rot90(f(mask), k))
                  for k in range(4) for flip, f in enumerate((lambda a: a, lambda a: a[:, ::-1]))}
    seen = set()
    for seed in range(60):
        out_image, out_mask = _apply(seed, rot90=1.0, hflip=0.5)
        found = [key for key, (i, m) in symmetries.items() if np.array_equal(out_image, i)]
        assert len(found) == 1, "not a symmetry of the square"
        assert np.array_equal(out_mask, symmetries[found[0]][1]), "mask moved differently from the image"
        seen.add(found[0])
    assert seen == set(symmetries)


def test_scale_zooms_in_and_out_within_the_limit_and_keeps_the_mask_on_the_roof():
    image = np.full((32, 32, 3), 60, np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[12:20, 10:22] = 1  # centred: it stays inside the patch at any zoom of the range
    image[mask == 1] = 220
    transform = _seeded(AugmentConfig(**OFF, scale=1.0, scale_limit=0.25))
    ratios = []
    for _ in range(30):
        out = transform(image=image, mask=mask)
        out_mask = out["mask"][4:28, 4:28]  # inside the content: mirrored borders start nearer the edge
        assert set(np.unique(out_mask)) <= {0, 1}
        assert out["image"][4:28, 4:28][out_mask == 1].mean() > 180  # the labels stay on the roof
        ratios.append(out_mask.sum() / mask.sum())
    areas = np.array(ratios)
    assert areas.min() < 0.9 and areas.max() > 1.1  # in and out
    assert areas.min() > (1 / 1.25) ** 2 * 0.8 and areas.max() < 1.25 ** 2 * 1.2


def test_blur_softens_edges_and_leaves_the_mask():
    image, mask = _scene()
    out_image, out_mask = _apply(0, blur=1.0, blur_sigma=2.0)
    assert np.array_equal(out_mask, mask)
    def sharpness(a):
        return np.abs(cv2.Laplacian(a.astype(np.float32), cv2.CV_32F)).mean()
    assert sharpness(out_image) < 0.8 * sharpness(image)


@pytest.mark.parametrize("switches", [dict(brightness_contrast=1.0, brightness_limit=0.3, contrast_limit=0.3),
                                      dict(hue_saturation=1.0), dict(gamma=1.0), dict(noise=1.0)])
def test_colour_and_noise_change_the_image_only(switches):
    image, mask = _scene()
    changed = 0
    for seed in range(5):
        out_image, out_mask = _apply(seed, **switches)
        assert np.array_equal(out_mask, mask) and out_image.shape == image.shape and out_image.dtype == np.uint8
        changed += not np.array_equal(out_image, image)
    assert changed >= 4


def test_brightness_stays_within_its_limit():
    flat = np.full((16, 16, 3), 128, np.uint8)
    transform = _seeded(AugmentConfig(**OFF, brightness_contrast=1.0, brightness_limit=0.1, contrast_limit=0.01))
    shifts = [transform(image=flat)["image"].astype(int).mean() - 128 for _ in range(40)]
    assert max(np.abs(shifts)) <= 0.1 * 255 + 2 and np.ptp(shifts) > 5


def test_hue_turns_within_hue_shift_and_keeps_saturation_and_value_at_zero_shift():
    red = np.zeros((8, 8, 3), np.uint8)
    red[...] = (200, 40, 40)
    transform = _seeded(AugmentConfig(**OFF, hue_saturation=1.0, hue_shift=20, saturation_shift=0,
                                            value_shift=0))
    hsv_in = cv2.cvtColor(red, cv2.COLOR_RGB2HSV).astype(int)[0, 0]
    hues = []
    for _ in range(40):
        hsv = cv2.cvtColor(transform(image=red)["image"], cv2.COLOR_RGB2HSV).astype(int)[0, 0]
        turn = (hsv[0] - hsv_in[0] + 90) % 180 - 90  # OpenCV hue wraps at 180
        hues.append(turn)
        assert abs(hsv[2] - hsv_in[2]) <= 2 and abs(hsv[1] - hsv_in[1]) <= 6
    assert max(np.abs(hues)) <= 21 and np.ptp(hues) > 10


def test_gamma_is_a_monotone_curve_within_its_exponent_range():
    ramp = np.repeat(np.linspace(0, 255, 16).astype(np.uint8)[None, :, None], 3, axis=2)
    transform = _seeded(AugmentConfig(**OFF, gamma=1.0, gamma_limit=0.2))
    for _ in range(10):
        out = transform(image=ramp)["image"][0, :, 0].astype(int)
        assert np.all(np.diff(out) >= 0)
        middle = ramp[0, 8, 0] / 255
        assert round(255 * middle ** 1.2) - 1 <= out[8] <= round(255 * middle ** 0.8) + 1


def test_noise_stays_within_noise_std():
    flat = np.full((64, 64, 3), 128, np.uint8)
    transform = _seeded(AugmentConfig(**OFF, noise=1.0, noise_std=0.04))
    stds = [(transform(image=flat)["image"].astype(float) - 128).std() for _ in range(10)]
    assert max(stds) <= 0.04 * 255 * 1.1 and max(stds) > 1


def test_patch_reader_applies_every_switch_to_real_patch_files(tmp_path):
    image, mask = _scene(64)
    paths = {}
    for name, data in (("image.png", encode_image(image)), ("label.png", encode_label(mask))):
        paths[name] = tmp_path / name
        paths[name].write_bytes(data)
    cfg = AugmentConfig(rot90=1.0, scale=1.0, blur=1.0, brightness_contrast=1.0, hue_saturation=1.0, gamma=1.0,
                        noise=1.0)
    reader = PatchReader(load_config().s3, cfg)
    batch = reader({"image": np.array([str(paths["image.png"])] * 2), "label": np.array([str(paths["label.png"])] * 2)})
    assert batch["image"].shape == (2, 64, 64, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].shape == (2, 64, 64) and set(np.unique(batch["label"])) <= {0, 1}
    assert not np.array_equal(batch["image"][0], image)


@pytest.mark.parametrize("override, key", [("train.augment.rot90=1.5", "train.augment.rot90"),
                                           ("train.augment.scale_limit=0", "train.augment.scale_limit"),
                                           ("train.augment.blur_sigma=-1", "train.augment.blur_sigma"),
                                           ("train.augment.hue_shift=120", "train.augment.hue_shift"),
                                           ("train.augment.gamma_limit=1", "train.augment.gamma_limit"),
                                           ("train.augment.noise_std=0", "train.augment.noise_std"),
                                           ("train.augment.saturation_shift=300", "train.augment.saturation_shift")])
def test_bad_augment_settings_are_one_line_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config(None, [override])
