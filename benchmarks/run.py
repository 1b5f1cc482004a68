"""CPU benchmark suite: seed-workflow baseline vs the segment pipeline, limits, scale (time, peak RSS), training.

    python benchmarks/run.py --quick      # small sizes, < 10 minutes on 2 cores
    python benchmarks/run.py              # the full sizes reported in BENCHMARKS.md

Prints one markdown table per outcome (figures are measured, never stored) and writes them, with the raw
figures as JSON, to --output (default WORKDIR/results-{quick,full}). Sections (--only/--skip): limits,
compare, scale, s3, train.

- limits: FLOPs per 384 tile of every backbone (torch FlopCounterMode, multiply-add = 2 FLOPs) and the
  machine's fp32 matmul and conv rates. The model-only ceiling of the benchmark model (in-memory tiles, no
  I/O, no blending) is measured two ways and the higher one is used: one process using every core (batch
  sizes 1/2/4/8, NCHW and channels_last), and one single-threaded process per core running side by side
  (the pipeline's own layout, at the batch size that is fastest for one single-threaded process, which is
  the batch the pipeline runs; channels_last, as segment.channels_last makes the actors run).
- compare: the notebook workflow this project replaces (tiles as PNG files, one at a time, stitched without
  overlap) against jobs/segment.py's pipeline (plan_segment + run_segment on a local Ray) with overlap 0 and
  the default overlap 64, same checkpoint, same cores; pipeline efficiency = end-to-end tiles/s over the
  model-only ceiling measured in this run (before and after the pipeline runs; the higher one is used).
  "Steady" rates are the actors' mean tiles/s while busy times the number of actors that had work (the pool
  size, or fewer when the mosaic has fewer blocks): what the pool sustains once started, leaving out
  start-up, the tail (fewer blocks left than actors) and assembly.
- scale: wall time and peak RSS (driver + every Ray process, sampled every 0.2 s) for growing mosaics
  (VRTs tiling copies of one generated city), and the same on a loopback S3 server (moto, left out of the
  RSS sum) with real GeoTIFFs. A size equal to the comparison's mosaic reuses its overlap-64 run.
- train: samples/s of configs/dev.yaml training with 1 and 2 CPU workers (epoch 2 of 2), scaling efficiency.

Ray: the script starts its own local Ray with one logical CPU per core. The segment pipeline runs one
inference actor per core, each with one torch thread (on 2 cores that is 1.16x the tiles/s of one actor
with 2 threads, which also stalls whenever another process takes one of its cores), and the actors leave
one logical CPU to a block reader, a block writer and the assembler (as configs/dev.yaml). Reading
therefore shares the cores with compute, and its cost is part of the pipeline's wall time. Training runs on
a fresh local Ray (as benchmarks/train_to_iou.py).
Ray's own start (ray.init) happens once and is reported separately; each pipeline run's wall time counts
from plan_segment (checkpoint check, planning) to run_segment's return: actor start, model load, reading,
inference, blending, block writes and the assembly of mask.tif/preview.png/metrics.json are all counted.
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from common import REPO, TILE, fmt, log, table

SECTIONS = ("limits", "compare", "scale", "s3", "train")
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
BATCHES = (1, 2, 4, 8)
CORES = os.cpu_count() or 1  # the seed workflow's torch threads, the number of actors, Ray's logical CPUs

PROFILES = {
    # Quick: the same measurements on small sizes. 16384^2 at 384-px tiles is ~3,200 resnet18 tiles (several
    # minutes of pure compute on 2 cores), so the quick scale series is 1536/3072/6144 (the same 16x span).
    # The comparison needs a mosaic large enough for the pipeline's start-up (Ray Data, actor processes
    # importing torch: 10-17 s on 2 cores) to be paid back; 6144^2 is 256 tiles.
    "quick": dict(backbone="resnet18", width=16, compare_size=6144, scale_sizes=(1536, 3072, 6144),
                  s3_sizes=(2048,), train_city=2048, ceiling_seconds=2.0, rate_seconds=1.0, city_size=2048),
    "full": dict(backbone="resnet18", width=16, compare_size=8192, scale_sizes=(4096, 8192, 16384),
                 s3_sizes=(4096, 8192), train_city=2048, ceiling_seconds=6.0, rate_seconds=3.0, city_size=4096),
    # Smoke: checks that the script runs end to end (a couple of minutes); its figures mean nothing.
    "smoke": dict(backbone="resnet18", width=16, compare_size=768, scale_sizes=(512, 1024), s3_sizes=(512,),
                  train_city=1536, ceiling_seconds=0.5, rate_seconds=0.3, city_size=768),
}


# ---------------------------------------------------------------- limits

def section_limits(p: dict, results: dict) -> None:
    import torch

    rows = []
    for backbone in BACKBONES:
        for width in sorted({256, p["width"]}):
            gflop, params = common.model_flops(backbone, width)
            rows.append(dict(backbone=backbone, decoder_width=width, gflop_per_tile=gflop, parameters=params))
    results["flops"] = rows
    torch.set_num_threads(CORES)
    matmul = common.matmul_gflops(2048, min_seconds=p["rate_seconds"])
    conv, conv_shape = common.conv_gflops(min_seconds=p["rate_seconds"])
    results["rates"] = dict(threads=CORES, matmul_gflops=matmul, matmul_shape="2048x2048 @ 2048x2048 fp32",
                            conv_gflops=conv, conv_shape=conv_shape + " fp32")
    log(f"matmul {matmul:.1f} GFLOP/s, conv {conv:.1f} GFLOP/s ({CORES} threads)")


def formatted(model):
    """{format: model}: the model as loaded (NCHW) and a channels_last copy, as the segment actor converts it."""
    import copy

    import torch

    return {"nchw": model, "channels_last": copy.deepcopy(model).to(memory_format=torch.channels_last)}


def ceiling_sweep(models: dict, p: dict, threads: int, batches=BATCHES) -> dict:
    """Model-only tiles/s per batch size and memory format (in-memory random tiles, this process)."""
    import torch

    torch.set_num_threads(threads)
    out = {}
    for batch in batches:
        out[batch] = {fmt_: common.model_tiles_per_s(model, batch, min_seconds=p["ceiling_seconds"],
                                                     channels_last=(fmt_ == "channels_last"))
                      for fmt_, model in models.items()}
        log(f"ceiling, 1 process x {threads} thread(s), batch {batch}: "
            + ", ".join(f"{k} {v:.3f}" for k, v in out[batch].items()) + " tiles/s")
    torch.set_num_threads(CORES)
    return out


def measure_ceiling(checkpoint: str, models: dict, p: dict) -> dict:
    """The model-only ceiling two ways (see the module doc) and the batch size the pipeline's actors run."""
    one_process = ceiling_sweep(models, p, CORES)
    one_thread = ceiling_sweep({"channels_last": models["channels_last"]}, p, 1)
    batch = max(one_thread, key=lambda b: one_thread[b]["channels_last"])
    side_by_side = common.concurrent_tiles_per_s(checkpoint, CORES, batch, seconds=2 * p["ceiling_seconds"])
    log(f"ceiling, {CORES} processes x 1 thread side by side, batch {batch}: {side_by_side:.3f} tiles/s")
    best_one_process = max(v for rates in one_process.values() for v in rates.values())
    return dict(one_process=one_process, one_thread=one_thread, batch=batch, side_by_side=[side_by_side],
                ceiling=max(best_one_process, side_by_side))


