"""Building quality on real aerial imagery: leave-one-site-out training and segmentation.

    python benchmarks/real_quality.py [--data /work/shared/data/real-oam] [--config configs/real-cpu.yaml]

The data (OpenAerialMap RGB mosaics with OpenStreetMap building masks, see its README.md) is not part of
the project: without it this script says so and exits 0. For each of the five sites it prepares patches
from the other four, trains (optionally from a checkpoint pretrained once on the generated city and
shared by every fold), segments the held-out site's mosaics with their masks as labels and scores them:
pixel IoU/F1 (the segment pipeline's metrics over valid pixels) and object precision/recall/F1 at IoU
>= 0.5 (SpaceNet matching, `segcore.vectors`). It writes a preview per site (true positives green, false
positives red, misses blue) and results.md/results.json to --output.

Training minutes are wall-clock minutes of `run_training` (Ray Train start-up included): a fold's total
is its fine-tuning plus the pretraining its model started from.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_DATA = Path("/work/shared/data/real-oam")
MOSAIC = re.compile(r"(site\d+)_.*_rgb\.tif$")
PREVIEW_SIDE = 1024
TRUE_POSITIVE, FALSE_POSITIVE, MISSED = (40, 200, 60), (230, 40, 40), (40, 90, 240)
SWEEP = tuple(round(0.25 + 0.05 * k, 2) for k in range(11))  # thresholds of the diagnostic IoU sweep


def find_sites(data: Path) -> dict[str, list[tuple[Path, Path, Path | None]]]:
    """site -> [(rgb, mask, valid or None)] for every `siteN_*_rgb.tif` with its `_mask.tif`."""
    sites: dict[str, list[tuple[Path, Path, Path | None]]] = defaultdict(list)
    for rgb in sorted(data.glob("*_rgb.tif")):
        match = MOSAIC.match(rgb.name)
        mask = rgb.with_name(rgb.name.replace("_rgb.tif", "_mask.tif"))
        if match and mask.exists():
            valid = rgb.with_name(rgb.name.replace("_rgb.tif", "_valid.tif"))
            sites[match.group(1)].append((rgb, mask, valid if valid.exists() else None))
    return dict(sites)


def masked_copy(rgb: Path, valid: Path | None, out: Path) -> Path:
    """The image with its valid mask as GDAL's internal mask band (what segcore's readers treat as no-data),
    or the image itself when it has no valid mask. The shared data is never modified."""
    if valid is None:
        return rgb
    import rasterio

    with rasterio.open(rgb) as src, rasterio.open(valid) as mask_src:
        profile = dict(src.profile, driver="GTiff", tiled=True, blockxsize=256, blockysize=256, compress="deflate")
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(out, "w", **profile) as dst:
            dst.write(src.read())
            dst.write_mask((mask_src.read(1) > 0).astype(np.uint8) * 255)
    return out


def object_counts(mask_tif: Path, label_tif: Path, cfg):
    """Object counts (SpaceNet matching) of a segment output mask against a label mask, whole mosaic at once.

    Predictions are cleaned as the polygon outputs are (holes filled, small ones dropped, simplified); truths
    are the label's 4-connected components. Label pixels where the prediction is no-data do not count.
    """
    import rasterio

    from segcore.raster.grid import plan_blocks
    from segcore.raster.io import inspect_raster
    from segcore.vectors.merge import FragmentMerger
    from segcore.vectors.objects import ObjectEvaluator
    from segcore.vectors.polygonize import polygonize_block
    from segcore.vectors.shapes import GroundFrame, clean_buildings, reach_px

    with rasterio.open(mask_tif) as src:
        predicted = src.read(1)
    with rasterio.open(label_tif) as src:
        truth = ((src.read(1) > 0) & (predicted != 255)).astype(np.uint8)
    height, width = predicted.shape
    info = inspect_raster(str(label_tif))
    frame = GroundFrame.of(info)
    (block,) = plan_blocks(width, height, max(width, height))
    merger = FragmentMerger()
    evaluator = ObjectEvaluator([block], iou_threshold=cfg.polygons.match_iou, reach=reach_px(cfg.polygons, frame))
    finished = clean_buildings(merger.add(polygonize_block(predicted, None, block, width, height)), frame, cfg.polygons)
    evaluator.add(block, finished, merger.pending_bounds(), polygonize_block(truth, None, block, width, height))
    merger.finish()
    return evaluator.finish()


def threshold_counts(output: Path, label_tif: Path) -> dict[float, list[int]]:
    """(tp, fp, fn) at each SWEEP threshold, from a segment output's prob.tif over its valid pixels."""
    import rasterio

    with rasterio.open(output / "prob.tif") as src:
        probability = src.read(1)
    with rasterio.open(output / "mask.tif") as src:
        valid = src.read(1) != 255
    with rasterio.open(label_tif) as src:
        truth = (src.read(1) > 0)[valid]
    probability = probability[valid]
    counts = {}
    for threshold in SWEEP:
        building = probability >= round(threshold * 255)
        tp = int(np.count_nonzero(building & truth))
        counts[threshold] = [tp, int(np.count_nonzero(building)) - tp, int(np.count_nonzero(truth)) - tp]
    return counts


