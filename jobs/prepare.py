"""Cut city mosaics and their building labels into a patch dataset ROOT/{train,val,test}/{images,labels}/.

    python jobs/prepare.py --images city.tif --labels buildings.geojson --output data/patches \
        [--config X.yaml] [--set prepare.tile_size=512 ...] [--overwrite]

Images: files, directories, globs or s3:// prefixes of GeoTIFF/COG/VRT mosaics. Labels: one file per image
in the same order (an 8-bit mask raster on the image's grid, or GeoJSON polygons), or one directory whose
files are matched to the images by stem. Runs on the Ray cluster if one is running, else on a local one
(on a cluster of several machines, a local ROOT must be on a filesystem they all share; else use s3://).
"""
from __future__ import annotations

import argparse

import ray

from _cli import add_config_args, config_from_args, run_main
from segcore.pipelines.prepare import plan_dataset, run_plan


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", nargs="+", required=True, metavar="PATH", help="mosaics: files, dirs, globs, s3://")
    parser.add_argument("--labels", nargs="+", required=True, metavar="PATH",
                        help="one label file per image (same order), or one directory matched by file stem")
    parser.add_argument("--output", required=True, metavar="ROOT", help="dataset root, local or s3://")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty ROOT")
    add_config_args(parser)
    args = parser.parse_args()
    cfg = config_from_args(args)
    # Every input is checked before Ray starts, so bad input fails fast with one line.
    plan = plan_dataset(args.images, args.labels, args.output, cfg, overwrite=args.overwrite)
    if plan.split_block != cfg.prepare.split_block:
        print(f"prepare.split_block {cfg.prepare.split_block} would leave a split without a square of this imagery: "
              f"using squares of {plan.split_block}", flush=True)
    ray.init()
    summary = run_plan(plan)
    counts = ", ".join(f"{split} {n}" for split, n in summary.patches.items())
    print(f"wrote {sum(summary.patches.values())} patches ({counts}; {summary.skipped_nodata} all-nodata skipped) "
          f"from {summary.mosaics} mosaic(s) to {summary.output} in {summary.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    run_main(main)
