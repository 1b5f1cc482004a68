"""City-scale building segmentation on Ray Data: mosaics in; per mosaic a COG mask, metrics, footprints and a
preview out.

1. Plan (driver, before Ray starts; `plan_segment`): load the checkpoint (a bad one is an InputError: nothing
   starts), check the output is writable, expand the inputs (files, folders, globs, s3://, https://, STAC)
   and open and check each one (a bad one is recorded as failed; the others go on), plan its blocks and find
   those an earlier run finished.
2. Stream (`run_segment`), one row per unfinished block, through stages sized separately:
       read + decode   CPU actors (`blocks.BlockReader`), as many as the CPUs allow (segment.readers); a
                       mosaic of another ground resolution than the model's is read resampled to it
       infer           inference actors (`BlockSegmenter`, one per GPU): forward passes, blending (back on
                       the mosaic's grid when resampled) and thresholding on the device; compact uint8 results
       write           CPU actors (`blocks.BlockWriter`, segment.writers): the block file, with the block's
                       building vectors when footprints are on
   A block file's name depends only on the raster, the block and the settings that change it, so a rerun
   skips what is done.
3. Assemble (`pipelines.assembly`): assembly actors take each mosaic's block files as they are written and
   build its outputs beside the stream, publishing them (mask.tif last) once its last block is in. The driver
   only orchestrates; OUT/summary.json sums the run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import cast

import numpy as np
import ray
import torch
from rasterio.errors import NotGeoreferencedWarning

from segcore.checkpoint import load_model
from segcore.config import DEFAULT_THRESHOLD, Config, InputConfig, SegmentConfig
from segcore.errors import InputError
from segcore.inference import pick_device, predict_block, resample_probability, to_mask, to_probability_bytes
from segcore.labels import match_labels, open_labels
from segcore.outputs.assemble import MosaicOutputs, remove_outputs
from segcore.outputs.blockfile import block_file
from segcore.outputs.preview import preview_scale
from segcore.outputs.runlog import MosaicRun, RunLog
from segcore.pipelines import init_ray
from segcore.pipelines.assembly import Assemblies
from segcore.pipelines.blocks import BlockReader, BlockWriter, block_of
from segcore.raster.grid import Block, block_tiles, segment_blocks
from segcore.raster.ground import ground_sample_distance, resampling_scale
from segcore.raster.io import (
    RasterInfo,
    check_imagery,
    check_readable,
    open_raster,
    raster_info,
)
from segcore.sources import expand
from segcore.storage import (
    absolute,
    describe_error,
    filesystem,
    join,
    list_dir,
    write_bytes,
)

# A raster without a CRS gets one warning line from the planner, not one from rasterio per open.
warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)

WORK_DIR = ".work"
INFERENCE_STEPS = ("tiling", "forward", "blend", "threshold")
# The CPU-seconds ledger of a run, by stage, summed over every process. On a GPU cluster the inference steps are
# the GPU's work (launched by the host), the others the CPUs': the stream's stages here, the assembly's below.
STREAM_STAGES = ("read", "thumbnail", *INFERENCE_STEPS, "polygonize", "write_block")
BLOCK_FORMAT = "segcore-block/2"  # bump when the block files change meaning


@dataclass
class InputJob:
    """One input mosaic: where it goes, its blocks, and which of them still need computing."""

    path: str
    key: str = ""
    info: RasterInfo | None = None
    labels: str | None = None
    work: str = ""  # OUT/.work/<key>-<hash>
    out: str = ""  # OUT/<key>
    blocks: list[Block] = field(default_factory=list)
    todo: list[int] = field(default_factory=list)  # indexes of blocks without a block file
    error: str | None = None
    scale: float = 1.0  # model pixels per input pixel: resampled to the target ground sample distance

    def written_before(self) -> list[int]:
        """Indexes of the blocks an earlier run wrote."""
        todo = set(self.todo)
        return [block.index for block in self.blocks if block.index not in todo]


@dataclass
class SegmentPlan:
    cfg: Config  # its `input` section is the one in effect (config's, else the checkpoint's)
    checkpoint: str
    output: str
    threshold: float
    settings: dict  # everything that changes the block files; hashed into the work directory names
    jobs: list[InputJob]
    started_at: float = field(default_factory=time.time)  # the wall clock at planning
    started_cpu: float = field(default_factory=time.process_time)  # the driver's CPU clock at planning
    # Replaces the checkpoint's model in the inference actors: benchmarks' stand-ins only (no config reaches it).
    model_factory: Callable[[], torch.nn.Module] | None = None
    trained_gsd_m: float | None = None  # the checkpoint's training imagery's metres per pixel, when it says
    target_gsd_m: float | None = None  # what inputs are resampled to: input.target_gsd, else trained_gsd_m


# A model sees buildings at the size it was trained on; beyond this ratio of ground sample distances
# (e.g. 0.3 m against 0.45 m) its quality drops markedly, so the planner says so.
GSD_WARNING_RATIO = 1.4


def _digest(data: object) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def input_keys(names: list[str]) -> list[str]:
    """Output folder names from raster names (file stems or STAC Item ids): made safe (no separators, no leading
    dots) and unique (a hash of the name's position where two collide)."""
    keys = [re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "input" for name in names]
    counts = Counter(keys)
    return [f"{key}-{hashlib.sha256(f'{i}:{name}'.encode()).hexdigest()[:8]}" if counts[key] > 1 else key
            for i, (key, name) in enumerate(zip(keys, names, strict=True))]


def _identity(path: str, cfg: Config) -> dict:
    """Size and modification stamp of a raster, so a changed file does not reuse stale blocks."""
    info = filesystem(path, cfg.s3, cfg.http).info(path)
    return {name: info.get(name) for name in ("size", "mtime", "ETag", "LastModified")}


def _finished_blocks(work: str, cfg: Config) -> set[str]:
    return {PurePosixPath(path).name for path in list_dir(work, cfg.s3)} if filesystem(work, cfg.s3).exists(
        work) else set()


def _effective_input(cfg: Config, stored: InputConfig | None) -> InputConfig:
    """The config's input section when it names any normalization, else the checkpoint's (fork checkpoints have
    none); the target ground sample distance is always the config's."""
    if dataclasses.replace(cfg.input, target_gsd=None) != InputConfig() or stored is None:
        return cfg.input
    return dataclasses.replace(stored, target_gsd=cfg.input.target_gsd)


def _plan_input(job: InputJob, plan: SegmentPlan) -> None:
    """Open and check one input and fill in its blocks; raises InputError for a bad one."""
    cfg = plan.cfg
    with open_raster(job.path, cfg.s3, cfg.http) as dataset:
        job.info = raster_info(dataset, job.path)
        check_imagery(job.info, cfg.input)
        check_readable(dataset, job.path)
    if job.labels:
        open_labels(job.labels, job.info, cfg.s3).close()  # opening checks that the labels fit the image
    if not job.info.georeferenced:
        placed = "with its ground control points" if job.info.gcps else "on the pixel grid without a CRS"
        print(f"warning: {job.path}: no georeference (CRS); its mask is written {placed}", file=sys.stderr)
    gsd = ground_sample_distance(job.info.transform, job.info.crs, job.info.width, job.info.height)
    job.scale = resampling_scale(gsd, plan.target_gsd_m)
    if job.scale != 1:
        print(f"note: {job.path}: {gsd:.3g} m per pixel, read resampled to {plan.target_gsd_m:.3g} m "
              "(input.target_gsd); its outputs stay on its own grid", file=sys.stderr)
    seen, trained = plan.target_gsd_m if job.scale != 1 else gsd, plan.trained_gsd_m
    if seen and trained and max(seen, trained) / min(seen, trained) > GSD_WARNING_RATIO:
        print(f"warning: {job.path}: the model sees {seen:.3g} m per pixel, but was trained on {trained:.3g} m "
              "imagery: buildings look a different size than in training, so expect lower quality", file=sys.stderr)
    tag = _digest([plan.settings, job.path, _identity(job.path, cfg)])[:12]
    job.work = join(plan.output, WORK_DIR, f"{job.key}-{tag}")
    job.out = join(plan.output, job.key)
    job.blocks = segment_blocks(job.info.width, job.info.height, cfg.segment.block_size, cfg.segment.tile_size,
                                cfg.segment.overlap)
    done = _finished_blocks(job.work, cfg)
    job.todo = [block.index for block in job.blocks if block_file(block.index) not in done]


def plan_segment(inputs: list[str], checkpoint: str, output: str, cfg: Config,
                 labels: list[str] | tuple[str, ...] = (), *,
                 model_factory: Callable[[], torch.nn.Module] | None = None) -> SegmentPlan:
    """Check the checkpoint, the output and every input, and plan the blocks (bad inputs marked failed).

    `model_factory` (benchmarks only) runs a stand-in instead of the checkpoint's model. It is named in the
    settings, so its block files are never reused by a run of the model, and in summary.json.

    Raises InputError (nothing can start) for a bad checkpoint, an unwritable output or labels that do
    not pair with the inputs.
    """
    started_at, started_cpu = time.time(), time.process_time()
    checkpoint = absolute(str(checkpoint))
    loaded = load_model(checkpoint, cfg.model, cfg.s3)
    cfg = dataclasses.replace(cfg, input=_effective_input(cfg, loaded.input_cfg))
    threshold = next(t for t in (cfg.segment.threshold, loaded.threshold, DEFAULT_THRESHOLD) if t is not None)
    seg = cfg.segment
    settings = dict(format=BLOCK_FORMAT, checkpoint_sha256=loaded.checkpoint.sha256,
                    model=dataclasses.asdict(loaded.model_cfg), input=dataclasses.asdict(cfg.input),
                    tile_size=seg.tile_size, overlap=seg.overlap, block_size=seg.block_size, threshold=threshold,
                    precision=seg.precision, gpu=seg.gpus_per_actor > 0, write_probability=seg.write_probability,
                    write_polygons=seg.write_polygons, preview_size=seg.preview_size, tta=seg.tta)
    trained_gsd = loaded.checkpoint.checkpoint.gsd_m if loaded.checkpoint.checkpoint else None
    target_gsd = cfg.input.target_gsd or trained_gsd
    settings["target_gsd"] = target_gsd
    if model_factory is not None:
        settings["stand_in_model"] = repr(model_factory)
    output = absolute(str(output)).rstrip("/")
    try:  # fail now, not after the compute, if the output cannot be written
        write_bytes(join(output, WORK_DIR, "settings.json"), json.dumps(settings, indent=1).encode(), cfg.s3)
    except OSError as exc:
        raise InputError(describe_error(output, exc)) from None
    plan = SegmentPlan(cfg, checkpoint, output, threshold, settings, [], started_at, started_cpu, model_factory,
                       trained_gsd, target_gsd)
    sources = expand(inputs, cfg, fail_alone=True)
    good = [source for source in sources if not source.error]
    label_paths = match_labels(good, [absolute(str(p)) for p in labels], cfg.s3) if labels else [None] * len(good)
    plan.jobs = [InputJob(source.path, error=source.error) for source in sources if source.error]
    for source, key, label in zip(good, input_keys([source.name for source in good]), label_paths, strict=True):
        job = InputJob(source.path, key, labels=label)
        try:
            _plan_input(job, plan)
        except (InputError, OSError) as exc:
            job.error = str(exc) if isinstance(exc, InputError) else describe_error(job.path, exc)
        plan.jobs.append(job)
    for job in plan.jobs:
        if job.error:
            print(f"error: {job.error}", file=sys.stderr)
    return plan


class BlockSegmenter:
    """Ray Data actor: loads the model once; then per block, on its device: forward passes, blending and
    thresholding, returning the core's uint8 mask (and probability) for the writers."""

    def __init__(self, checkpoint: str, cfg: Config, threshold: float,
                 model_factory: Callable[[], torch.nn.Module] | None = None):
        self.cfg, self.threshold = cfg, threshold
        seg = cfg.segment
        self.device = pick_device(seg.gpus_per_actor)
        if self.device.type == "cpu":
            torch.set_num_threads(seg.torch_threads or max(1, int(seg.cpus_per_actor)))
        model = model_factory() if model_factory else load_model(checkpoint, cfg.model, cfg.s3).model
        model = model.to(self.device)
        if seg.channels_last:  # faster on CUDA, and with oneDNN on the CPU too
            model = model.to(memory_format=torch.channels_last)
        # torch.compile returns a module (OptimizedModule); its annotation says only "a callable"
        self.model = cast(torch.nn.Module, torch.compile(model)) if seg.compile else model
        self.keep_probability = seg.write_probability or seg.write_polygons  # polygons carry a confidence

    def _segment(self, row: dict) -> dict:
        seg = self.cfg.segment
        started, started_at = time.perf_counter(), time.time()
        block = block_of(row)
        resampled = float(row["gsd_scale"]) != 1
        # Tiles on the mosaic's own grid, so that blocks agree where they meet; a resampled block has a grid of
        # its own, and its halo carries the context instead.
        tiles = None if resampled else block_tiles(block, int(row["mosaic_width"]), int(row["mosaic_height"]),
                                                   seg.tile_size, seg.overlap)
        prediction = predict_block(self.model, row["rgb"], row["valid"], tile_size=seg.tile_size,
                                   overlap=seg.overlap, batch_size=seg.batch_size, device=self.device,
                                   precision=seg.precision, channels_last=seg.channels_last, tta=seg.tta,
                                   origins=tiles)
        on_input_grid = resample_probability(prediction.probability, row["valid_native"]) if resampled \
            else prediction.probability
        probability = block.crop(on_input_grid)
        clock = time.thread_time()
        mask = to_mask(probability, self.threshold)
        probability_bytes = to_probability_bytes(probability) if self.keep_probability else np.zeros(0, np.uint8)
        cpu = {f"cpu_{step}": seconds for step, seconds in prediction.cpu_s.items()}
        return dict(mask=mask, probability=probability_bytes, tiles=prediction.tiles_computed,
                    skipped=prediction.tiles_skipped, pixels=block.width * block.height,
                    seconds=time.perf_counter() - started, cpu_threshold=time.thread_time() - clock,
                    started_at=started_at, finished_at=time.time(), **cpu)

    def __call__(self, batch: dict) -> dict:
        rows = []
        for i in range(len(batch["index"])):
            row = {name: batch[name][i] for name in batch if name not in ("rgb", "valid", "valid_native")}
            result = dict(mask=np.zeros((0, 0), np.uint8), probability=np.zeros(0, np.uint8), tiles=0, skipped=0,
                          pixels=0, seconds=0.0, started_at=0.0, finished_at=0.0,
                          **{f"cpu_{step}": 0.0 for step in INFERENCE_STEPS})
            if not row["error"]:
                try:
                    result = self._segment({**row, "rgb": batch["rgb"][i], "valid": batch["valid"][i],
                                            "valid_native": batch["valid_native"][i]})
                except Exception as exc:
                    row["error"] = str(exc) if isinstance(exc, InputError) else describe_error(str(row["path"]), exc)
            rows.append({**row, **result})
        return {name: _column([row[name] for row in rows]) for name in rows[0]}


def _column(values: list) -> np.ndarray:
    """A batch column: arrays of one shape stack; of several shapes, an object column (numpy can't stack them)."""
    if all(isinstance(value, np.ndarray) for value in values):
        if len({value.shape for value in values}) == 1:
            return np.stack(values)
        column = np.empty(len(values), object)
        column[:] = values
        return column
    return np.array(values)


def _descriptors(plan: SegmentPlan) -> list[dict]:
    """One plain row per block to compute: its input, its Block fields, its block file and its preview scale."""
    seg = plan.cfg.segment
    rows = []
    for number, job in enumerate(plan.jobs):
        if job.error:
            continue
        assert job.info is not None
        scale = preview_scale(job.info.width, job.info.height, seg.preview_size) if seg.preview_size else 0.0
        rows += [dict(input=number, path=job.path, dest=join(job.work, block_file(index)), error="",
                      mosaic_width=job.info.width, mosaic_height=job.info.height, preview_scale=scale,
                      gsd_scale=job.scale,
                      **dataclasses.asdict(job.blocks[index])) for index in job.todo]
    return rows


def _pool_size(setting: int, cpus_each: float, spare: float) -> int:
    """`setting`, or with 0 as many actors of `cpus_each` CPUs as `spare` CPUs hold (at least one)."""
    return setting or max(1, math.floor(spare / cpus_each))


def _cpus_beside(seg: SegmentConfig, assemblers: int) -> float:
    """The cluster's CPUs beyond the inference actors and `assemblers` assemblers: the readers' and writers'."""
    reserved = seg.actors * seg.cpus_per_actor + assemblers * seg.cpus_per_assembly
    return ray.cluster_resources().get("CPU", 0.0) - reserved


def _dataset(plan: SegmentPlan, items: list[dict]):
    cfg = plan.cfg
    seg = cfg.segment
    # Readers and writers share the CPUs beside the inference actors and the assemblers, so that mosaics are
    # assembled while the stream runs instead of after the pools wind down.
    spare = max(0.0, _cpus_beside(seg, seg.assemblers)) / 2
    readers = _pool_size(seg.readers, seg.cpus_per_reader, spare)
    writers = _pool_size(seg.writers, seg.cpus_per_writer, spare)
    return (ray.data.from_items(items, override_num_blocks=len(items))
            # Ray takes a callable class (run as an actor pool) where its annotation names only functions
            .map(BlockReader, fn_constructor_kwargs=dict(input_cfg=cfg.input, s3=cfg.s3, http=cfg.http),  # type: ignore[arg-type]
                 num_cpus=seg.cpus_per_reader, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=readers))
            .map_batches(BlockSegmenter, fn_constructor_kwargs=dict(
                checkpoint=plan.checkpoint, cfg=cfg, threshold=plan.threshold, model_factory=plan.model_factory),
                batch_size=1, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=seg.actors, max_concurrent_calls_per_actor=seg.blocks_per_actor,
                                                   enable_true_multi_threading=seg.blocks_per_actor > 1),
                num_cpus=seg.cpus_per_actor, num_gpus=seg.gpus_per_actor)
            .map(BlockWriter,  # type: ignore[arg-type]
                 fn_constructor_kwargs=dict(s3=cfg.s3, keep_probability=seg.write_probability,
                                            polygons=seg.write_polygons),
                 num_cpus=seg.cpus_per_writer, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=writers)))