# ---------------------------------------------------------------- the seed workflow (notebook) baseline

def seed_workflow(image_path: str, checkpoint: str, work: Path, threshold: float = 0.5) -> dict:
    """The notebook this project replaces, faithfully: read the mosaic, crop it into 384-px tiles saved as PNG
    files (edge tiles zero-padded), then for each file: load, divide by 255, predict alone (batch 1),
    threshold 0.5, save the tile mask as a PNG; finally stitch the mask files without overlap, crop the
    padding and save the full mask. Same model as the pipeline; torch's default of one thread per core."""
    import cv2
    import numpy as np
    import rasterio
    import torch

    from segcore.checkpoint import load_model
    from segcore.config import ModelConfig

    torch.set_num_threads(CORES)
    shutil.rmtree(work, ignore_errors=True)
    tiles_dir, masks_dir = work / "tiles", work / "masks"
    tiles_dir.mkdir(parents=True)
    masks_dir.mkdir(parents=True)
    stages = {}
    load_before = common.load_average()
    began = time.perf_counter()
    with rasterio.open(image_path) as src:
        image = np.moveaxis(src.read([1, 2, 3]), 0, 2)  # H x W x RGB
    height, width = image.shape[:2]
    rows, cols = -(-height // TILE), -(-width // TILE)
    padded = np.zeros((rows * TILE, cols * TILE, 3), np.uint8)
    padded[:height, :width] = image
    for r in range(rows):
        for c in range(cols):
            tile = padded[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE]
            cv2.imwrite(str(tiles_dir / f"tile_{r}_{c}.png"), cv2.cvtColor(tile, cv2.COLOR_RGB2BGR))
    del image, padded
    stages["crop_save_tiles"] = time.perf_counter() - began

    t = time.perf_counter()
    model = load_model(checkpoint, ModelConfig()).model.eval()
    stages["load_model"] = time.perf_counter() - t
    t = time.perf_counter()
    names = sorted(p.name for p in tiles_dir.glob("*.png"))
    with torch.no_grad():
        for name in names:
            rgb = cv2.cvtColor(cv2.imread(str(tiles_dir / name)), cv2.COLOR_BGR2RGB)
            x = torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0)
            prob = torch.sigmoid(model(x))[0, 0].numpy()
            mask = (prob > threshold).astype(np.uint8) * 255
            cv2.imwrite(str(masks_dir / name.replace("tile_", "mask_")), mask)
    stages["predict_tiles"] = time.perf_counter() - t

    t = time.perf_counter()
    full = np.zeros((rows * TILE, cols * TILE), np.uint8)
    for path in masks_dir.glob("mask_*.png"):
        r, c = (int(v) for v in path.stem.split("_")[1:])
        full[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE] = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(work / "mask.png"), full[:height, :width])
    stages["stitch_save_mask"] = time.perf_counter() - t
    seconds = time.perf_counter() - began
    shutil.rmtree(work, ignore_errors=True)
    return dict(workflow="seed notebook (batch 1, PNG tiles)", overlap=0, batch=1, tiles=len(names),
                seconds=seconds, tiles_per_s=len(names) / seconds, megapixels_per_s=width * height / 1e6 / seconds,
                stages=stages, model_tiles_per_s=len(names) / stages["predict_tiles"],
                load=(load_before, common.load_average()))


