"""CPU benchmark suite: seed-workflow baseline vs the segment pipeline, limits, scale (time, peak RSS), training.

    python benchmarks/run.py --quick      # small sizes, < 10 minutes on 2 cores
    python benchmarks/run.py              # the full sizes reported in BENCHMARKS.md

Prints one markdown table per outcome (figures are measured, never stored) and writes them, with the raw
figures as JSON, to --output (default WORKDIR/results-{quick,full}). Sections (--only/--skip): limits,
compare, scale, s3, train.

- limits: FLOPs per 384 tile of every backbone (torch FlopCounterMode, multiply-add = 2 FLOPs), the
  machine's fp32 matmul and conv rates, and the model-only ceiling (tiles/s on in-memory batches, batch
  sizes 1/2/4/8, NCHW and channels_last, the actor's thread count) of the benchmark model: the highest
  rate of any batch size and memory format. The pipeline runs at the best channels_last batch size
  (segment.channels_last is on by default and the actor runs its model channels_last).
- compare: the notebook workflow this project replaces (tiles as PNG files, one at a time, stitched without
  overlap) against jobs/segment.py's pipeline (plan_segment + run_segment on a local Ray) with overlap 0 and
  the default overlap 64, same checkpoint, same threads; pipeline efficiency = end-to-end tiles/s over the
  model-only ceiling measured in this run (before and after the pipeline runs; the higher one is used).
- scale: wall time and peak RSS (driver + every Ray process, sampled every 0.2 s) for growing mosaics
  (VRTs tiling copies of one generated city), and the same on a loopback S3 server (moto, left out of the
  RSS sum) with real GeoTIFFs. A size equal to the comparison's mosaic reuses its overlap-64 run.
- train: samples/s of configs/dev.yaml training with 1 and 2 CPU workers (epoch 2 of 2), scaling efficiency.

Ray: the script starts its own local Ray. For segmentation it declares 3 logical CPUs on this 2-core machine:
the inference actor takes 2 (segment.cpus_per_actor=2, torch_threads=2, the same threads as the model-only
ceiling) and the pipeline's read tasks ask for 0.5 CPU each; with only 2 logical CPUs they could not be
scheduled beside the actor. Reading therefore overlaps with compute on the same 2 cores, and its cost is
part of the pipeline's wall time. Training runs on a fresh local Ray with num_cpus=2 (as benchmarks/train_to_iou.py).
Ray's own start (ray.init) happens once and is reported separately; each pipeline run's wall time counts
from plan_segment (checkpoint check, planning) to run_segment's return: actor start, model load, reading,
inference, blending, block writes and the assembly of mask.tif/preview.png/metrics.json are all counted.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import REPO, TILE, fmt, table  # noqa: E402

SECTIONS = ("limits", "compare", "scale", "s3", "train")
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
BATCHES = (1, 2, 4, 8)
THREADS = 2  # the actor's cpus and torch threads, and the ceiling's/baseline's threads

PROFILES = {
    # Quick: the same measurements on small sizes. 16384^2 at 384-px tiles is ~3,200 resnet18 tiles (several
    # minutes of pure compute on 2 cores), so the quick scale series is 1024/2048/4096 (the same 16x span).
    "quick": dict(backbone="resnet18", width=16, compare_size=4096, scale_sizes=(1024, 2048, 4096),
                  s3_sizes=(2048,), train_city=2048, ceiling_seconds=2.0, rate_seconds=1.0, city_size=2048),
    "full": dict(backbone="resnet18", width=16, compare_size=8192, scale_sizes=(4096, 8192, 16384),
                 s3_sizes=(4096, 8192), train_city=2048, ceiling_seconds=6.0, rate_seconds=3.0, city_size=4096),
    # Smoke: checks that the script runs end to end (a couple of minutes); its figures mean nothing.
    "smoke": dict(backbone="resnet18", width=16, compare_size=768, scale_sizes=(512, 1024), s3_sizes=(512,),
                  train_city=1536, ceiling_seconds=0.5, rate_seconds=0.3, city_size=768),
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')} load {common.load_average():.2f}] {message}", flush=True)


# ---------------------------------------------------------------- limits

def section_limits(p: dict, results: dict) -> None:
    import torch

    rows = []
    for backbone in BACKBONES:
        for width in sorted({256, p["width"]}):
            gflop, params = common.model_flops(backbone, width)
            rows.append(dict(backbone=backbone, decoder_width=width, gflop_per_tile=gflop, parameters=params))
    results["flops"] = rows
    torch.set_num_threads(THREADS)
    matmul = common.matmul_gflops(2048, min_seconds=p["rate_seconds"])
    conv, conv_shape = common.conv_gflops(min_seconds=p["rate_seconds"])
    results["rates"] = dict(threads=THREADS, matmul_gflops=matmul, matmul_shape="2048x2048 @ 2048x2048 fp32",
                            conv_gflops=conv, conv_shape=conv_shape + " fp32")
    log(f"matmul {matmul:.1f} GFLOP/s, conv {conv:.1f} GFLOP/s ({THREADS} threads)")


FORMATS = ("nchw", "channels_last")  # segment.channels_last (default true) runs the actor's model channels_last


def formatted(model):
    """{format: model}: the model as loaded (NCHW) and a channels_last copy, as the segment actor converts it."""
    import copy

    import torch

    return {"nchw": model, "channels_last": copy.deepcopy(model).to(memory_format=torch.channels_last)}


def ceiling_sweep(models: dict, p: dict, batches=BATCHES) -> dict:
    """Model-only tiles/s per batch size and memory format (in-memory random tiles, this process, THREADS threads)."""
    import torch

    torch.set_num_threads(THREADS)
    out = {}
    for batch in batches:
        out[batch] = {fmt_: common.model_tiles_per_s(model, batch, min_seconds=p["ceiling_seconds"],
                                                     channels_last=(fmt_ == "channels_last"))
                      for fmt_, model in models.items()}
        log(f"ceiling batch {batch}: " + ", ".join(f"{k} {v:.3f}" for k, v in out[batch].items()) + " tiles/s")
    return out


def best_of(sweep: dict) -> tuple[int, float]:
    """(the best batch size in the product's format, the ceiling = the highest rate of any batch and format)."""
    best = max(sweep, key=lambda b: sweep[b]["channels_last"])
    return best, max(v for rates in sweep.values() for v in rates.values())


# ---------------------------------------------------------------- the seed workflow (notebook) baseline

def seed_workflow(image_path: str, checkpoint: str, work: Path, threshold: float = 0.5) -> dict:
    """The notebook this project replaces, faithfully: read the mosaic, crop it into 384-px tiles saved as PNG
    files (edge tiles zero-padded), then for each file: load, divide by 255, predict alone (batch 1),
    threshold 0.5, save the tile mask as a PNG; finally stitch the mask files without overlap, crop the
    padding and save the full mask. Same model and threads as the pipeline."""
    import cv2
    import numpy as np
    import rasterio
    import torch

    from segcore.checkpoint import load_model
    from segcore.config import ModelConfig

    torch.set_num_threads(THREADS)
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
                 "segment.actors=1", f"segment.cpus_per_actor={THREADS}", f"segment.torch_threads={THREADS}",
                 "segment.threshold=0.5"]
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
    actor_seconds = metrics["seconds"]  # summed time inside the actor's predict + block write
    if not is_s3(output):
        shutil.rmtree(output, ignore_errors=True)
    else:
        fs.rm(output, recursive=True)
    result = dict(workflow=label or "segment pipeline", overlap=cfg.segment.overlap, batch=cfg.segment.batch_size,
                  width=metrics["width"], height=metrics["height"], blocks=metrics["blocks"]["total"], tiles=tiles,
                  seconds=seconds, tiles_per_s=tiles / seconds, megapixels_per_s=pixels / 1e6 / seconds,
                  actor_seconds=actor_seconds, outside_actor_seconds=seconds - actor_seconds,
                  peak_rss_mib=rss.peak_mib, rss_top=rss.top(), rss_samples=rss.samples,
                  load=(load_before, common.load_average()))
    log(f"{result['workflow']} {metrics['width']}x{metrics['height']} overlap {result['overlap']}: {tiles} tiles in "
        f"{seconds:.1f} s ({result['tiles_per_s']:.3f} tiles/s; actor busy {actor_seconds:.1f} s), "
        f"peak RSS {rss.peak_mib:.0f} MiB ({rss.top(8)})")
    return result