def _report(metrics: dict) -> str:
    text = (f"{metrics['input']}: {metrics['width']}x{metrics['height']} px, {metrics['blocks']['total']} blocks "
            f"({metrics['blocks']['computed']} computed), {metrics['tiles']['computed']} tiles "
            f"({metrics['tiles']['skipped_nodata']} nodata skipped), {metrics['building_count']} buildings")
    if "iou" in metrics:
        text += f", IoU {metrics['iou']:.3f} F1 {metrics['f1']:.3f}"
    if "objects" in metrics:
        text += f", object F1 {metrics['objects']['f1']:.3f}"
    return text + f" -> {metrics['output']}/mask.tif"


def _outputs(job: InputJob) -> MosaicOutputs:
    assert job.info is not None
    return MosaicOutputs(job.info, job.key, tuple(job.blocks), job.work, job.out, job.labels)


def run_segment(plan: SegmentPlan) -> dict:
    """Segment every planned input (on the running Ray, else a local one); writes OUT/summary.json, returns it."""
    cfg = plan.cfg
    jobs = [job for job in plan.jobs if not job.error]
    init_ray(cfg.storage, [("--output", plan.output), ("--checkpoint", plan.checkpoint),
                           *(("input", job.path) for job in jobs),
                           *(("labels", job.labels or "") for job in jobs)])
    pending = {n: len(job.todo) for n, job in enumerate(plan.jobs) if not job.error}
    log = RunLog({n: MosaicRun(job.key, len(job.blocks), len(job.todo)) for n, job in enumerate(plan.jobs)},
                 plan.started_at)
    results: dict[int, dict] = {}

    def assembled(number: int, metrics: dict) -> None:
        results[number] = metrics
        log.assembled(number, metrics)
        print(_report(metrics), flush=True)

    def failed(number: int, message: str) -> None:
        plan.jobs[number].error = message
        print(f"error: {message}", file=sys.stderr, flush=True)

    assemblies = Assemblies(cfg, min(cfg.segment.assemblers, max(1, len(pending))),
                            lambda number: _outputs(plan.jobs[number]), assembled, failed)

    def finish(number: int) -> None:
        job = plan.jobs[number]
        assemblies.finish(number, dict(input=job.path, output=job.out, **log.mosaics[number].metrics(plan.threshold)))

    for number in pending:
        remove_outputs(_outputs(plan.jobs[number]), cfg)
    for number in [n for n, count in pending.items() if count == 0]:
        finish(number)
    items = _descriptors(plan)
    seg = cfg.segment
    if items and _cpus_beside(seg, assemblies.count) >= seg.cpus_per_reader + seg.cpus_per_writer:
        assemblies.start()  # beside the stream's pools (see its docstring)
    try:
        for row in (_dataset(plan, items).iter_rows() if items else ()):
            number = int(row["input"])
            job = plan.jobs[number]
            if not row["error"]:
                log.block_done(number, row, STREAM_STAGES)
                if not job.error:
                    assemblies.ready(number, [int(row["index"])], job.written_before)
            elif not job.error:
                job.error = str(row["error"])
                assemblies.abandon(number)
                print(f"error: {job.error}", file=sys.stderr, flush=True)
            pending[number] -= 1
            if pending[number] == 0 and not job.error:
                finish(number)
            assemblies.collect()
    except Exception as exc:
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        for number, count in pending.items():
            if count > 0 and not plan.jobs[number].error:
                plan.jobs[number].error = f"{plan.jobs[number].path}: segmentation pipeline failed ({reason})"
                assemblies.abandon(number)
                print(f"error: {plan.jobs[number].error}", file=sys.stderr, flush=True)
    log.end_progress()
    assemblies.collect(wait=True)
    assemblies.close()
    log.ledger["driver"] = time.process_time() - plan.started_cpu
    return _summary(plan, log, results)