# ---------------------------------------------------------------- the segment pipeline

def segment_cfg(overlap: int, batch: int, s3_endpoint: str | None = None):
    from segcore.config import load_config

    overrides = [f"segment.tile_size={TILE}", f"segment.overlap={overlap}", f"segment.batch_size={batch}",
                 f"segment.actors={CORES}", f"segment.cpus_per_actor={(CORES - 1) / CORES}",
                 "segment.cpus_per_reader=0.25", "segment.cpus_per_writer=0.25", "segment.cpus_per_assembly=0.5",
                 "segment.readers=1", "segment.writers=1",
                 "segment.torch_threads=1", "segment.threshold=0.5"]
    if s3_endpoint:
        overrides.append(f"s3.endpoint_url={s3_endpoint}")
    return load_config(REPO / "configs" / "segment.yaml", overrides)


def run_pipeline(image: str, checkpoint: str, output: str, cfg, *, exclude_pids=(), label: str = "") -> dict:
    """plan_segment + run_segment (what jobs/segment.py does after ray.init), timed and RSS-sampled."""
    from segcore.pipelines.segment import plan_segment, run_segment
    from segcore.storage import filesystem, is_s3

    fs = filesystem(output, cfg.s3)
    if fs.exists(output):
        fs.rm(output, recursive=True)
    load_before = common.load_average()
    with common.TreeRssSampler(exclude=exclude_pids) as rss:
        began = time.perf_counter()
        plan = plan_segment([image], checkpoint, output, cfg)
        summary = run_segment(plan)
        seconds = time.perf_counter() - began
    if summary["failed"]:
        raise RuntimeError(f"segment run failed: {summary['inputs']}")
    metrics = summary["inputs"][0]["metrics"]
    pixels = metrics["width"] * metrics["height"]
    tiles = summary["tiles_computed"]
    actor_seconds = metrics["seconds"]  # summed over the actors: time inside predict + block write
    if not is_s3(output):
        shutil.rmtree(output, ignore_errors=True)
    else:
        fs.rm(output, recursive=True)
    actors = cfg.segment.actors
    busy = min(actors, metrics["blocks"]["computed"])  # a 1-block mosaic keeps one actor busy, not the pool
    result = dict(workflow=label or "segment pipeline", overlap=cfg.segment.overlap, batch=cfg.segment.batch_size,
                  actors=actors, busy_actors=busy, steady_tiles_per_s=tiles / (actor_seconds / busy),
                  width=metrics["width"], height=metrics["height"], blocks=metrics["blocks"]["total"], tiles=tiles,
                  seconds=seconds, tiles_per_s=tiles / seconds, megapixels_per_s=pixels / 1e6 / seconds,
                  actor_seconds=actor_seconds, outside_actor_seconds=seconds - actor_seconds / busy,
                  peak_rss_mib=rss.peak_mib, rss_top=rss.top(), rss_samples=rss.samples,
                  load=(load_before, common.load_average()))
    log(f"{result['workflow']} {metrics['width']}x{metrics['height']} overlap {result['overlap']}: {tiles} tiles in "
        f"{seconds:.1f} s ({result['tiles_per_s']:.3f} tiles/s; actors busy {actor_seconds:.1f} s in all), "
        f"peak RSS {rss.peak_mib:.0f} MiB ({rss.top(8)})")
    return result


