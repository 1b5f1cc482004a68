"""Cut city mosaics and their building labels into the patch dataset, one Ray task per mosaic.

1. Plan (driver, no Ray): expand the inputs, open and check every image and label up front, divide each
   mosaic into squares of `prepare.split_block` pixels and give each square whole to one split.
2. Run (a task per mosaic, `prepare_mosaic`): tile every square on its own, so overlapping patches never
   fall in two splits; read window by window; skip all-nodata patches; write the PNG pairs.
3. Publish: everything goes to `ROOT.tmp-<random>` beside a local ROOT, moved into place with one
   rename at the end. For s3:// output, each task stages its patches in a local temp dir and uploads them,
   and the driver writes `manifest.csv` last: an S3 dataset without a manifest is known to be partial.
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import shutil
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import ray
from rasterio.enums import Resampling
from rasterio.windows import Window

from segcore.config import Config, PrepareConfig
from segcore.data.patches import (
    MANIFEST,
    MANIFEST_COLUMNS,
    SPLITS,
    encode_image,
    encode_label,
    patch_name,
)
from segcore.errors import InputError
from segcore.labels import Polygons, match_labels, open_labels
from segcore.pipelines import init_ray
from segcore.raster.grid import tile_starts
from segcore.raster.ground import ground_sample_distance, resampling_scale
from segcore.raster.io import (
    check_imagery,
    check_readable,
    open_raster,
    raster_info,
    read_rgb,
    resampled_view,
)
from segcore.sources import expand
from segcore.storage import (
    absolute,
    describe_error,
    filesystem,
    is_s3,
    join,
    write_bytes,
)


@dataclass(frozen=True)
class Square:
    """A split_block square of a mosaic (smaller at its right and bottom edges), wholly in one split."""

    row: int
    col: int
    height: int
    width: int
    split: str


@dataclass(frozen=True)
class MosaicJob:
    image: str
    label: str
    stem: str
    width: int
    height: int
    squares: tuple[Square, ...]
    gsd_m: float | None  # metres per pixel on the ground of the patches; None without a CRS
    scale: float = 1.0  # patch pixels per image pixel: resampled to input.target_gsd (width, height are after)


@dataclass(frozen=True)
class DatasetPlan:
    output: str
    jobs: tuple[MosaicJob, ...]
    cfg: Config
    overwrite: bool
    started: float  # time.perf_counter() when planning began
    split_block: int  # the square size in effect: prepare.split_block, or smaller for small imagery


@dataclass
class PrepareSummary:
    output: str
    mosaics: int
    patches: dict[str, int]  # per split
    skipped_nodata: int
    seconds: float
    split_block: int


def assign_splits(areas: list[int], cfg: PrepareConfig) -> list[str]:
    """The split of each square: a seeded shuffle, cut where the cumulative pixel share crosses the ratios."""
    order = np.random.default_rng(cfg.seed).permutation(len(areas))
    total, done = float(sum(areas)), 0
    splits = [""] * len(areas)
    for i in order:
        middle = (done + areas[i] / 2) / total
        splits[i] = ("train" if middle < cfg.train_ratio else
                     "val" if middle < cfg.train_ratio + cfg.val_ratio else "test")
        done += areas[i]
    # With few squares the cut can leave val or test empty: give it one square of the largest split.
    for split, ratio in (("val", cfg.val_ratio), ("test", cfg.test_ratio)):
        donor, count = Counter(splits).most_common(1)[0]
        if ratio > 0 and split not in splits and count > 1:
            splits[[i for i in order if splits[i] == donor][-1]] = split
    return splits


def square_grid(square: Square, width: int, height: int, tile: int, overlap: int) -> tuple[list[int], list[int]]:
    """Top rows and left columns (mosaic pixels) of one square's patches. At the mosaic's edge the remainder
    is padded; at an edge shared with another square the last patch is moved back to end there, so a patch
    never leaves its square."""
    stride = tile - overlap
    rows = tile_starts(square.height, tile, stride, pad_end=square.row + square.height >= height)
    cols = tile_starts(square.width, tile, stride, pad_end=square.col + square.width >= width)
    return [square.row + r for r in rows], [square.col + c for c in cols]


def _patch_stem(name: str) -> str:
    """The mosaic's name in its patch names (its file stem, or its STAC Item's id) made safe: no separators,
    no leading dots, since readers of the patch layout skip dot files (`..tif` must not give hidden patches)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).lstrip(".") or "mosaic"


