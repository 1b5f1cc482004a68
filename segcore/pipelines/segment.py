"""City-scale building segmentation on Ray Data: mosaics in, one Cloud-Optimized GeoTIFF mask each out.

1. Plan (driver, no Ray; `plan_segment`): load the checkpoint (a bad one is an InputError: nothing starts),
   check the output is writable, expand the inputs and open and check each one (a bad one is recorded
   as failed; the others go on), name its outputs, plan its blocks and find those an earlier run finished.
2. Run (`run_segment`): a streaming dataset of the unfinished blocks. A pool of CPU reader actors reads
   each block with its halo (`blocks.BlockReader`: torch-free, so they start fast); a pool of
   `BlockSegmenter` actors runs `predict_block` on it, thresholds it and writes its core atomically to
   OUT/.work/<key>-<hash>/block_<i>.npz. The file name depends only on the raster, the block and the
   settings that change the output, so a rerun skips what is done.
3. Assemble (driver, `raster.write.assemble`): when every block of an input is done, its block files are
   streamed into OUT/<key>/mask.tif and the other outputs, mask.tif published last, so a mask that exists
   is complete. An input's earlier outputs are deleted when the run starts. OUT/summary.json sums the run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Optional

import numpy as np
import ray
import torch
from rasterio.errors import NotGeoreferencedWarning

from segcore.checkpoint import load_model
from segcore.config import Config, ConfigError, InputConfig
from segcore.errors import InputError
from segcore.inference import pick_device, predict_block, to_mask, to_probability_bytes
from segcore.labels import match_labels, open_labels
from segcore.config import DEFAULT_THRESHOLD
from segcore.pipelines.blocks import BlockReader, block_of
from segcore.raster.blend import crop_core
from segcore.raster.grid import Block, plan_blocks
from segcore.raster.io import RasterInfo, check_imagery, check_readable, open_raster, raster_info
from segcore.raster.write import OUTPUT_FILES, assemble, block_file, save_block
from segcore.storage import absolute, describe_error, filesystem, join, list_rasters, write_bytes

# A raster without a CRS gets one warning line from the planner, not one from rasterio per open.
warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)

WORK_DIR = ".work"
BLOCK_FORMAT = "segcore-block/1"  # bump when the block files change meaning
READ_CPUS = 0.5  # per block reader (up to one per inference actor): I/O and decompression, mostly


@dataclass
class InputJob:
    """One input mosaic: where it goes, its blocks, and which of them still need computing."""

    path: str
    key: str = ""
    info: Optional[RasterInfo] = None
    labels: Optional[str] = None
    work: str = ""  # OUT/.work/<key>-<hash>
    out: str = ""  # OUT/<key>
    blocks: list[Block] = field(default_factory=list)
    todo: list[int] = field(default_factory=list)  # indexes of blocks without a block file
    error: Optional[str] = None


@dataclass
class SegmentPlan:
    cfg: Config  # its `input` section is the one in effect (config's, else the checkpoint's)
    checkpoint: str
    output: str
    threshold: float
    settings: dict  # everything that changes the output; hashed into the work directory names
    jobs: list[InputJob]
    started: float = field(default_factory=time.perf_counter)


def _digest(data: object) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def input_keys(paths: list[str]) -> list[str]:
    """Output folder names: file stems made safe (no separators, no leading dots), unique via a path hash."""
    keys = [re.sub(r"[^A-Za-z0-9._-]+", "_", PurePosixPath(path).stem).strip("._") or "input" for path in paths]
    counts = Counter(keys)
    return [f"{key}-{hashlib.sha256(path.encode()).hexdigest()[:8]}" if counts[key] > 1 else key
            for key, path in zip(keys, paths)]


def _identity(path: str, cfg: Config) -> dict:
    """Size and modification stamp of a raster, so a changed file does not reuse stale blocks."""
    info = filesystem(path, cfg.s3).info(path)
    return {name: info.get(name) for name in ("size", "mtime", "ETag", "LastModified")}


def _finished_blocks(work: str, cfg: Config) -> set[str]:
    fs = filesystem(work, cfg.s3)
    if not fs.exists(work):
        return set()
    return {PurePosixPath(entry).name for entry in fs.ls(work, detail=False)}


def _effective_input(cfg: Config, stored: Optional[InputConfig]) -> InputConfig:
    """The config's input section when it names anything, else the checkpoint's (fork checkpoints have none)."""
    return cfg.input if cfg.input != InputConfig() or stored is None else stored


def _plan_input(job: InputJob, plan: SegmentPlan) -> None:
    """Open and check one input and fill in its blocks; raises InputError for a bad one."""
    cfg = plan.cfg
    with open_raster(job.path, cfg.s3) as dataset:
        job.info = raster_info(dataset, job.path)
        check_imagery(job.info, cfg.input)
        check_readable(dataset, job.path)
    if job.labels:
        open_labels(job.labels, job.info, cfg.s3).close()  # opening checks that the labels fit the image
    if not job.info.georeferenced:
        print(f"warning: {job.path}: no georeference (CRS); its mask is written on the pixel grid without a CRS",
              file=sys.stderr)
    tag = _digest([plan.settings, job.path, _identity(job.path, cfg)])[:12]
    job.work = join(plan.output, WORK_DIR, f"{job.key}-{tag}")
    job.out = join(plan.output, job.key)
    job.blocks = plan_blocks(job.info.width, job.info.height, cfg.segment.block_size, cfg.segment.overlap)
    done = _finished_blocks(job.work, cfg)
    job.todo = [block.index for block in job.blocks if block_file(block.index) not in done]


def plan_segment(inputs: list[str], checkpoint: str, output: str, cfg: Config,
                 labels: list[str] | tuple[str, ...] = ()) -> SegmentPlan:
    """Check the checkpoint, the output and every input, and plan the blocks (bad inputs marked failed).

    Raises InputError (nothing can start) for a bad checkpoint, an unwritable output or labels that do
    not pair with the inputs.
    """
    if cfg.segment.polygon_format != "geojson":
        raise ConfigError(f"config key 'segment.polygon_format' has value {cfg.segment.polygon_format!r}: "
                          "only 'geojson' is supported (GeoPackage needs fiona or pyogrio, not installed)")
    started = time.perf_counter()
    checkpoint = absolute(str(checkpoint))
    loaded = load_model(checkpoint, cfg.model, cfg.s3)
    cfg = dataclasses.replace(cfg, input=_effective_input(cfg, loaded.input_cfg))
    threshold = next(t for t in (cfg.segment.threshold, loaded.threshold, DEFAULT_THRESHOLD) if t is not None)
    seg = cfg.segment
    settings = dict(format=BLOCK_FORMAT, checkpoint_sha256=loaded.checkpoint.sha256,
                    model=dataclasses.asdict(loaded.model_cfg),
        input=dataclasses.asdict(cfg.input), tile_size=seg.tile_size, overlap=seg.overlap, block_size=seg.block_size,
        threshold=threshold, precision=seg.precision, gpu=seg.gpus_per_actor > 0,
        write_probability=seg.write_probability)
    output = absolute(str(output)).rstrip("/")
    try:  # fail now, not after the compute, if the output cannot be written
        write_bytes(join(output, WORK_DIR, "settings.json"), json.dumps(settings, indent=1).encode(), cfg.s3)
    except OSError as exc:
        raise InputError(describe_error(output, exc)) from None
    plan = SegmentPlan(cfg, checkpoint, output, threshold, settings, [], started)

    images: list[str] = []
    for spec in inputs:
        try:
            images.extend(absolute(p) for p in list_rasters([absolute(str(spec))], cfg.s3))
        except (InputError, OSError) as exc:
            plan.jobs.append(InputJob(str(spec), error=str(exc) if isinstance(exc, InputError)
                                      else describe_error(str(spec), exc)))
    images = list(dict.fromkeys(images))
    label_paths = match_labels(images, [absolute(str(p)) for p in labels], cfg.s3) if labels else [None] * len(images)
    for path, key, label in zip(images, input_keys(images), label_paths):
        job = InputJob(path, key, labels=label)
        try:
            _plan_input(job, plan)
        except (InputError, OSError) as exc:
            job.error = str(exc) if isinstance(exc, InputError) else describe_error(path, exc)
        plan.jobs.append(job)
    for job in plan.jobs:
        if job.error:
            print(f"error: {job.error}", file=sys.stderr)
    return plan


class BlockSegmenter:
    """Ray Data actor: loads the checkpoint once, then segments blocks and writes their block files."""

    def __init__(self, checkpoint: str, cfg: Config, threshold: float):
        self.cfg, self.threshold = cfg, threshold
        seg = cfg.segment
        self.device = pick_device(seg.gpus_per_actor)
        if self.device.type == "cpu":
            torch.set_num_threads(seg.torch_threads or max(1, int(seg.cpus_per_actor)))
        model = load_model(checkpoint, cfg.model, cfg.s3).model.to(self.device)
        if seg.channels_last:  # faster on CUDA, and with oneDNN on the CPU too (about 1.4x for RefineNet-ResNet18)
            model = model.to(memory_format=torch.channels_last)
        self.model = torch.compile(model) if seg.compile else model

    def _segment(self, row: dict) -> dict:
        seg = self.cfg.segment
        started = time.perf_counter()
        prediction = predict_block(self.model, row["rgb"], row["valid"], tile_size=seg.tile_size,
                                   overlap=seg.overlap, batch_size=seg.batch_size, device=self.device,
                                   precision=seg.precision, channels_last=seg.channels_last)
        block = block_of(row)
        probability = crop_core(prediction.probability, block)
        save_block(row["dest"], to_mask(probability, self.threshold),
                   to_probability_bytes(probability) if seg.write_probability else None,
                   prediction.tiles_computed, prediction.tiles_skipped, self.cfg.s3)
        return dict(tiles=prediction.tiles_computed, pixels=block.width * block.height,
                    seconds=time.perf_counter() - started)

    def __call__(self, batch: dict) -> dict:
        out = {name: [] for name in ("input", "index", "error", "tiles", "pixels", "seconds")}
        for i in range(len(batch["index"])):
            row = {name: batch[name][i] for name in batch}
            result = dict(tiles=0, pixels=0, seconds=0.0)
            error = str(row["error"])
            if not error:
                try:
                    result = self._segment(row)
                except Exception as exc:  # noqa: BLE001 - e.g. a denied write: fail this input, not the run
                    error = str(exc) if isinstance(exc, InputError) else \
                        f"{row['path']}: block {row['index']}: {describe_error(str(row['dest']), exc)}"
            for name, value in dict(result, input=int(row["input"]), index=int(row["index"]), error=error).items():
                out[name].append(value)
        return {name: np.array(values) for name, values in out.items()}


def _descriptors(plan: SegmentPlan) -> list[dict]:
    """One plain row per block to compute: its input, its Block fields and its block file."""
    return [dict(input=number, path=job.path, dest=join(job.work, block_file(index)),
                 **dataclasses.asdict(job.blocks[index]))
            for number, job in enumerate(plan.jobs) for index in job.todo]


def _dataset(plan: SegmentPlan, items: list[dict]):
    seg = plan.cfg.segment
    return (ray.data.from_items(items, override_num_blocks=len(items))
            .map(BlockReader, fn_constructor_kwargs=dict(input_cfg=plan.cfg.input, s3=plan.cfg.s3), num_cpus=READ_CPUS,
                 compute=ray.data.ActorPoolStrategy(min_size=1, max_size=seg.actors))
            .map_batches(BlockSegmenter, fn_constructor_kwargs=dict(checkpoint=plan.checkpoint, cfg=plan.cfg,
                                                                    threshold=plan.threshold),
                         batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=seg.actors),
                         num_cpus=seg.cpus_per_actor, num_gpus=seg.gpus_per_actor))


def _remove_outputs(job: InputJob, cfg: Config) -> None:
    """Delete an input's previous final outputs, so that a mask which exists is always this run's, complete."""
    fs = filesystem(job.out, cfg.s3)
    for name in OUTPUT_FILES:
        path = join(job.out, name)
        if fs.exists(path):
            fs.rm(path)


def _run_metrics(job: InputJob, plan: SegmentPlan, run: Counter) -> dict:
    """What this run did for an input: blocks computed and reused, and the actors' throughput on them."""
    seconds = run["seconds"]
    return dict(input=job.path, key=job.key, output=job.out, threshold=plan.threshold,
                blocks=dict(total=len(job.blocks), computed=run["blocks"], reused=len(job.blocks) - run["blocks"]),
                tiles_computed_this_run=run["tiles"], seconds=round(seconds, 3),
                tiles_per_s=round(run["tiles"] / seconds, 3) if seconds else None,
                megapixels_per_s=round(run["pixels"] / 1e6 / seconds, 4) if seconds else None)