def add_efficiency(row: dict, ceiling: float) -> dict:
    """A pipeline row's end-to-end and steady tiles/s as fractions of the model-only ceiling."""
    row["efficiency"] = row["tiles_per_s"] / ceiling
    row["steady_efficiency"] = row["steady_tiles_per_s"] / ceiling
    return row


def section_compare(p: dict, results: dict, work: Path, base_image: Path, checkpoint: str) -> None:
    from segcore.checkpoint import load_model
    from segcore.config import ModelConfig

    image = str(common.mosaic(work, base_image, p["compare_size"]))
    limits = measure_ceiling(checkpoint, formatted(load_model(checkpoint, ModelConfig()).model.eval()), p)
    best = limits["batch"]
    rows = [seed_workflow(image, checkpoint, work / "seed")]
    log(f"seed workflow: {rows[0]['tiles']} tiles in {rows[0]['seconds']:.1f} s")
    for overlap in (0, 64):
        rows.append(run_pipeline(image, checkpoint, str(work / f"out-compare-{overlap}"), segment_cfg(overlap, best),
                                 label=f"segment pipeline ({CORES} actors x 1 thread, batch {best})"))
    after = common.concurrent_tiles_per_s(checkpoint, CORES, best, seconds=2 * p["ceiling_seconds"])
    log(f"ceiling after the pipeline runs, {CORES} processes x 1 thread: {after:.3f} tiles/s")
    limits["side_by_side"].append(after)
    limits["ceiling"] = ceiling = max(limits["ceiling"], after)
    for row in rows[1:]:
        row["speedup_vs_seed"] = rows[0]["seconds"] / row["seconds"]
        row["mpx_ratio_vs_seed"] = row["megapixels_per_s"] / rows[0]["megapixels_per_s"]
        add_efficiency(row, ceiling)
    gflop, _ = common.model_flops(p["backbone"], p["width"])
    results["compare"] = dict(image=image, size=p["compare_size"], backbone=p["backbone"], width=p["width"],
                              gflop_per_tile=gflop, rows=rows, **limits)