def site_preview(pairs: list[tuple[Path, Path, Path]], out: Path) -> None:
    """One PNG per site: its mosaics side by side (longest side PREVIEW_SIDE), predictions against labels."""
    import cv2
    import rasterio

    views = []
    for image, mask_tif, label_tif in pairs:
        with rasterio.open(image) as src:
            rgb = src.read([1, 2, 3]).transpose(1, 2, 0)
        with rasterio.open(mask_tif) as src:
            predicted = src.read(1)
        with rasterio.open(label_tif) as src:
            truth = src.read(1) > 0
        building = predicted == 1
        view = rgb.astype(np.float32)
        for where, colour in ((building & truth, TRUE_POSITIVE), (building & ~truth, FALSE_POSITIVE),
                              (~building & truth, MISSED)):
            view[where] = 0.5 * view[where] + 0.5 * np.array(colour, np.float32)
        view[predicted == 255] *= 0.3
        views.append(view.astype(np.uint8))
    height = max(v.shape[0] for v in views)
    gap = np.full((height, 8, 3), 255, np.uint8)
    row = np.hstack([part for v in views for part in (np.pad(v, ((0, height - v.shape[0]), (0, 0), (0, 0))), gap)][:-1])
    scale = min(1.0, PREVIEW_SIDE / max(row.shape[:2]))
    small = cv2.resize(row, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(out), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))


def prepare_patches(images: list[str], labels: list[str], output: Path, cfg) -> dict[str, int]:
    """Patches of `images` for training; without a test share, the empty test split is removed (the held-out
    site, or the real mosaics after pretraining, are the test), since training would refuse an empty one."""
    from segcore.pipelines.prepare import prepare_dataset

    summary = prepare_dataset(images, labels, str(output), cfg)
    if not summary.patches["test"]:
        shutil.rmtree(output / "test")
    return summary.patches


def train_minutes(cfg) -> float:
    """Wall-clock minutes of one training run (Ray Train start-up included)."""
    from segcore.pipelines.train import run_training

    began = time.perf_counter()
    run_training(cfg)
    return (time.perf_counter() - began) / 60


def pretrain(args, work: Path) -> tuple[str, float]:
    """Train once on the generated city (configs named by --pretrain-config/--pretrain-set); the best
    checkpoint and the training minutes. Reuses --pretrained when given (its minutes from --pretrain-minutes)."""
    from segcore.config import load_config
    from segcore.synth import generate_city

    cfg = load_config(args.pretrain_config, [f"train.data_root={work / 'synth_patches'}",
                                             f"train.run_dir={work / 'synth_run'}", *args.pretrain_set])
    city = generate_city(work / "synth_city", args.pretrain_size, args.pretrain_size, seed=args.pretrain_seed,
                         realism=cfg.synth)
    patches = prepare_patches([str(city.image)], [str(city.labels)], work / "synth_patches", cfg)
    print(f"pretraining on the generated city: {patches}", flush=True)
    minutes = train_minutes(cfg)
    return str(work / "synth_run" / "checkpoints" / "best.pt"), minutes