def _report(metrics: dict) -> str:
    text = (f"{metrics['input']}: {metrics['width']}x{metrics['height']} px, {metrics['blocks']['total']} blocks "
            f"({metrics['blocks']['computed']} computed), {metrics['tiles']['computed']} tiles "
            f"({metrics['tiles']['skipped_nodata']} nodata skipped), {metrics['building_count']} buildings")
    if "iou" in metrics:
        text += f", IoU {metrics['iou']:.3f} F1 {metrics['f1']:.3f}"
    return text + f" -> {metrics['output']}/mask.tif"


def run_segment(plan: SegmentPlan) -> dict:
    """Segment every planned input on the already initialised Ray; writes OUT/summary.json and returns it."""
    cfg = plan.cfg
    runs = {n: Counter(blocks=0, tiles=0, pixels=0, seconds=0.0) for n in range(len(plan.jobs))}
    pending = {n: len(job.todo) for n, job in enumerate(plan.jobs) if not job.error}
    results: dict[int, dict] = {}

    def finish(number: int) -> None:
        job = plan.jobs[number]
        if not job.error:
            try:
                results[number] = assemble(job.info, job.blocks, job.work, job.out, plan.cfg, labels=job.labels,
                                           metrics=_run_metrics(job, plan, runs[number]))
                print(_report(results[number]), flush=True)
            except Exception as exc:  # noqa: BLE001 - one input's failed assembly must not stop the others
                job.error = str(exc) if isinstance(exc, InputError) else describe_error(job.out, exc)
                # Outputs published before the failure (prob.tif, polygons, ...) are a partial set. Removing them
                # may fail too when the output store is what failed: the next run deletes them then.
                with contextlib.suppress(Exception):
                    _remove_outputs(job, cfg)
        if job.error:
            print(f"error: {job.error}", file=sys.stderr, flush=True)

    for number in pending:
        _remove_outputs(plan.jobs[number], cfg)
    for number in [n for n, count in pending.items() if count == 0]:
        finish(number)
    items = _descriptors(plan)
    try:
        for row in (_dataset(plan, items).iter_rows() if items else ()):
            number = int(row["input"])
            job = plan.jobs[number]
            if not row["error"]:
                runs[number].update(blocks=1, tiles=int(row["tiles"]), pixels=int(row["pixels"]),
                                    seconds=float(row["seconds"]))
            elif not job.error:
                job.error = str(row["error"])
            pending[number] -= 1
            if pending[number] == 0:
                finish(number)
    except Exception as exc:  # noqa: BLE001 - the pipeline itself failed: every unfinished input failed with it
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        for number, count in pending.items():
            if count > 0 and not plan.jobs[number].error:
                plan.jobs[number].error = f"{plan.jobs[number].path}: segmentation pipeline failed ({reason})"
                print(f"error: {plan.jobs[number].error}", file=sys.stderr, flush=True)

    seconds = time.perf_counter() - plan.started
    tiles = sum(run["tiles"] for run in runs.values())
    pixels = sum(run["pixels"] for run in runs.values())
    summary = dict(checkpoint=plan.checkpoint, output=plan.output, threshold=plan.threshold,
                   settings_sha256=_digest(plan.settings), seconds=round(seconds, 3),
                   ok=sum(1 for job in plan.jobs if not job.error), failed=sum(1 for job in plan.jobs if job.error),
                   blocks_computed=sum(run["blocks"] for run in runs.values()), tiles_computed=tiles,
                   tiles_per_s=round(tiles / seconds, 3), megapixels_per_s=round(pixels / 1e6 / seconds, 4),
                   inputs=[dict(input=job.path, key=job.key, status="failed", error=job.error) if job.error else
                           dict(input=job.path, key=job.key, status="ok", metrics=results.get(n))
                           for n, job in enumerate(plan.jobs)])
    text = json.dumps(summary, indent=1).encode()
    try:
        write_bytes(join(plan.output, "summary.json"), text, cfg.s3)
    except Exception as exc:  # noqa: BLE001 - e.g. a full disk: one line (after the inputs' own), not a traceback
        raise InputError(describe_error(join(plan.output, "summary.json"), exc)) from None
    return summary