# ---------------------------------------------------------------- scale, local and S3

def section_scale(p: dict, results: dict, work: Path, base_image: Path, checkpoint: str, ceiling: float,
                  batch: int) -> None:
    rows = []
    compare = results.get("compare")
    for size in p["scale_sizes"]:
        image = str(common.mosaic(work, base_image, size))
        if compare and compare["image"] == image and compare["rows"][2]["batch"] == batch:
            # The comparison's overlap-64 run is this very run (same mosaic, config and checkpoint): reuse it.
            row = dict(compare["rows"][2], workflow="local " + ("GeoTIFF" if image.endswith(".tif") else "VRT")
                       + " (the comparison's run)")
            row.pop("speedup_vs_seed", None), row.pop("mpx_ratio_vs_seed", None)
            row["size"] = size
            rows.append(row)
            continue
        row = run_pipeline(image, checkpoint, str(work / f"out-scale-{size}"), segment_cfg(64, batch),
                           label="local " + ("GeoTIFF" if image.endswith(".tif") else "VRT"))
        row["size"] = size
        rows.append(add_efficiency(row, ceiling))
    results["scale"] = rows


def section_s3(p: dict, results: dict, work: Path, base_image: Path, checkpoint: str, ceiling: float,
               batch: int) -> None:
    from tests.servers import MotoServer

    server = MotoServer().start()
    rows = []
    try:
        for size in p["s3_sizes"]:
            local = base_image if size == p["city_size"] else \
                common.materialize(common.mosaic(work, base_image, size), work / f"mosaic-{size}.tif")
            url = common.upload(server, local, f"s3://bench/in/city-{size}.tif")
            row = run_pipeline(url, checkpoint, f"s3://bench/out-{size}", segment_cfg(64, batch, server.endpoint),
                               exclude_pids=[server.proc.pid], label="S3 GeoTIFF")
            row["size"] = size
            rows.append(add_efficiency(row, ceiling))
    finally:
        server.stop()
    results["s3"] = rows


# ---------------------------------------------------------------- training

def section_train(p: dict, results: dict, work: Path) -> None:
    import ray

    from segcore.config import load_config
    from segcore.pipelines.prepare import prepare_dataset
    from segcore.pipelines.train import run_training

    city = common.city(work, p["train_city"], seed=0)  # split_block 768: >= 1536 px gives train, val and test
    patches = work / f"patches-{p['train_city']}"
    cfg = load_config(REPO / "configs" / "dev.yaml")
    if not (patches / "manifest.csv").exists():
        shutil.rmtree(patches, ignore_errors=True)
        prepare_dataset([str(city.image)], [str(city.buildings)], str(patches), cfg)
    rows = []
    for workers in (1, 2):
        run_dir = work / f"train-{workers}w-{time.strftime('%Y%m%d-%H%M%S')}"
        cpus = 1.0 if workers == 1 else 1.0 / workers  # as benchmarks/train_to_iou.py: one torch thread per worker
        cfg = load_config(REPO / "configs" / "dev.yaml", [
            "train.epochs=2", f"train.num_workers={workers}", f"train.cpus_per_worker={cpus}",
            f"train.data_root={patches}", f"train.run_dir={run_dir}"])
        began = time.perf_counter()
        run_training(cfg)
        seconds = time.perf_counter() - began
        with open(run_dir / "metrics.csv") as handle:
            history = list(csv.DictReader(handle))
        last = history[-1]
        total = float(last["samples_per_s"])  # all workers' samples / rank 0's training seconds of the epoch
        rows.append(dict(workers=workers, cpus_per_worker=cpus, torch_threads=1, epoch=int(last["epoch"]),
                         samples_per_s=total, samples_per_s_per_worker=total / workers,
                         epoch_seconds=float(last["epoch_seconds"]), job_seconds=seconds))
        log(f"training {workers} worker(s): {total:.2f} samples/s (epoch {last['epoch']})")
        shutil.rmtree(run_dir, ignore_errors=True)
    counts = {}
    manifest = patches / "manifest.csv"
    with open(manifest) as handle:
        for row in csv.DictReader(handle):
            counts[row["split"]] = counts.get(row["split"], 0) + 1
    results["train"] = dict(city=p["train_city"], patches=counts, rows=rows,
                            scaling_efficiency=rows[1]["samples_per_s"] / (2 * rows[0]["samples_per_s"]))
    ray.shutdown()