def start_ray(num_cpus: int) -> float:
    import ray

    began = time.perf_counter()
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, object_store_memory=2_000_000_000,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}}, logging_level="WARNING")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    return time.perf_counter() - began


def section_compare(p: dict, results: dict, work: Path, base_image: Path, checkpoint: str) -> None:
    from segcore.checkpoint import load_model
    from segcore.config import ModelConfig

    image = str(common.mosaic(work, base_image, p["compare_size"]))
    models = formatted(load_model(checkpoint, ModelConfig()).model.eval())
    before = ceiling_sweep(models, p)
    best, ceiling_before = best_of(before)
    log(f"best batch {best}")
    rows = [seed_workflow(image, checkpoint, work / "seed")]
    log(f"seed workflow: {rows[0]['tiles']} tiles in {rows[0]['seconds']:.1f} s")
    for overlap in (0, 64):
        rows.append(run_pipeline(image, checkpoint, str(work / f"out-compare-{overlap}"), segment_cfg(overlap, best),
                                 label=f"segment pipeline (batch {best})"))
    after = ceiling_sweep(models, p, batches=(best,))[best]
    ceiling = max(ceiling_before, *after.values())
    for row in rows[1:]:
        row["speedup_vs_seed"] = rows[0]["seconds"] / row["seconds"]
        row["mpx_ratio_vs_seed"] = row["megapixels_per_s"] / rows[0]["megapixels_per_s"]
        row["efficiency"] = row["tiles_per_s"] / ceiling
    gflop, _ = common.model_flops(p["backbone"], p["width"])
    results["compare"] = dict(image=image, size=p["compare_size"], backbone=p["backbone"], width=p["width"],
                              gflop_per_tile=gflop, ceiling_by_batch=before, best_batch=best,
                              ceiling_after=after, ceiling=ceiling, rows=rows)