def _check_output(output: str, cfg: Config, overwrite: bool) -> None:
    fs = filesystem(output, cfg.s3)
    try:
        if is_s3(output):  # a missing bucket would otherwise only fail in the tasks' uploads
            bucket = output[len("s3://"):].split("/", 1)[0]
            if not fs.exists(bucket):
                raise InputError(f"{output}: bucket '{bucket}' does not exist")
        if not fs.exists(output):
            return
        if not fs.isdir(output):
            raise InputError(f"{output}: exists and is not a directory")
        if fs.ls(output, detail=False) and not overwrite:
            raise InputError(f"{output}: already exists and is not empty (pass --overwrite to replace it)")
    except (PermissionError, OSError) as exc:
        raise InputError(describe_error(output, exc)) from None


def plan_dataset(images: list[str], labels: list[str], output: str, cfg: Config, *,
                 overwrite: bool = False) -> DatasetPlan:
    """Check every input (each image and label opened) and the output, and plan the squares. Writes nothing."""
    started = time.perf_counter()
    sources = expand([str(p) for p in images], cfg, fail_alone=False)
    image_paths = [source.path for source in sources]
    label_paths = match_labels(sources, [absolute(str(p)) for p in labels], cfg.s3)
    stems: dict[str, str] = {}
    for source in sources:
        other = stems.setdefault(_patch_stem(source.name), source.path)
        if other != source.path:
            raise InputError(f"{source.path}: has the same file stem as {other}, so their patch names would collide")
    sizes, gsds, empty = [], [], []
    for image, label in zip(image_paths, label_paths, strict=True):
        with open_raster(image, cfg.s3, cfg.http) as dataset:
            info = raster_info(dataset, image)
            check_imagery(info, cfg.input)
            check_readable(dataset, image)
        with open_labels(label, info, cfg.s3) as labels:
            gsd = ground_sample_distance(info.transform, info.crs, info.width, info.height)
            scale = resampling_scale(gsd, cfg.input.target_gsd)
            sizes.append((round(info.width * scale), round(info.height * scale)))
            gsds.append((gsd, scale) if scale == 1 else (cfg.input.target_gsd, scale))
            if isinstance(labels, Polygons) and labels.empty:
                empty.append(f"{label}: {labels.empty_reason}")
    if len(empty) == len(label_paths):  # mosaics without buildings are negatives; a dataset needs some buildings
        raise InputError(f"{empty[0]}{f' (and {len(empty) - 1} more)' if len(empty) > 1 else ''}: the labels hold "
                         "no building at all, so the dataset would teach nothing")
    output = absolute(str(output)).rstrip("/")
    _check_output(output, cfg, overwrite)

    block, cells, splits = _split_squares(sizes, cfg.prepare)
    squares = [Square(row, col, height, width, split)
               for (_, row, col, height, width), split in zip(cells, splits, strict=True)]
    jobs = tuple(MosaicJob(source.path, label, _patch_stem(source.name), w, h,
                           tuple(square for cell, square in zip(cells, squares, strict=True) if cell[0] == m), *gsd)
                 for m, (source, label, (w, h), gsd) in enumerate(zip(sources, label_paths, sizes, gsds, strict=True)))
    return DatasetPlan(output, jobs, cfg, overwrite, started, block)


def _wanted_splits(cfg: PrepareConfig) -> list[str]:
    return [split for split in SPLITS if getattr(cfg, f"{split}_ratio") > 0]


Cell = tuple[int, int, int, int, int]  # mosaic, row, col, height, width


