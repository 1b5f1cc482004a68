"""Time to the training bar: the CPU development config, trained on patches cut from the sample city,
until validation IoU >= --target (0.6). Prints one line per epoch and the minutes to the target.

    python benchmarks/train_to_iou.py [--width 3072 --height 3072 --epochs 12 --workers 2]
Minutes count from the start of the training job (Ray Train start-up included), not data generation.
"""
from __future__ import annotations

import argparse
import csv
import platform
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=3072)
    parser.add_argument("--height", type=int, default=3072)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--target", type=float, default=0.6)
    parser.add_argument("--workdir", default="/tmp/segcore-bench-train")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config overrides")
    args = parser.parse_args()

    import ray

    from segcore.config import load_config
    from segcore.pipelines.prepare import prepare_dataset
    from segcore.pipelines.train import run_training
    from segcore.synth import generate_city

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    city = generate_city(work / "city", args.width, args.height, seed=args.seed)
    cfg = load_config(REPO / "configs" / "dev.yaml", [
        f"train.epochs={args.epochs}", f"train.num_workers={args.workers}",
        f"train.cpus_per_worker={1.0 / args.workers if args.workers > 1 else 1.0}",
        f"train.data_root={work / 'patches'}", f"train.run_dir={work / 'run'}", *args.overrides])
    ray.init(num_cpus=2 if args.workers <= 2 else args.workers, include_dashboard=False)
    summary = prepare_dataset([str(city.image)], [str(city.buildings)], str(work / "patches"), cfg)
    print(f"patches: {summary.patches}")
    began = time.perf_counter()
    run_training(cfg)
    total = (time.perf_counter() - began) / 60
    with open(work / "run" / "metrics.csv") as handle:
        history = list(csv.DictReader(handle))
    # Epoch end times relative to the job start: the job's wall time minus the epochs still to come.
    ends, elapsed = [], total * 60 - sum(float(r["epoch_seconds"]) for r in history)
    for row in history:
        elapsed += float(row["epoch_seconds"])
        ends.append(elapsed / 60)
    print(f"\nmachine: {platform.machine()}, {ray.cluster_resources().get('CPU', 0):.0f} CPUs; "
          f"config configs/dev.yaml, {args.workers} workers, city {args.width}x{args.height} seed {args.seed}")
    print("epoch  val_iou  val_f1  samples/s  minutes")
    reached = None
    for row, minutes in zip(history, ends, strict=True):
        iou = float(row["val_iou"])
        print(f"{row['epoch']:>5}  {iou:7.4f}  {float(row['val_f1']):6.4f}  "
              f"{float(row['samples_per_s']):9.2f}  {minutes:7.2f}")
        if reached is None and iou >= args.target:
            reached = (row["epoch"], minutes)
    if reached:
        print(f"validation IoU >= {args.target} at epoch {reached[0]} after {reached[1]:.2f} minutes "
              f"(whole run {total:.2f} minutes)")
        return 0
    print(f"validation IoU never reached {args.target} in {len(history)} epochs ({total:.2f} minutes)")
    return 1


if __name__ == "__main__":
    sys.exit(main())
