"""The patch dataset on disk: ROOT/{train,val,test}/{images,labels}/ plus ROOT/manifest.csv.

An image patch is an 8-bit RGB file and its label a single-channel 8-bit file of the same stem, 0 for
background and 255 for building. `prepare` writes PNGs; reading accepts any format cv2 decodes, so the
layout of the public fork's workflow (jpg/png/tif pairs under the same folders) keeps working.
Plain Python (no Ray): the training job's data loading and the prepare pipeline both use it.
"""
from __future__ import annotations

import csv
import io
import struct
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

import cv2
import numpy as np

from segcore.config import AugmentConfig, S3Config
from segcore.errors import InputError
from segcore.storage import describe_error, exists, filesystem, join, list_dir, read_bytes

if TYPE_CHECKING:
    import albumentations

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("split", "image", "label", "source_image", "source_label", "row", "col", "height", "width",
                    "valid_fraction", "building_fraction", "gsd_m")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def patch_name(stem: str, row: int, col: int) -> str:
    """File name of the patch whose top-left corner is pixel (row, col) of mosaic `stem`."""
    return f"{stem}_r{row}_c{col}.png"


def encode_image(rgb: np.ndarray) -> bytes:
    """PNG bytes of an HxWx3 uint8 RGB array (cv2 stores BGR, hence the flip)."""
    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise RuntimeError("cv2 failed to encode a PNG")
    return buffer.tobytes()


def encode_label(mask: np.ndarray) -> bytes:
    """PNG bytes of an HxW {0,1} mask, stored as 0/255."""
    ok, buffer = cv2.imencode(".png", (mask > 0).astype(np.uint8) * 255)
    if not ok:
        raise RuntimeError("cv2 failed to encode a PNG")
    return buffer.tobytes()


def _decode(data: bytes, name: str, flags: int) -> np.ndarray:
    array = cv2.imdecode(np.frombuffer(data, np.uint8), flags) if data else None
    if array is None:
        raise InputError(f"{name}: not a readable image")
    return array


def decode_image(data: bytes, name: str) -> np.ndarray:
    """HxWx3 uint8 RGB from encoded image bytes (grey, alpha and 16-bit inputs are converted by cv2)."""
    return cv2.cvtColor(_decode(data, name, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def decode_label(data: bytes, name: str) -> np.ndarray:
    """HxW uint8 mask in {0, 1} from encoded label bytes: any value > 0 (in any colour channel) is building."""
    array = _decode(data, name, cv2.IMREAD_UNCHANGED)
    if array.ndim == 3:
        array = array[..., :3].max(axis=2)  # colour labels: a building may be drawn in any channel
    return (array > 0).astype(np.uint8)


def patch_size(fs, path: str) -> tuple[int, int]:
    """(height, width) of a patch file: from the PNG header when it is one (24 bytes), else by decoding it."""
    head = fs.cat_file(path, start=0, end=24)
    if head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        return height, width
    return decode_image(fs.cat_file(path), path).shape[:2]


def _images_by_stem(folder: str, s3: S3Config | None) -> dict[str, str]:
    try:
        paths = list_dir(folder, s3)
    except OSError as exc:
        raise InputError(describe_error(folder, exc)) from None
    found: dict[str, str] = {}
    for path in paths:
        name = PurePosixPath(path)
        if name.name.startswith(".") or name.suffix.lower() not in IMAGE_SUFFIXES:
            continue  # .DS_Store, notes, manifests: not patches
        if name.stem in found:
            raise InputError(f"{path}: two files with stem '{name.stem}' in {folder} ({found[name.stem]})")
        found[name.stem] = path
    return found


def list_pairs(root: str, split: str, s3: S3Config | None = None) -> list[tuple[str, str]]:
    """Sorted (image path, label path) pairs of one split, paired by file stem."""
    if split not in SPLITS:
        raise InputError(f"split {split!r} is unknown: expected one of {', '.join(SPLITS)}")
    fs = filesystem(root, s3)
    folders = [join(root, split, side) for side in ("images", "labels")]
    for folder in folders:
        try:
            found = fs.isdir(folder)
        except (PermissionError, OSError) as exc:  # e.g. S3 credentials refused
            raise InputError(describe_error(folder, exc)) from None
        if not found:
            raise InputError(f"{folder}: missing (expected {root}/{{train,val,test}}/{{images,labels}}/)")
    images, labels = (_images_by_stem(folder, s3) for folder in folders)
    for ours, other, folder in ((images, labels, folders[1]), (labels, images, folders[0])):
        lonely = sorted(set(ours) - set(other))
        if lonely:
            raise InputError(f"{ours[lonely[0]]}: no file with the same stem in {folder}"
                             + (f" (and {len(lonely) - 1} more)" if len(lonely) > 1 else ""))
    if not images:
        raise InputError(f"{folders[0]}: holds no images (expected {', '.join(IMAGE_SUFFIXES)} files)")
    return [(images[stem], labels[stem]) for stem in sorted(images)]


def training_gsd(root: str, s3: S3Config | None = None) -> float | None:
    """The median ground sample distance (metres per pixel) of the train split's source mosaics, from
    ROOT/manifest.csv as prepare writes it; None without a manifest (e.g. a hand-made dataset) or a CRS."""
    path = join(root, MANIFEST)
    if not exists(path, s3):
        return None
    rows = csv.DictReader(io.StringIO(read_bytes(path, s3).decode()))
    values = [float(row["gsd_m"]) for row in rows if row["split"] == "train" and row.get("gsd_m")]
    return float(np.median(values)) if values else None


class PatchReader:
    """Ray Data batch function: patch paths -> uint8 images N x H x W x 3 and masks N x H x W in {0, 1}.

    An instance carries its settings into every task; the augmentation pipeline is built once per process.
    When the batch carries a `seed` column, each patch is augmented from its own seed, so the result does not
    depend on which process reads it. Torch-free (albumentations only when augmenting), so the Ray Data
    tasks that call it start fast.
    """

    def __init__(self, s3: S3Config, augment: AugmentConfig | None = None):
        self.s3, self.augment = s3, augment
        self._transform: albumentations.Compose | None = None

    def __call__(self, batch: dict) -> dict:
        fs = filesystem(str(batch["image"][0]), self.s3)
        images = [decode_image(fs.cat_file(path), path) for path in batch["image"]]
        labels = [decode_label(fs.cat_file(path), path) for path in batch["label"]]
        if self.augment is not None:
            from segcore.data.transforms import build_augment, reseed

            if self._transform is None:
                self._transform = build_augment(self.augment)
            seeds = batch.get("seed")
            for index, (image, label) in enumerate(zip(images, labels, strict=True)):
                if seeds is not None:
                    reseed(self._transform, int(seeds[index]))
                pair = self._transform(image=image, mask=label)
                images[index], labels[index] = pair["image"], pair["mask"]
        return {"image": np.stack(images), "label": np.stack(labels)}
