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
    """The switched-on transforms of `cfg`, in the order a camera would apply them: the scene's geometry
    (flips, right-angle turns, rotation with zero fill, scale with mirrored borders), then the optics (blur),
    the colour (brightness/contrast, HSV, gamma) and last the sensor noise.

    Geometric transforms move image and mask together (nearest-neighbour for the mask); the rest change the
    image only.
    """
    transforms: list[A.BasicTransform] = [
        A.HorizontalFlip(p=cfg.hflip),
        A.VerticalFlip(p=cfg.vflip),
        A.RandomRotate90(p=cfg.rot90),
        A.Rotate(limit=cfg.rotate_limit, interpolation=cv2.INTER_LINEAR, border_mode=cv2.BORDER_CONSTANT,
                 fill=0, fill_mask=0, p=cfg.rotate_p),
        A.Affine(scale=(1 / (1 + cfg.scale_limit), 1 + cfg.scale_limit), keep_ratio=True, balanced_scale=True,
                 interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                 border_mode=cv2.BORDER_REFLECT_101, p=cfg.scale),
        A.GaussianBlur(sigma_limit=(0.1, cfg.blur_sigma), p=cfg.blur),
        A.RandomBrightnessContrast(cfg.brightness_limit, cfg.contrast_limit, p=cfg.brightness_contrast),
        A.HueSaturationValue(cfg.hue_shift, cfg.saturation_shift, cfg.value_shift, p=cfg.hue_saturation),
        A.RandomGamma((100 * (1 - cfg.gamma_limit), 100 * (1 + cfg.gamma_limit)), p=cfg.gamma),
        A.GaussNoise(std_range=(0.0, cfg.noise_std), p=cfg.noise),
    ]
    return A.Compose([t for t in transforms if t.p > 0])


def reseed(transform: A.Compose, seed: int) -> None:
    """Make `transform`'s next draws depend on `seed` alone. Every transform shares one generator:
    `Compose.set_random_seed` would give each its own generator with the same seed, whose first draws agree
    (both flips, or neither)."""
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