# ---------------------------------------------------------------- report

def report(results: dict, p: dict, args) -> str:
    m = results["machine"]
    out = [f"## Results ({results['profile']}) — {m['date']}",
           f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['memory_gib']} GiB; torch {m['torch']}, "
           f"ray {m['ray']}. Load average at start {m['load_average']}, at end {results.get('load_end')}. "
           f"Command: `{results['command']}`."]
    if "ray_init_seconds" in results:
        out.append(f"Local Ray start (ray.init, num_cpus={results['ray_cpus']}; once, not in any wall time below): "
                   f"{results['ray_init_seconds']:.1f} s.")
    if "flops" in results:
        r = results["rates"]
        out += ["", "### Limits: FLOPs per 384x384 tile (fp32; multiply-add = 2 FLOPs, torch FlopCounterMode)",
                table(["backbone", "decoder width", "GFLOP / tile", "parameters"],
                      [[f["backbone"], f["decoder_width"], fmt(f["gflop_per_tile"], 1), f"{f['parameters']:,}"]
                       for f in results["flops"]]),
                "", f"Machine rates, {r['threads']} threads: matmul {r['matmul_gflops']:.1f} GFLOP/s "
                    f"({r['matmul_shape']}); conv {r['conv_gflops']:.1f} GFLOP/s ({r['conv_shape']})."]
    if "compare" in results:
        c = results["compare"]
        out += ["", f"### Model-only ceiling: refinenet-{c['backbone']}/{c['width']} ({c['gflop_per_tile']:.1f} "
                    f"GFLOP/tile), in-memory 384 tiles",
                table(["batch", f"1 process x {CORES} threads, NCHW tiles/s", "same, channels_last tiles/s",
                       "1 process x 1 thread, channels_last tiles/s"],
                      [[b, fmt(v["nchw"], 3), fmt(v["channels_last"], 3), fmt(c["one_thread"][b]["channels_last"], 3)]
                       for b, v in c["one_process"].items()]),
                "", f"The pipeline's batch = the fastest for one single-threaded process: {c['batch']}. {CORES} "
                    f"single-threaded processes side by side at that batch (the actors' layout), before and after "
                    f"the pipeline runs: " + ", ".join(f"{v:.3f}" for v in c["side_by_side"]) + " tiles/s in all. "
                    f"Ceiling used = the highest rate of any of these: **{c['ceiling']:.3f} tiles/s** "
                    f"({c['ceiling'] * c['gflop_per_tile']:.0f} GFLOP/s).",
                "", f"### Seed workflow vs segment pipeline: {c['size']}x{c['size']} mosaic, same checkpoint "
                    f"(random weights, refinenet-{c['backbone']}/{c['width']}), {CORES} cores",
                table(["workflow", "overlap", "batch", "tiles", "wall s", "tiles/s", "Mpx/s", "speed-up vs seed",
                       "efficiency vs ceiling", "steady tiles/s (efficiency)", "load avg before/after"],
                      [[r["workflow"], r["overlap"], r["batch"], r["tiles"], fmt(r["seconds"], 1),
                        fmt(r["tiles_per_s"], 3), fmt(r["megapixels_per_s"], 3), fmt(r.get("speedup_vs_seed")),
                        fmt(r.get("efficiency")), _steady(r), _load(r)] for r in c["rows"]])]
        seed = c["rows"][0]
        out.append("")
        out.append("Seed workflow stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in seed["stages"].items())
                   + f"; its model-only rate at batch 1 inside the loop: {seed['model_tiles_per_s']:.3f} tiles/s.")
        out.append("Pipeline wall time split: " + "; ".join(
            f"overlap {r['overlap']}: actors busy {r['actor_seconds'] / r['busy_actors']:.1f} s each, the rest (start, "
            f"model load, first read, tail, assembly) {r['outside_actor_seconds']:.1f} s" for r in c["rows"][1:]) + ".")
    for key, title in (("scale", "Scale, local mosaics"), ("s3", "Scale, S3 (moto on loopback)")):
        if key not in results:
            continue
        rows = results[key]
        first = rows[0]
        out += ["", f"### {title}: refinenet-{p['backbone']}/{p['width']} (stands in for ResNet50), overlap 64, "
                    f"batch {first['batch']}, block 2304, {CORES} actors x 1 thread",
                table(["mosaic", "input", "tiles", "wall s", "s / Mpx", "tiles/s", "efficiency",
                       "steady tiles/s (efficiency)", "peak RSS MiB", "RSS vs first", "largest processes at peak (MiB)",
                       "load avg before/after"],
                      [[f"{r['size']}^2", r["workflow"], r["tiles"], fmt(r["seconds"], 1),
                        fmt(r["seconds"] / (r["size"] ** 2 / 1e6), 3), fmt(r["tiles_per_s"], 3),
                        fmt(r.get("efficiency")), _steady(r), fmt(r["peak_rss_mib"], 0),
                        fmt(r["peak_rss_mib"] / first["peak_rss_mib"]), r["rss_top"], _load(r)] for r in rows])]
    if "train" in results:
        t = results["train"]
        out += ["", f"### Training: configs/dev.yaml (refinenet-resnet18/32, 256 px, batch 8/worker), patches from "
                    f"a {t['city']}^2 city ({t['patches']}), epoch 2 of 2",
                table(["workers", "CPUs/worker (torch threads)", "samples/s (all)", "samples/s per worker",
                       "epoch s", "job s"],
                      [[r["workers"], f"{r['cpus_per_worker']:g} ({r['torch_threads']})", fmt(r["samples_per_s"]),
                        fmt(r["samples_per_s_per_worker"]), fmt(r["epoch_seconds"], 1), fmt(r["job_seconds"], 1)]
                       for r in t["rows"]]),
                "", f"Scaling efficiency (2-worker samples/s / (2 x 1-worker)): **{t['scaling_efficiency']:.2f}**."]
    out += ["", "### Bars"] + [f"- {line}" for line in bars(results)]
    return "\n".join(out) + "\n"