def run_fold(site: str, sites: dict, images: dict[Path, Path], args, work: Path, init: str | None) -> dict:
    """Prepare the other sites, train, segment the held-out site; its metrics."""
    from segcore.config import load_config
    from segcore.metrics import ConfusionCounts
    from segcore.pipelines.segment import plan_segment, run_segment

    fold = work / f"fold_{site}"
    overrides = [f"train.data_root={fold / 'patches'}", f"train.run_dir={fold / 'run'}", *args.overrides]
    if init:
        overrides.append(f"train.init_from={init}")
    cfg = load_config(args.config, overrides)
    cfg.segment.write_probability = True  # for the threshold sweep
    train_sites = [s for s in sites if s != site]
    rgb = [str(images[m[0]]) for s in train_sites for m in sites[s]]
    labels = [str(m[1]) for s in train_sites for m in sites[s]]
    patches = prepare_patches(rgb, labels, fold / "patches", cfg)
    print(f"{site}: training on {', '.join(train_sites)}: {patches}", flush=True)
    minutes = train_minutes(cfg)
    checkpoint = fold / "run" / "checkpoints" / "best.pt"
    held = sites[site]
    plan = plan_segment([str(images[m[0]]) for m in held], str(checkpoint), str(fold / "segment"), cfg,
                        [str(m[1]) for m in held])
    result = run_segment(plan)
    pixels, objects, pairs = ConfusionCounts(), None, []
    sweep = {threshold: np.zeros(3, np.int64) for threshold in SWEEP}
    for entry, (source, label, _) in zip(result["inputs"], held, strict=True):
        if entry["status"] != "ok":
            raise RuntimeError(f"segmenting {source} failed: {entry['error']}")
        metrics = entry["metrics"]
        pixels = pixels + ConfusionCounts(metrics["tp"], metrics["fp"], metrics["fn"], metrics["tn"])
        mask_tif = Path(metrics["output"]) / "mask.tif"
        for threshold, counts in threshold_counts(Path(metrics["output"]), label).items():
            sweep[threshold] += counts
        counts = object_counts(mask_tif, label, cfg)
        objects = counts if objects is None else objects + counts
        pairs.append((images[source], mask_tif, label))
    site_preview(pairs, Path(args.output) / f"preview_{site}.png")
    return dict(site=site, train_sites=train_sites, patches=patches, train_minutes=minutes,
                pixels=pixels.summary(), objects=objects.summary() if objects else {},
                threshold=result["threshold"],
                sweep_iou={str(t): float(c[0] / max(c.sum(), 1)) for t, c in sweep.items()})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of siteN_*_{rgb,mask}.tif")
    parser.add_argument("--config", default=str(REPO / "configs" / "real-cpu.yaml"), help="each fold's training")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--sites", help="comma-separated held-out sites to run (default: all)")
    parser.add_argument("--pretrain-config", help="pretrain on the generated city with this config first")
    parser.add_argument("--pretrain-set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--pretrain-size", type=int, default=3072, help="side of the generated city in pixels")
    parser.add_argument("--pretrain-seed", type=int, default=1)
    parser.add_argument("--pretrained", help="reuse this pretrained checkpoint instead of pretraining")
    parser.add_argument("--pretrain-minutes", type=float, default=0.0, help="the training minutes of --pretrained")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/segcore-real"))
    parser.add_argument("--output", default="/tmp/segcore-real/results")
    parser.add_argument("--label", default="", help="a name for this run in the results")
    args = parser.parse_args()
    if not args.data.is_dir() or not find_sites(args.data):
        print(f"real imagery not found at {args.data} (siteN_*_rgb.tif with _mask.tif): nothing to measure")
        return 0
    sites = find_sites(args.data)
    chosen = args.sites.split(",") if args.sites else list(sites)

    import ray

    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    (work / "masked").mkdir(parents=True)
    Path(args.output).mkdir(parents=True, exist_ok=True)
    images = {m[0]: masked_copy(m[0], m[2], work / "masked" / m[0].name) for s in sites.values() for m in s}
    began = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False)
    init, pre_minutes = args.pretrained, args.pretrain_minutes
    if args.pretrain_config and not init:
        init, pre_minutes = pretrain(args, work)
    folds = []
    for site in chosen:
        fold = run_fold(site, sites, images, args, work, init)
        fold["pretrain_minutes"] = pre_minutes
        folds.append(fold)
        print(f"{site}: IoU {fold['pixels']['iou']:.3f}  object F1 {fold['objects'].get('f1', 0):.3f}  "
              f"training {fold['train_minutes'] + pre_minutes:.1f} min", flush=True)
        write_results(args, folds, pre_minutes, began)
    return 0