def _split_squares(sizes: list[tuple[int, int]], cfg: PrepareConfig) -> tuple[int, list[Cell], list[str]]:
    """The square size, the squares (mosaic, row, col, height, width) and their splits.

    Mosaics smaller than a few split_block squares would leave val or test without a square: the square size
    is then halved (down to tile_size, so the split stays spatial and seeded) until every split with a share
    gets one, or the imagery is too small for that, which is one line naming prepare.split_block.
    """
    block = cfg.split_block
    while True:
        cells = [(m, row, col, min(block, h - row), min(block, w - col))
                 for m, (w, h) in enumerate(sizes) for row in range(0, h, block) for col in range(0, w, block)]
        splits = assign_splits([h * w for _, _, _, h, w in cells], cfg)
        if set(_wanted_splits(cfg)) <= set(splits):
            return block, cells, splits
        if block == cfg.tile_size:
            raise InputError(f"config key 'prepare.split_block' has value {cfg.split_block}: even squares of "
                             f"tile_size {cfg.tile_size} give the imagery only {len(cells)} square(s), too few for "
                             f"{', '.join(_wanted_splits(cfg))}; give more imagery or set a split's ratio to 0")
        block = max(cfg.tile_size, block // 2)


def _write_patches(job: MosaicJob, local: str, cfg: Config) -> tuple[list[dict], int]:
    """Cut one mosaic's patches into the local folder `local`; the manifest rows and the all-nodata count.

    Reads one strip (a row of a square's patches) at a time: few reads and rasterize calls, little memory.
    """
    tile, overlap = cfg.prepare.tile_size, cfg.prepare.overlap
    rows, skipped = [], 0
    # One GDAL environment for the whole mosaic, so rasterize() does not set up its own per call (with AWS
    # variables set, each would build a boto3 session).
    with rasterio.Env(), open_raster(job.image, cfg.s3, cfg.http) as source, contextlib.ExitStack() as views:
        native = raster_info(source, job.image)
        dataset = source if job.scale == 1 else views.enter_context(
            resampled_view(source, job.width, job.height, Resampling.bilinear))
        info = raster_info(dataset, job.image)
        with open_labels(job.label, info, cfg.s3, native=None if job.scale == 1 else native) as labels:
            for square in job.squares:
                tops, lefts = square_grid(square, job.width, job.height, tile, overlap)
                for row in tops:
                    strip = Window(lefts[0], row, lefts[-1] + tile - lefts[0], tile)
                    rgb, valid = read_rgb(dataset, strip, cfg.input)
                    mask = labels.read(strip)
                    for col in lefts:
                        cut = np.s_[..., col - lefts[0]:col - lefts[0] + tile]
                        if not valid[cut].any():
                            skipped += 1
                            continue
                        rows.append(_write_pair(local, job, square.split, row, col, rgb[cut], valid[cut], mask[cut]))
    return rows, skipped


def _write_pair(local: str, job: MosaicJob, split: str, row: int, col: int, rgb: np.ndarray, valid: np.ndarray,
                mask: np.ndarray) -> dict:
    """Write one image/label PNG pair under `local`; its manifest row."""
    name = patch_name(job.stem, row, col)
    image, label = f"{split}/images/{name}", f"{split}/labels/{name}"
    for rel, data in ((image, encode_image(rgb.transpose(1, 2, 0))), (label, encode_label(mask))):
        path = Path(local, rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    tile = mask.shape[0]
    return dict(split=split, image=image, label=label, source_image=job.image, source_label=job.label,
                row=row, col=col, height=min(tile, job.height - row), width=min(tile, job.width - col),
                valid_fraction=f"{valid.mean():.4f}", building_fraction=f"{mask.mean():.4f}",
                gsd_m="" if job.gsd_m is None else f"{job.gsd_m:.4f}")


def prepare_mosaic(job: MosaicJob, target: str, cfg: Config) -> tuple[list[dict], int]:
    """Write the patches of one mosaic under `target` (a local staging dir, or the s3:// output itself).

    Returns the manifest rows and the number of patches skipped as all nodata.
    """
    if not is_s3(target):
        return _write_patches(job, target, cfg)
    local = tempfile.mkdtemp(prefix="segcore-prepare-")
    try:
        rows, skipped = _write_patches(job, local, cfg)
        written = [rel for row in rows for rel in (row["image"], row["label"])]
        if written:  # one concurrent batch upload rather than a PUT per file in turn
            filesystem(target, cfg.s3).put([str(Path(local, rel)) for rel in written],
                                            [join(target, rel) for rel in written])
        return rows, skipped
    finally:
        shutil.rmtree(local, ignore_errors=True)


_prepare_task = ray.remote(prepare_mosaic)


def _manifest(rows: list[dict]) -> bytes:
    rows = sorted(rows, key=lambda r: (SPLITS.index(r["split"]), r["image"]))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()


def _gather(refs: list, output: str) -> list:
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, InputError):  # e.g. a block that is corrupt past the header
            raise InputError(str(exc.cause)) from None
        if isinstance(exc.cause, OSError):  # e.g. a full disk, or an upload refused: one line, no traceback
            raise InputError(describe_error(getattr(exc.cause, "filename", None) or output, exc.cause)) from None
        raise


def _make_staging(output: str) -> str:
    staging = f"{output}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        for split in SPLITS:  # every split's folders exist, even one that ends up with no patches
            for side in ("images", "labels"):
                os.makedirs(os.path.join(staging, split, side))
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise InputError(describe_error(staging, exc)) from None
    return staging


def _publish_local(staging: str, output: str) -> None:
    aside = f"{output}.old-{uuid.uuid4().hex[:8]}"
    if os.path.exists(output):
        os.replace(output, aside)  # an empty dir, or the dataset --overwrite replaces
    os.replace(staging, output)
    shutil.rmtree(aside, ignore_errors=True)


def _wait_for_the_others(refs: list) -> None:
    """Let the run's other tasks end before their files are removed. Not ray.cancel: in Ray 2.60 cancelling a
    task whose reply is on its way kills the driver ("Tried to complete task that was not pending"), and each
    task is one mosaic, so the wait is bounded."""
    _, running = ray.wait(refs, num_returns=len(refs), timeout=0)
    if running:
        print(f"waiting for {len(running)} other mosaic task(s) to end before removing the partial dataset",
              flush=True)
    ray.wait(refs, num_returns=len(refs))


def run_plan(plan: DatasetPlan) -> PrepareSummary:
    """Run a checked plan on the already initialised Ray and publish the dataset all at once."""
    output, cfg = plan.output, plan.cfg
    init_ray(cfg.storage, [("--output", output), *(("image", job.image) for job in plan.jobs),
                           *(("labels", job.label) for job in plan.jobs)])
    fs = filesystem(output, cfg.s3)
    if is_s3(output) and plan.overwrite and fs.exists(output):
        fs.rm(output, recursive=True)
    target = output if is_s3(output) else _make_staging(output)
    refs = [_prepare_task.remote(job, target, cfg) for job in plan.jobs]
    try:
        results = _gather(refs, output)
        rows = [row for mosaic_rows, _ in results for row in mosaic_rows]
        if not rows:
            raise InputError(f"{', '.join(job.image for job in plan.jobs[:3])}: every patch is nodata; "
                             "no dataset written")
        if not any(float(row["building_fraction"]) > 0 for row in rows):
            raise InputError(f"{', '.join(job.label for job in plan.jobs[:3])}: no patch holds a building; "
                             "no dataset written")
        empty = [split for split in _wanted_splits(cfg.prepare) if not any(row["split"] == split for row in rows)]
        if empty:  # its squares held only nodata
            raise InputError(f"config key 'prepare.split_block' has value {plan.split_block}: the {', '.join(empty)} "
                             "split's squares hold only nodata, so it would be empty; no dataset written (a smaller "
                             "split_block spreads the splits over the valid area)")
        try:
            write_bytes(join(target, MANIFEST), _manifest(rows), cfg.s3)  # last: a dataset without it is partial
        except OSError as exc:  # e.g. the disk filled up
            raise InputError(describe_error(join(output, MANIFEST), exc)) from None
        if not is_s3(output):
            _check_output(output, cfg, plan.overwrite)  # again: something may have been put there meanwhile
            _publish_local(target, output)
    except BaseException as exc:
        if isinstance(exc, Exception):  # not on Ctrl-C: the driver's exit ends its tasks
            _wait_for_the_others(refs)
        if not is_s3(output):
            shutil.rmtree(target, ignore_errors=True)
        elif fs.exists(output):
            fs.rm(output, recursive=True)  # it held nothing before (or --overwrite emptied it)
        raise
    counts = Counter(row["split"] for row in rows)
    return PrepareSummary(output, len(plan.jobs), {split: counts[split] for split in SPLITS},
                          sum(skipped for _, skipped in results), time.perf_counter() - plan.started, plan.split_block)


def prepare_dataset(images: list[str], labels: list[str], output: str, cfg: Config, *,
                    overwrite: bool = False) -> PrepareSummary:
    """Write the patch dataset of `images` and their `labels` to `output` (local or s3://) on running Ray."""
    return run_plan(plan_dataset(images, labels, output, cfg, overwrite=overwrite))
