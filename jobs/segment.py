"""Segment building footprints in city mosaics: one Cloud-Optimized GeoTIFF mask per input.

    python jobs/segment.py --config configs/segment.yaml --input city.tif [more ...] --checkpoint model.pt \
        --output out/ [--labels city_labels.tif ...] [--set segment.actors=4 ...]

Inputs: files, directories, globs or s3:// prefixes of GeoTIFF/COG/VRT mosaics. Output (local or s3://):
OUT/<input>/mask.tif (1 building, 0 background, 255 nodata), metrics.json, preview.png, optionally prob.tif
and buildings.geojson, and OUT/summary.json. Rerunning the same command resumes from the finished blocks
in OUT/.work. Labels (a mask raster on the image's grid, or GeoJSON polygons; one per input in order, or
one directory matched by stem) add IoU, F1, precision, recall and accuracy to the metrics.
Runs on the Ray cluster if one is running (or under `ray job submit`), else on a local one.
Exit status: 0 all inputs done, 1 some input failed (each named in an `error:` line), 2 nothing could start.
"""
from __future__ import annotations

import argparse

import ray

from _cli import add_config_args, config_from_args, run_main
from segcore.pipelines.segment import plan_segment, run_segment


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH", help="mosaics: files, dirs, globs, s3://")
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="segcore or fork checkpoint, local or s3://")
    parser.add_argument("--output", required=True, metavar="OUT", help="output folder, local or s3://")
    parser.add_argument("--labels", nargs="+", default=[], metavar="PATH",
                        help="optional ground truth: one file per input (same order), or one directory matched by stem")
    add_config_args(parser)
    args = parser.parse_args()
    cfg = config_from_args(args)
    # The checkpoint, the output and every input are checked before Ray starts.
    plan = plan_segment(args.input, args.checkpoint, args.output, cfg, args.labels)
    ray.init()
    summary = run_segment(plan)
    print(f"{summary['ok']} input(s) segmented, {summary['failed']} failed, {summary['tiles_computed']} tiles in "
          f"{summary['seconds']:.1f} s ({summary['tiles_per_s']:.2f} tiles/s) -> {summary['output']}/summary.json")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    run_main(main)