# ---------------------------------------------------------------- scale, local and S3

def section_scale(p: dict, results: dict, work: Path, base_image: Path, checkpoint: str, ceiling: float | None,
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
        row["efficiency"] = row["tiles_per_s"] / ceiling if ceiling else None
        rows.append(row)
    results["scale"] = rows


def section_s3(p: dict, results: dict, work: Path, base_image: Path, checkpoint: str, ceiling: float | None,
               batch: int) -> None:
    server = common.MotoServer().start()
    rows = []
    try:
        for size in p["s3_sizes"]:
            local = base_image if size == p["city_size"] else \
                common.materialize(common.mosaic(work, base_image, size), work / f"mosaic-{size}.tif")
            url = server.upload(local, f"s3://bench/in/city-{size}.tif")
            row = run_pipeline(url, checkpoint, f"s3://bench/out-{size}", segment_cfg(64, batch, server.endpoint),
                               exclude_pids=[server.proc.pid], label="S3 GeoTIFF")
            row["size"] = size
            row["efficiency"] = row["tiles_per_s"] / ceiling if ceiling else None
            rows.append(row)
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
                    f"GFLOP/tile), {THREADS} threads, in-memory 384 tiles",
                table(["batch", "NCHW tiles/s", "channels_last tiles/s", "GFLOP/s (faster format)"],
                      [[b, fmt(v["nchw"], 3), fmt(v["channels_last"], 3), fmt(max(v.values()) * c["gflop_per_tile"], 1)]
                       for b, v in c["ceiling_by_batch"].items()]),
                "", f"Pipeline batch = the best channels_last batch (the segment actor's format): {c['best_batch']}. "
                    f"Re-measured after the pipeline runs: " + ", ".join(f"{k} {v:.3f}" for k, v in
                                                                        c["ceiling_after"].items())
                    + f" tiles/s. Ceiling used = the highest rate of any batch and format, before or after: "
                      f"**{c['ceiling']:.3f} tiles/s**.",
                "", f"### Seed workflow vs segment pipeline: {c['size']}x{c['size']} mosaic, same checkpoint "
                    f"(random weights, refinenet-{c['backbone']}/{c['width']}), {THREADS} threads",
                table(["workflow", "overlap", "batch", "tiles", "wall s", "tiles/s", "Mpx/s", "speed-up vs seed",
                       "efficiency vs ceiling", "load avg before/after"],
                      [[r["workflow"], r["overlap"], r["batch"], r["tiles"], fmt(r["seconds"], 1),
                        fmt(r["tiles_per_s"], 3), fmt(r["megapixels_per_s"], 3), fmt(r.get("speedup_vs_seed")),
                        fmt(r.get("efficiency")), _load(r)] for r in c["rows"]])]
        seed = c["rows"][0]
        out.append("")
        out.append("Seed workflow stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in seed["stages"].items())
                   + f"; its model-only rate at batch 1 inside the loop: {seed['model_tiles_per_s']:.3f} tiles/s.")
        out.append("Pipeline wall time split: " + "; ".join(
            f"overlap {r['overlap']}: actor busy {r['actor_seconds']:.1f} s, outside the actor (start, model load, "
            f"first read, assembly) {r['outside_actor_seconds']:.1f} s" for r in c["rows"][1:]) + ".")
    for key, title in (("scale", "Scale, local mosaics"), ("s3", "Scale, S3 (moto on loopback)")):
        if key not in results:
            continue
        rows = results[key]
        first = rows[0]
        out += ["", f"### {title}: refinenet-{p['backbone']}/{p['width']} (stands in for ResNet50), overlap 64, "
                    f"batch {first['batch']}, block 2304, 1 actor x {THREADS} CPUs",
                table(["mosaic", "input", "tiles", "wall s", "s / Mpx", "tiles/s", "efficiency", "peak RSS MiB",
                       "RSS vs first", "largest processes at peak (MiB)", "load avg before/after"],
                      [[f"{r['size']}^2", r["workflow"], r["tiles"], fmt(r["seconds"], 1),
                        fmt(r["seconds"] / (r["size"] ** 2 / 1e6), 3), fmt(r["tiles_per_s"], 3),
                        fmt(r.get("efficiency")), fmt(r["peak_rss_mib"], 0),
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


def _load(row: dict) -> str:
    load = row.get("load")
    return f"{load[0]:.1f} / {load[1]:.1f}" if load else "-"


def bars(results: dict) -> list[str]:
    lines = []
    if "compare" in results:
        rows = results["compare"]["rows"]
        r0 = rows[1]
        lines.append(f"pipeline (overlap 0) faster than the seed workflow: speed-up {r0['speedup_vs_seed']:.2f} "
                     f"(> 1): {'HOLDS' if r0['speedup_vs_seed'] > 1 else 'FAILS'}")
        for r in rows[1:]:
            lines.append(f"efficiency (overlap {r['overlap']}) = {r['tiles_per_s']:.3f} / "
                         f"{results['compare']['ceiling']:.3f} = {r['efficiency']:.2f} (>= 0.85): "
                         f"{'HOLDS' if r['efficiency'] >= 0.85 else 'FAILS'}")
    for key in ("scale", "s3"):
        rows = results.get(key)
        if rows and len(rows) > 1:
            ratio = rows[-1]["peak_rss_mib"] / rows[0]["peak_rss_mib"]
            lines.append(f"{key}: peak RSS {rows[-1]['size']}^2 / {rows[0]['size']}^2 = {ratio:.2f} (<= 1.5): "
                         f"{'HOLDS' if ratio <= 1.5 else 'FAILS'}; time per Mpx {rows[-1]['size']}^2 / "
                         f"{rows[0]['size']}^2 = {(rows[-1]['seconds'] / rows[-1]['size'] ** 2) / (rows[0]['seconds'] / rows[0]['size'] ** 2):.2f} (1 = linear)")
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

    common.MotoServer.set_credentials()  # before Ray starts, so its workers inherit them
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import torch

    torch.set_num_threads(THREADS)
    began = time.perf_counter()
    results = dict(profile=profile, command="python benchmarks/run.py" + {"full": "", "quick": " --quick", "smoke": " --smoke"}[profile]
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
        results["ray_cpus"] = THREADS + 1
        results["ray_init_seconds"] = start_ray(THREADS + 1)
        ceiling, batch = None, None
        if "compare" in sections:
            section_compare(p, results, work, base, checkpoint)
            ceiling, batch = results["compare"]["ceiling"], results["compare"]["best_batch"]
        else:
            from segcore.checkpoint import load_model
            from segcore.config import ModelConfig

            batch, ceiling = best_of(ceiling_sweep(formatted(load_model(checkpoint, ModelConfig()).model.eval()), p))
        if "scale" in sections:
            section_scale(p, results, work, base, checkpoint, ceiling, batch)
        if "s3" in sections:
            section_s3(p, results, work, base, checkpoint, ceiling, batch)
        import ray

        ray.shutdown()
    if "train" in sections:
        start_ray(THREADS)
        section_train(p, results, work)
    results["load_end"] = common.load_average()
    results["total_seconds"] = time.perf_counter() - began
    text = report(results, p, args) + f"\nTotal benchmark time {results['total_seconds'] / 60:.1f} min.\n"
    print("\n" + text, flush=True)
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.md").write_text(text)
    common.dump_json(output / "results.json", results)
    print(f"written: {output}/results.md, {output}/results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