def _steady(row: dict) -> str:
    if "steady_tiles_per_s" not in row:
        return "-"
    return f"{fmt(row['steady_tiles_per_s'], 3)} ({row['steady_efficiency']:.2f})"


def _load(row: dict) -> str:
    load = row.get("load")
    return f"{load[0]:.1f} / {load[1]:.1f}" if load else "-"


def bars(results: dict) -> list[str]:
    lines = []
    if "compare" in results:
        c = results["compare"]
        r0 = c["rows"][1]
        lines.append(f"pipeline (overlap 0) faster than the seed workflow at {c['size']}^2: speed-up "
                     f"{r0['speedup_vs_seed']:.2f} (> 1): {'HOLDS' if r0['speedup_vs_seed'] > 1 else 'FAILS'}")
    for key in ("scale", "s3"):
        rows = results.get(key)
        if not rows:
            continue
        last = rows[-1]
        lines.append(f"{key}: efficiency at the largest mosaic ({last['size']}^2, start-up included) = "
                     f"{last['efficiency']:.2f} (>= 0.85): {'HOLDS' if last['efficiency'] >= 0.85 else 'FAILS'}; "
                     f"steady (actors busy) {last['steady_efficiency']:.2f}")
        if len(rows) > 1:
            ratio = last["peak_rss_mib"] / rows[0]["peak_rss_mib"]
            per_mpx = (last["seconds"] / last["size"] ** 2) / (rows[0]["seconds"] / rows[0]["size"] ** 2)
            lines.append(f"{key}: peak RSS {last['size']}^2 / {rows[0]['size']}^2 = {ratio:.2f} (<= 1.5): "
                         f"{'HOLDS' if ratio <= 1.5 else 'FAILS'}; time per Mpx {last['size']}^2 / "
                         f"{rows[0]['size']}^2 = {per_mpx:.2f} (1 = linear)")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (< 10 minutes on 2 cores)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs; figures meaningless")
    parser.add_argument("--workdir", default="/tmp/segcore-bench", help="mosaics, checkpoints, scratch outputs")
    parser.add_argument("--output", default=None, help="where results.md and results.json go")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=None)
    parser.add_argument("--skip", nargs="+", choices=SECTIONS, default=[])
    args = parser.parse_args()
    profile = "smoke" if args.smoke else "quick" if args.quick else "full"
    p = PROFILES[profile]
    sections = [s for s in (args.only or SECTIONS) if s not in args.skip]
    work = Path(args.workdir).resolve() / profile
    work.mkdir(parents=True, exist_ok=True)
    output = Path(args.output or work / f"results-{profile}").resolve()

    common.set_s3_credentials()  # before Ray starts, so its workers inherit them
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import torch

    torch.set_num_threads(CORES)
    began = time.perf_counter()
    results = dict(profile=profile, command="python benchmarks/run.py"
                   + {"full": "", "quick": " --quick", "smoke": " --smoke"}[profile]
                   + (f" --only {' '.join(args.only)}" if args.only else "")
                   + (f" --skip {' '.join(args.skip)}" if args.skip else ""),
                   machine=common.machine_info(), profile_settings=p, sections=sections)
    log(f"profile {profile}, sections {sections}, machine {results['machine']['cpu']}")
    if "limits" in sections:
        section_limits(p, results)
    segmenting = [s for s in ("compare", "scale", "s3") if s in sections]
    if segmenting:
        base = common.city(work, p["city_size"], seed=0).image
        checkpoint = common.make_checkpoint(work / f"ckpt-{p['backbone']}-{p['width']}.pt", p["backbone"], p["width"])
        results["ray_cpus"] = CORES
        results["ray_init_seconds"] = common.start_ray(CORES)
        if "compare" in sections:
            section_compare(p, results, work, base, checkpoint)
            limits = results["compare"]
        else:
            from segcore.checkpoint import load_model
            from segcore.config import ModelConfig

            limits = measure_ceiling(checkpoint, formatted(load_model(checkpoint, ModelConfig()).model.eval()), p)
        ceiling, batch = limits["ceiling"], limits["batch"]
        if "scale" in sections:
            section_scale(p, results, work, base, checkpoint, ceiling, batch)
        if "s3" in sections:
            section_s3(p, results, work, base, checkpoint, ceiling, batch)
        import ray

        ray.shutdown()
    if "train" in sections:
        common.start_ray(CORES)
        section_train(p, results, work)
    results["load_end"] = common.load_average()
    results["total_seconds"] = time.perf_counter() - began
    text = report(results, p, args) + f"\nTotal benchmark time {results['total_seconds'] / 60:.1f} min.\n"
    common.publish(text, results, output, "results")
    return 0


if __name__ == "__main__":
    sys.exit(main())