def write_results(args, folds: list[dict], pre_minutes: float, began: float) -> None:
    from segcore.metrics import ConfusionCounts
    from segcore.vectors.objects import ObjectCounts

    rows = []
    pooled, objects = ConfusionCounts(), ObjectCounts()
    for fold in folds:
        p, o = fold["pixels"], fold["objects"]
        pooled = pooled + ConfusionCounts(p["tp"], p["fp"], p["fn"], p["tn"])
        objects = objects + ObjectCounts(o["true"], o["predicted"], o["matched"])
        rows.append(f"| {fold['site']} | {p['iou']:.3f} | {p['f1']:.3f} | {p['precision']:.3f} | {p['recall']:.3f} | "
                    f"{o['f1']:.3f} | {o['precision']:.3f} | {o['recall']:.3f} | {o['matched']}/{o['true']} | "
                    f"{pre_minutes:.1f} + {fold['train_minutes']:.1f} |")
    mean_iou = float(np.mean([f["pixels"]["iou"] for f in folds]))
    sweep = {t: float(np.mean([f["sweep_iou"][t] for f in folds])) for t in folds[0].get("sweep_iou", {})}
    mean_f1 = float(np.mean([f["objects"]["f1"] for f in folds]))
    lines = [f"Command: `{' '.join(sys.argv)}`", "",
             "| held-out site | pixel IoU | pixel F1 | precision | recall | object F1 | object P | object R | "
             "matched/true | training min (pretrain + fold) |", "|---" * 10 + "|", *rows,
             f"| all (pooled pixels and objects) | {pooled.iou:.3f} | {pooled.f1:.3f} | {pooled.precision:.3f} | "
             f"{pooled.recall:.3f} | {objects.f1:.3f} | {objects.precision:.3f} | {objects.recall:.3f} | "
             f"{objects.matched}/{objects.true} | |", "",
             f"Mean over held-out sites: pixel IoU **{mean_iou:.3f}**, object F1 {mean_f1:.3f}; longest fold "
             f"{pre_minutes + max(f['train_minutes'] for f in folds):.1f} training minutes; whole run "
             f"{(time.perf_counter() - began) / 60:.1f} min.", "",
             "Mean pixel IoU at other thresholds (diagnostic): " + ", ".join(f"{t}: {v:.3f}" for t, v in sweep.items())]
    text = "\n".join(lines)
    out = Path(args.output)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(dict(label=args.label, argv=sys.argv, folds=folds,
                                                      mean_iou=mean_iou, mean_object_f1=mean_f1, sweep=sweep,
                                                      pooled=pooled.summary()), indent=1))
    print(text, flush=True)


if __name__ == "__main__":
    sys.exit(main())