def _summary(plan: SegmentPlan, log: RunLog, results: dict[int, dict]) -> dict:
    seconds = log.now()
    counts = {key: log.total(key) for key in ("blocks", "tiles", "pixels")}
    summary = dict(checkpoint=plan.checkpoint, output=plan.output, threshold=plan.threshold,
                   settings_sha256=_digest(plan.settings), seconds=round(seconds, 3),
                   ok=sum(1 for job in plan.jobs if not job.error), failed=sum(1 for job in plan.jobs if job.error),
                   blocks_computed=counts["blocks"], tiles_computed=counts["tiles"],
                   tiles_per_s=round(counts["tiles"] / seconds, 3),
                   megapixels_per_s=round(counts["pixels"] / 1e6 / seconds, 4),
                   cpu_s={stage: round(cpu, 3) for stage, cpu in log.ledger.items()},
                   inputs=[dict(input=job.path, key=job.key, status="failed", error=job.error,
                                timeline=log.mosaics[n].timeline()) if job.error else
                           dict(input=job.path, key=job.key, status="ok", timeline=log.mosaics[n].timeline(),
                                metrics=results.get(n)) for n, job in enumerate(plan.jobs)])
    if plan.model_factory is not None:
        summary["stand_in_model"] = plan.settings["stand_in_model"]
    try:
        write_bytes(join(plan.output, "summary.json"), json.dumps(summary, indent=1).encode(), plan.cfg.s3)
    except Exception as exc:
        raise InputError(describe_error(join(plan.output, "summary.json"), exc)) from None
    return summary
