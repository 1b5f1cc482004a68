"""Training input cost: samples/s per CPU core of reading, decoding, augmenting and collating 384 patches.

    python benchmarks/train_input.py [--samples 512]

Patches are cut from a generated city and written as PNG pairs in the patch layout, then read back the way
the training input does (data.patches.PatchReader over batches of paths: read, decode, the configured
augmentations, stack). CPU time is this process's (time.process_time), single-threaded, after a warm-up batch.
From it: the CPU cores one GPU training worker needs at 580 samples/s (RefineNet-ResNet50 at 384, forward and
backward about 3 x 227.5 GFLOP a sample, an H100 at 40% of its bf16 peak).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from common import fmt, table

GPU_SAMPLES_PER_S = 580.0
TILE = 384
BATCH = 16


def write_patches(root: Path, city, count: int) -> tuple[list[str], list[str]]:
    import rasterio

    with rasterio.open(city.image) as src:
        image = src.read().transpose(1, 2, 0)
    with rasterio.open(city.labels) as src:
        label = src.read(1)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir(parents=True)
    images, labels = [], []
    per_row = image.shape[1] // TILE
    for n in range(count):
        row, col = (n // per_row) % (image.shape[0] // TILE) * TILE, n % per_row * TILE
        name = f"p{n:04d}.png"
        cv2.imwrite(str(root / "images" / name), image[row:row + TILE, col:col + TILE, ::-1])
        cv2.imwrite(str(root / "labels" / name), (label[row:row + TILE, col:col + TILE] > 0).astype(np.uint8) * 255)
        images.append(str(root / "images" / name))
        labels.append(str(root / "labels" / name))
    return images, labels


def samples_per_cpu_s(reader, images: list[str], labels: list[str]) -> float:
    batches = [{"image": np.array(images[i:i + BATCH]), "label": np.array(labels[i:i + BATCH])}
               for i in range(0, len(images), BATCH)]
    reader(batches[0])  # warm-up: imports, the augmentation pipeline
    started = time.process_time()
    for batch in batches:
        reader(batch)
    return len(images) / (time.process_time() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/segcore-train-input"))
    args = parser.parse_args()
    from segcore.config import AugmentConfig, S3Config, load_config
    from segcore.data.patches import PatchReader

    args.workdir.mkdir(parents=True, exist_ok=True)
    city = common.city(args.workdir, 4096)
    augment = load_config(common.REPO / "configs" / "train.yaml").train.augment
    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        images, labels = write_patches(Path(scratch), city, args.samples)
        rows = []
        for name, setting in (("read + decode + stack", None), ("+ configs/train.yaml augmentations", augment),
                              ("+ default augmentations", AugmentConfig())):
            rate = samples_per_cpu_s(PatchReader(S3Config(), setting), images, labels)
            rows.append([name, fmt(rate, 1), fmt(GPU_SAMPLES_PER_S / rate, 1)])
            common.log(f"{name}: {rate:.1f} samples per CPU-second")
    print(f"### Training input: {args.samples} patches of {TILE}, batches of {BATCH}, one core\n")
    print(table(["path", "samples per CPU-s", f"cores per GPU worker at {GPU_SAMPLES_PER_S:.0f} samples/s"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
