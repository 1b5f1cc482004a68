"""Test-time augmentation (`segment.tta`): the quality it gains against what it costs.

    python benchmarks/tta.py --checkpoint RUN/checkpoints/best.pt --config configs/dev.yaml \
        --image city.tif --labels city_labels.tif [--image ... --labels ...] [--set KEY=VALUE ...]

Segments the images once per mode (none, flip, d4) with the segment pipeline on a local Ray, polygons on,
and prints per mode: pixel IoU/F1 and object F1 (IoU >= 0.5) pooled over the images, the forward passes' CPU
seconds per tile and the run's tiles per second. Each mode writes its own output folder under --output.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import REPO, log, start_ray, table

MODES = ("none", "flip", "d4")


def run_mode(mode: str, args) -> dict:
    from segcore.config import load_config
    from segcore.metrics import ConfusionCounts
    from segcore.pipelines.segment import plan_segment, run_segment
    from segcore.vectors.objects import ObjectCounts

    cfg = load_config(args.config, [*args.overrides, f"segment.tta={mode}", "segment.write_polygons=true"])
    result = run_segment(plan_segment(args.image, args.checkpoint, str(Path(args.output) / mode), cfg, args.labels))
    pixels, objects = ConfusionCounts(), ObjectCounts()
    for entry in result["inputs"]:
        if entry["status"] != "ok":
            raise RuntimeError(entry["error"])
        m = entry["metrics"]
        pixels = pixels + ConfusionCounts(m["tp"], m["fp"], m["fn"], m["tn"])
        o = m["objects"]
        objects = objects + ObjectCounts(o["true"], o["predicted"], o["matched"])
    forward_s = result["cpu_s"].get("forward", 0.0)
    return dict(mode=mode, iou=pixels.iou, f1=pixels.f1, object_f1=objects.f1, tiles=result["tiles_computed"],
                forward_s_per_tile=forward_s / max(result["tiles_computed"], 1), tiles_per_s=result["tiles_per_s"],
                seconds=result["seconds"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--config", default=str(REPO / "configs" / "segment.yaml"))
    parser.add_argument("--image", action="append", required=True, help="an image to segment (repeat)")
    parser.add_argument("--labels", action="append", required=True, help="its label raster or polygons (repeat)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--output", default="/tmp/segcore-tta")
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()
    if len(args.image) != len(args.labels):
        parser.error("give one --labels per --image")
    start_ray(args.cpus)
    rows = []
    for mode in MODES:
        log(f"segment.tta={mode}")
        r = run_mode(mode, args)
        rows.append([r["mode"], f"{r['iou']:.3f}", f"{r['f1']:.3f}", f"{r['object_f1']:.3f}", r["tiles"],
                     f"{r['forward_s_per_tile']:.3f}", f"{r['tiles_per_s']:.2f}", f"{r['seconds']:.1f}"])
    print(f"Command: `python {' '.join(sys.argv)}`\n")
    print(table(["segment.tta", "pixel IoU", "pixel F1", "object F1", "tiles", "forward CPU-s/tile", "tiles/s",
                 "wall s"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
