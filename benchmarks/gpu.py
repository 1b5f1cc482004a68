"""GPU benchmark suite: run it on a machine with an NVIDIA GPU (CUDA); writes markdown + JSON tables to --output.

    python benchmarks/gpu.py --output results/gpu            # everything (about 10-20 minutes on one H100)
    python benchmarks/gpu.py --output DIR --only model       # sections: model, pipeline, train

- model: model-only tiles/s of RefineNet (default resnet50 / decoder 256, the product's model) on in-memory
  384-px tiles for each inference setting the segment config can switch: fp32, bf16 autocast
  (segment.precision), + channels_last (segment.channels_last), + torch.compile (segment.compile); then a
  batch-size sweep with the fastest setting; the best figure as a fraction of the GPU's dense bf16 peak for
  this model's FLOPs (torch FlopCounterMode, multiply-add = 2 FLOPs).
- pipeline: the segment pipeline (plan_segment + run_segment, as jobs/segment.py) with one GPU actor
  (segment.gpus_per_actor=1) and the best setting and batch size, on a 16384^2 mosaic (a VRT tiling copies of a
  generated 4096^2 city): wall time, tiles/s, Mpx/s, peak RSS, and its tiles/s over the model-only ceiling.
- train: 1-GPU training step rate (samples/s) of configs/train.yaml (bf16, channels_last, batch 16, 384 px),
  through segcore.training.train_one_epoch on in-memory batches.

Without CUDA it stops with a message (exit status 2). --cpu-check runs every code path on the CPU at tiny
sizes (resnet18/16, a 768^2 mosaic) to check the script itself; its figures mean nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from common import REPO, TILE, fmt, table

SECTIONS = ("model", "pipeline", "train")
CPU_CHECK_TILE = 64  # --cpu-check only: small tiles keep bf16 on a CPU without bf16 units quick
# Dense (no sparsity) bf16 tensor-core peaks, TFLOPS, matched in this order against torch.cuda.get_device_name.
BF16_PEAKS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("GH200", 989.0), ("H200", 989.0), ("H100", 989.0),
              ("A100", 312.0), ("A10G", 125.0), ("A10", 125.0), ("L40S", 362.0), ("L4", 121.0))
# (name, segment.precision, segment.channels_last, segment.compile)
VARIANTS = (("fp32", "fp32", False, False), ("bf16 autocast", "bf16", False, False),
            ("bf16 + channels_last", "bf16", True, False),
            ("bf16 + channels_last + torch.compile", "bf16", True, True))


def log(message: str) -> None:
    print(f"[gpu-bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def bf16_peak(name: str, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, f"--peak-tflops {override:g}"
    for key, peak in BF16_PEAKS:
        if key.lower() in name.lower():
            return peak, f"'{key}' dense bf16 peak {peak:g} TFLOPS (table in benchmarks/gpu.py)"
    return None, "unknown GPU: pass --peak-tflops for the fraction of peak"


def prepared_model(backbone: str, width: int, device, channels_last: bool, compile_: bool):
    """The model as the segment actor prepares it (eval, channels_last on CUDA, torch.compile when set)."""
    import torch

    model = common.build(backbone, width).eval().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if compile_ else model


def tiles_per_s(model, batch: int, device, precision: str, channels_last: bool, seconds: float, warmup: int) -> float:
    return common.model_tiles_per_s(model, batch, min_seconds=seconds, device=device, channels_last=channels_last,
                                    autocast_bf16=(precision == "bf16"), warmup=warmup, autocast_device=device.type,
                                    tile=TILE if device.type == "cuda" else CPU_CHECK_TILE)


# ---------------------------------------------------------------- sections

def section_model(args, res: dict, device) -> None:
    import torch

    gflop, params = common.model_flops(args.backbone, args.width)
    res["model"] = dict(backbone=args.backbone, decoder_width=args.width, gflop_per_tile=gflop, parameters=params)
    rows = []
    for name, precision, channels_last, compile_ in VARIANTS:
        if compile_ and args.no_compile:
            continue
        began = time.perf_counter()
        model = prepared_model(args.backbone, args.width, device, channels_last, compile_)
        # torch.compile compiles on the first calls: they are warm-up, and their time is reported apart.
        rate = tiles_per_s(model, args.batch, device, precision, channels_last, args.seconds,
                           warmup=3 if compile_ else 1)
        rows.append(dict(setting=name, precision=precision, channels_last=channels_last, compile=compile_,
                         batch=args.batch, tiles_per_s=rate, tflops=rate * gflop / 1e3,
                         setup_and_warmup_s=time.perf_counter() - began - args.seconds))
        log(f"{name}: {rate:.1f} tiles/s at batch {args.batch}")
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    best = max(rows, key=lambda r: r["tiles_per_s"])
    res["variants"], res["best_variant"] = rows, best["setting"]
    model = prepared_model(args.backbone, args.width, device, best["channels_last"], best["compile"])
    sweep = []
    for batch in args.batches:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        try:
            rate = tiles_per_s(model, batch, device, best["precision"], best["channels_last"], args.seconds,
                               warmup=3 if best["compile"] else 1)
        except torch.OutOfMemoryError:
            log(f"batch {batch}: out of memory")
            torch.cuda.empty_cache()
            break
        memory = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
        sweep.append(dict(batch=batch, tiles_per_s=rate, tflops=rate * gflop / 1e3, max_memory_gib=memory))
        log(f"{best['setting']} batch {batch}: {rate:.1f} tiles/s")
    top = max(sweep, key=lambda r: r["tiles_per_s"])
    peak, source = bf16_peak(res["device"], args.peak_tflops)
    res["sweep"] = sweep
    res["ceiling"] = dict(setting=best["setting"], precision=best["precision"], channels_last=best["channels_last"],
                          compile=best["compile"], batch=top["batch"], tiles_per_s=top["tiles_per_s"],
                          tflops=top["tflops"], bf16_peak_tflops=peak, peak_source=source,
                          fraction_of_bf16_peak=top["tflops"] / peak if peak else None)


def section_pipeline(args, res: dict, device) -> None:
    import ray
    import torch

    from segcore.config import load_config
    from segcore.pipelines.segment import plan_segment, run_segment

    work = Path(args.workdir)
    c = res.get("ceiling") or dict(setting="bf16 + channels_last", precision="bf16", channels_last=True,
                                   compile=False, batch=args.batch, tiles_per_s=None)
    base = common.city(work, args.city, seed=0).image
    image = str(common.mosaic(work, base, args.mosaic))
    checkpoint = common.make_checkpoint(work / f"ckpt-{args.backbone}-{args.width}.pt", args.backbone, args.width)
    gpus = 1 if device.type == "cuda" else 0
    cpus = os.cpu_count() or 2
    began = time.perf_counter()
    ray.init(address="local", num_cpus=max(cpus, args.actor_cpus + 1), num_gpus=gpus, include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}}, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray_init = time.perf_counter() - began
    cfg = load_config(REPO / "configs" / "segment.yaml", [
        f"segment.tile_size={TILE}", "segment.overlap=64", f"segment.batch_size={c['batch']}", "segment.actors=1",
        f"segment.gpus_per_actor={gpus}", f"segment.cpus_per_actor={args.actor_cpus}",
        f"segment.precision={c['precision']}", f"segment.channels_last={str(c['channels_last']).lower()}",
        f"segment.compile={str(c['compile']).lower()}", "segment.threshold=0.5", "segment.blocks_per_actor=2"])
    output = work / "out-gpu-pipeline"
    shutil.rmtree(output, ignore_errors=True)
    try:
        with common.TreeRssSampler() as rss:
            t = time.perf_counter()
            plan = plan_segment([image], checkpoint, str(output), cfg)
            summary = run_segment(plan)
            seconds = time.perf_counter() - t
    finally:
        ray.shutdown()
    if summary["failed"]:
        raise RuntimeError(f"segment run failed: {summary['inputs']}")
    m = summary["inputs"][0]["metrics"]
    tiles = summary["tiles_computed"]
    rate = tiles / seconds
    res["pipeline"] = dict(mosaic=image, kind="VRT of city copies" if image.endswith(".vrt") else "GeoTIFF",
                           size=f"{m['width']}x{m['height']}", setting=c["setting"], batch=c["batch"],
                           actor_cpus=args.actor_cpus, ray_cpus=max(cpus, args.actor_cpus + 1), ray_init_s=ray_init,
                           tiles=tiles, seconds=seconds, tiles_per_s=rate,
                           megapixels_per_s=m["width"] * m["height"] / 1e6 / seconds, actor_busy_s=m["seconds"],
                           peak_rss_mib=rss.peak_mib, rss_top=rss.top(),
                           efficiency=rate / c["tiles_per_s"] if c.get("tiles_per_s") else None)
    log(f"pipeline: {tiles} tiles in {seconds:.1f} s = {rate:.1f} tiles/s (actor busy {m['seconds']:.1f} s)")
    shutil.rmtree(output, ignore_errors=True)
    if device.type == "cuda":
        torch.cuda.empty_cache()


def section_train(args, res: dict, device) -> None:
    import numpy as np
    import torch

    from segcore.config import load_config
    from segcore.losses import build_loss
    from segcore.model import build_model
    from segcore.training import build_optimizer, train_one_epoch

    cfg = load_config(REPO / "configs" / "train.yaml", [f"model.backbone={args.backbone}",
                                                          f"model.decoder_width={args.width}",
                                                          *(["train.tile_size=64", "train.batch_size=2"]
                                                            if device.type == "cpu" else [])])
    t = cfg.train
    torch.manual_seed(0)
    model = build_model(**dataclasses.asdict(cfg.model)).to(device)
    if t.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    loss_fn, optimizer = build_loss(t.loss, t.loss_weight), build_optimizer(model, t)
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (t.batch_size, t.tile_size, t.tile_size, 3), dtype=np.uint8),
             "label": (rng.random((t.batch_size, t.tile_size, t.tile_size)) > 0.8).astype(np.uint8) * 255}
    train_one_epoch(model, [batch] * args.train_warmup, loss_fn, optimizer, device, t)  # warm-up (cuDNN autotune)
    if device.type == "cuda":
        torch.cuda.synchronize()
    began = time.perf_counter()
    stats = train_one_epoch(model, [batch] * args.train_steps, loss_fn, optimizer, device, t)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    res["train"] = dict(config="configs/train.yaml", backbone=args.backbone, decoder_width=args.width,
                        batch=t.batch_size, tile=t.tile_size, precision=t.precision, channels_last=t.channels_last,
                        steps=args.train_steps, seconds=seconds, steps_per_s=args.train_steps / seconds,
                        samples_per_s=stats.samples / seconds)
    log(f"training: {stats.samples / seconds:.1f} samples/s ({args.train_steps / seconds:.2f} steps/s)")


# ---------------------------------------------------------------- report

def report(res: dict) -> str:
    out = [f"## GPU results — {res['date']}",
           f"Device: {res['device']} (torch {res['torch']}, CUDA {res['cuda']}); host CPU {res['cpu']}, "
           f"{res['logical_cpus']} logical CPUs. Command: `{res['command']}`."]
    if "model" in res:
        m = res["model"]
        out += ["", f"### Model-only, refinenet-{m['backbone']}/{m['decoder_width']} ({m['gflop_per_tile']:.1f} "
                    f"GFLOP per 384 tile), in-memory tiles",
                table(["setting", "batch", "tiles/s", "TFLOPS", "setup + warm-up s"],
                      [[r["setting"], r["batch"], fmt(r["tiles_per_s"], 1), fmt(r["tflops"], 1),
                        fmt(r["setup_and_warmup_s"], 1)] for r in res["variants"]]),
                "", f"Batch-size sweep, {res['best_variant']}:",
                table(["batch", "tiles/s", "TFLOPS", "max GPU memory GiB"],
                      [[r["batch"], fmt(r["tiles_per_s"], 1), fmt(r["tflops"], 1), fmt(r["max_memory_gib"], 1)]
                       for r in res["sweep"]])]
        c = res["ceiling"]
        frac = f"{c['fraction_of_bf16_peak']:.3f}" if c["fraction_of_bf16_peak"] is not None else "-"
        out += ["", f"Ceiling: **{c['tiles_per_s']:.1f} tiles/s** ({c['setting']}, batch {c['batch']}) = "
                    f"{c['tflops']:.1f} TFLOPS = **{frac}** of the bf16 peak ({c['peak_source']})."]
    if "pipeline" in res:
        p = res["pipeline"]
        eff = f"{p['efficiency']:.2f}" if p["efficiency"] is not None else "-"
        out += ["", f"### Segment pipeline, one GPU actor ({p['actor_cpus']} CPUs), {p['size']} {p['kind']}, "
                    f"overlap 64, {p['setting']}, batch {p['batch']}",
                table(["tiles", "wall s", "tiles/s", "Mpx/s", "actor busy s", "peak RSS MiB", "pipeline / ceiling"],
                      [[p["tiles"], fmt(p["seconds"], 1), fmt(p["tiles_per_s"], 1), fmt(p["megapixels_per_s"], 2),
                        fmt(p["actor_busy_s"], 1), fmt(p["peak_rss_mib"], 0), eff]]),
                "", f"Ray start (not in the wall time): {p['ray_init_s']:.1f} s on {p['ray_cpus']} CPUs; largest "
                    f"processes at peak RSS (MiB): {p['rss_top']}."]
    if "train" in res:
        t = res["train"]
        out += ["", f"### 1-GPU training step rate ({t['config']}: refinenet-{t['backbone']}/{t['decoder_width']}, "
                    f"batch {t['batch']}, {t['tile']} px, {t['precision']}, channels_last {t['channels_last']})",
                table(["steps", "s", "steps/s", "samples/s"],
                      [[t["steps"], fmt(t["seconds"], 1), fmt(t["steps_per_s"], 2), fmt(t["samples_per_s"], 1)]])]
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="folder for gpu.md and gpu.json")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--backbone", default="resnet50", choices=("resnet18", "resnet34", "resnet50", "resnet101"))
    parser.add_argument("--width", type=int, default=256, help="decoder width (256: the fork's)")
    parser.add_argument("--batch", type=int, default=16, help="batch size of the settings comparison")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64])
    parser.add_argument("--seconds", type=float, default=5.0, help="timing window per measurement")
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    parser.add_argument("--mosaic", type=int, default=16384, help="pipeline mosaic size (a VRT of city copies)")
    parser.add_argument("--city", type=int, default=4096, help="size of the generated city the VRT tiles")
    parser.add_argument("--actor-cpus", type=float, default=4.0, help="segment.cpus_per_actor of the GPU actor")
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--train-warmup", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak, if the GPU is not known")
    parser.add_argument("--workdir", default="/tmp/segcore-bench-gpu")
    parser.add_argument("--cpu-check", action="store_true",
                        help="run every code path on the CPU at tiny sizes (checks the script; figures meaningless)")
    args = parser.parse_args()

    import torch

    if args.cpu_check:
        device = torch.device("cpu")
        args.backbone, args.width, args.batch, args.batches = "resnet18", 16, 2, [1, 2]
        args.seconds, args.mosaic, args.city, args.actor_cpus = 0.5, 768, 768, 1.0
        args.train_steps, args.train_warmup = 2, 1
        args.workdir = args.workdir.rstrip("/") + "-cpu-check"
    elif not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device is visible to torch (torch.cuda.is_available() is False); this "
              "suite needs an NVIDIA GPU. Run it on a GPU machine, or use benchmarks/run.py for the CPU figures "
              "(--cpu-check runs this script's code paths on the CPU to check it).", file=sys.stderr)
        return 2
    else:
        device = torch.device("cuda")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    info = common.machine_info()
    res = dict(date=info["date"], cpu=info["cpu"], logical_cpus=info["logical_cpus"], torch=torch.__version__,
               cuda=torch.version.cuda,
               device=torch.cuda.get_device_name() if device.type == "cuda" else "CPU (--cpu-check)",
               command="python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), sections=args.only)
    log(f"device {res['device']}, sections {args.only}")
    if "model" in args.only:
        section_model(args, res, device)
    if "pipeline" in args.only:
        section_pipeline(args, res, device)
    if "train" in args.only:
        section_train(args, res, device)
    common.publish(report(res), res, Path(args.output), "gpu")
    return 0


if __name__ == "__main__":
    sys.exit(main())
