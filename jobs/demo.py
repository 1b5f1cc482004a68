"""The embedded default: sample city -> patches -> training (CPU) -> segmentation of a held-out city.

    python jobs/demo.py [--output demo_out] [--set train.epochs=8 ...]
Downloads nothing: both cities are generated (different seeds), the model starts from random weights.
Uses configs/dev.yaml (ResNet18, narrow decoder, 2 CPU workers); about 10-15 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from segcore.cli import run_main
from segcore.config import load_config

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="demo_out", help="where everything goes (replaced if it exists)")
    parser.add_argument("--train-size", type=int, default=3072, help="side of the training city in pixels")
    parser.add_argument("--test-size", type=int, default=2048, help="side of the held-out city in pixels")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    out = Path(args.output).resolve()
    # 20 epochs, not dev.yaml's 10: the held-out IoU keeps rising to the last of them and the whole demo still
    # fits in about 10 minutes on 2 cores (BENCHMARKS.md, "Demo").
    cfg = load_config(REPO / "configs" / "dev.yaml", [
        f"train.data_root={out / 'patches'}", f"train.run_dir={out / 'run'}", "train.epochs=20",
        "segment.write_polygons=true", *args.overrides])

    from segcore.pipelines.prepare import prepare_dataset
    from segcore.pipelines.segment import plan_segment, run_segment
    from segcore.pipelines.train import run_training
    from segcore.synth import generate_city

    began = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)
    print(f"1/4 generating a {args.train_size} px training city and a {args.test_size} px held-out city", flush=True)
    train_city = generate_city(out / "city_train", args.train_size, args.train_size, seed=1)
    test_city = generate_city(out / "city_heldout", args.test_size, args.test_size, seed=2)
    print("2/4 cutting patches (spatial train/val/test split)", flush=True)
    summary = prepare_dataset([str(train_city.image)], [str(train_city.buildings)], str(out / "patches"), cfg)
    print(f"    {summary.patches}", flush=True)
    print(f"3/4 training {cfg.model.arch}-{cfg.model.backbone} for {cfg.train.epochs} epochs on "
          f"{cfg.train.num_workers} CPU workers", flush=True)
    run_training(cfg)
    print("4/4 segmenting the held-out city", flush=True)
    checkpoint = out / "run" / "checkpoints" / "best.pt"
    plan = plan_segment([str(test_city.image)], str(checkpoint), str(out / "segment"), cfg, [str(test_city.labels)])
    result = run_segment(plan)
    metrics = result["inputs"][0]["metrics"]
    minutes = (time.perf_counter() - began) / 60
    print(f"\nheld-out city ({args.test_size}x{args.test_size} px): IoU {metrics['iou']:.3f}  F1 {metrics['f1']:.3f}  "
          f"precision {metrics['precision']:.3f}  recall {metrics['recall']:.3f}  ({minutes:.1f} minutes in all)")
    if "objects" in metrics:
        objects = metrics["objects"]
        print(f"buildings (one-to-one at IoU >= {cfg.polygons.match_iou}): F1 {objects['f1']:.3f}  precision "
              f"{objects['precision']:.3f}  recall {objects['recall']:.3f}  matched IoU {objects['mean_iou']:.3f}  "
              f"({objects['matched']} of {objects['true']} true, {objects['predicted']} predicted)")
    key = result["inputs"][0]["key"]
    for name in ("mask.tif", "metrics.json", "preview.png", "buildings.parquet"):
        print(f"  {name:<20} {out / 'segment' / key / name}")
    for name in ("training_curves.png", "roc_pr.png", "checkpoints/best.pt"):
        print(f"  {name:<20} {out / 'run' / name}")
    return 0


if __name__ == "__main__":
    run_main(main)
