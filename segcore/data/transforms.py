"""Training augmentations (albumentations), built from the config's `train.augment` section."""
from __future__ import annotations

import os
import random

import cv2
import numpy as np

# albumentations looks for a newer release online at import; this project never reaches the internet at run time.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A

from segcore.config import AugmentConfig


def build_augment(cfg: AugmentConfig) -> A.Compose:
    """Flips, rotation (zero fill, nearest-neighbour mask) and optional brightness/contrast jitter.

    Geometric transforms move image and mask together; only the image's colours are jittered.
    """
    transforms = [
        A.HorizontalFlip(p=cfg.hflip),
        A.VerticalFlip(p=cfg.vflip),
        A.Rotate(limit=cfg.rotate_limit, interpolation=cv2.INTER_LINEAR, border_mode=cv2.BORDER_CONSTANT,
                 fill=0, fill_mask=0, p=cfg.rotate_p),
    ]
    if cfg.brightness_contrast > 0:
        transforms.append(A.RandomBrightnessContrast(0.1, 0.1, p=cfg.brightness_contrast))
    return A.Compose(transforms)


def reseed(transform: A.Compose, seed: int) -> None:
    """Make `transform`'s next draws depend on `seed` alone. Every transform shares one generator:
    `Compose.set_random_seed` would give each its own generator with the same seed, whose first draws agree
    (both flips, or neither)."""
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
