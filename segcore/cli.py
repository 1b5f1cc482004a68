"""The jobs' command lines: `python jobs/<job>.py ...` (what `ray job submit` runs) and the installed
`segcore-prepare`, `segcore-train`, `segcore-evaluate` and `segcore-segment` run these same functions.

Every job takes `--config X.yaml` and repeated `--set section.key=value`. Bad input is one line,
`error: ...` on stderr, and exit status 2, found before Ray starts; the pipelines start Ray themselves
(`ray.init()` joins a running cluster, e.g. under `ray job submit` or with RAY_ADDRESS, else starts a local one).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import NoReturn

from segcore.config import Config, load_config
from segcore.errors import InputError


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """Add `--config X.yaml` and repeated `--set section.key=value`."""
    parser.add_argument("--config", metavar="X.yaml",
                        help="YAML file naming the settings that differ from the defaults")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set prepare.tile_size=512 (repeatable)")


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


def run_main(main: Callable[[], int | None]) -> NoReturn:
    """Run `main` and exit with its code; an InputError, or an S3 endpoint that cannot be reached, becomes
    `error: <message>` on stderr and exit 2."""
    try:
        code = main()
    except InputError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        # s3fs passes botocore's connection and endpoint errors through unwrapped; their words name the URL.
        if not type(exc).__module__.startswith("botocore"):
            raise
        print(f"error: S3: {' '.join(str(exc).split())} (check s3.endpoint_url, s3.region and the network)",
              file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)


def _parser(usage: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=usage, formatter_class=argparse.RawDescriptionHelpFormatter)


PREPARE = """Cut city mosaics and their building labels into a patch dataset ROOT/{train,val,test}/{images,labels}/.

    python jobs/prepare.py --images city.tif --labels buildings.geojson --output data/patches \\
        [--config X.yaml] [--set prepare.tile_size=512 ...] [--overwrite]

Images: files, directories, globs, s3:// prefixes, https:// URLs of GeoTIFF/COG/VRT mosaics, or STAC JSON.
Labels: one file per image in the same order (an 8-bit mask raster on the image's grid, or polygons), or one
directory whose files are matched to the images by name (file stem, or STAC Item id).
"""


def _prepare() -> int:
    parser = _parser(PREPARE)
    parser.add_argument("--images", nargs="+", required=True, metavar="PATH", help="mosaics or STAC JSON")
    parser.add_argument("--labels", nargs="+", required=True, metavar="PATH",
                        help="one label file per image (same order), or one directory matched by name")
    parser.add_argument("--output", required=True, metavar="ROOT", help="dataset root, local or s3://")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty ROOT")
    add_config_args(parser)
    args = parser.parse_args()
    cfg = config_from_args(args)
    from segcore.pipelines.prepare import plan_dataset, run_plan

    plan = plan_dataset(args.images, args.labels, args.output, cfg, overwrite=args.overwrite)
    if plan.split_block != cfg.prepare.split_block:
        print(f"prepare.split_block {cfg.prepare.split_block} would leave a split without a square of this imagery: "
              f"using squares of {plan.split_block}", flush=True)
    summary = run_plan(plan)
    counts = ", ".join(f"{split} {n}" for split, n in summary.patches.items())
    print(f"wrote {sum(summary.patches.values())} patches ({counts}; {summary.skipped_nodata} all-nodata skipped) "
          f"from {summary.mosaics} mosaic(s) to {summary.output} in {summary.seconds:.1f} s")
    return 0


TRAIN = """Train RefineNet with DDP on Ray Train.

    python jobs/train.py --config configs/dev.yaml --set train.data_root=ROOT --set train.run_dir=runs/dev
    python jobs/train.py --resume runs/dev --set train.epochs=20     # continue the run, here to epoch 20
    ray job submit --working-dir . -- python jobs/train.py --config configs/train.yaml --set ...
"""


def _train() -> int:
    parser = _parser(TRAIN)
    add_config_args(parser)
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    args = parser.parse_args()
    from segcore.pipelines.train import resume_config, run_training

    # A resumed run keeps its own settings (data, model, ...): the command line changes only what it names.
    cfg = resume_config(args.resume, args.config, args.overrides) if args.resume else config_from_args(args)
    metrics = run_training(cfg, resume=args.resume)
    run_dir = args.resume or cfg.train.run_dir
    print(f"done: epoch {metrics.get('epoch')}, val IoU {metrics.get('val_iou', float('nan')):.4f}; "
          f"best checkpoint {run_dir}/checkpoints/best.pt")
    return 0


EVALUATE = """Evaluate a checkpoint on one split of a patch dataset: pixel IoU, F1, precision, recall, accuracy,
AUCs, and object F1 (buildings matched one-to-one at IoU >= 0.5 within each patch).

    python jobs/evaluate.py --checkpoint runs/dev/checkpoints/best.pt --data ROOT [--split test] [--output m.json]

The model, normalization and threshold come from the checkpoint (`--threshold` overrides the threshold); a fork
checkpoint loads into the config's model section. The config's train section sizes the workers.
"""


def _evaluate() -> int:
    parser = _parser(EVALUATE)
    add_config_args(parser)
    parser.add_argument("--checkpoint", required=True, help="a segcore or fork checkpoint, local or s3://")
    parser.add_argument("--data", required=True, metavar="ROOT", help="patch dataset root, local or s3://")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--threshold", type=float, help="decision threshold (default: the checkpoint's)")
    parser.add_argument("--output", help="also write the metrics to this JSON file")
    args = parser.parse_args()
    cfg = config_from_args(args)
    from segcore.pipelines.evaluate import run_evaluation
    from segcore.storage import write_bytes

    text = json.dumps(run_evaluation(cfg, args.checkpoint, args.data, args.split, args.threshold), indent=2)
    print(text)
    if args.output:
        write_bytes(args.output, text.encode(), cfg.s3)
    return 0


SEGMENT = """Segment building footprints in city mosaics: per input a Cloud-Optimized GeoTIFF mask and more.

    python jobs/segment.py --config configs/segment.yaml --input city.tif [more ...] --checkpoint model.pt \\
        --output out/ [--labels city_labels.tif ...] [--set segment.write_polygons=true ...]

Inputs: files, directories, globs, s3:// prefixes, https:// URLs of GeoTIFF/COG/VRT mosaics, or STAC JSON.
Output (local or s3://): OUT/<input>/mask.tif (1 building, 0 background, 255 nodata), metrics.json,
preview.png, optionally prob.tif and building footprints, and OUT/summary.json. Rerunning the same command
resumes from the finished blocks in OUT/.work. Labels (a mask raster on the image's grid, or polygons; one per
input in order, or one directory matched by name) add pixel and object metrics.
Exit status: 0 all inputs done, 1 some input failed (each named in an `error:` line), 2 nothing could start.
"""


def _segment() -> int:
    parser = _parser(SEGMENT)
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH", help="mosaics or STAC JSON")
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="segcore or fork checkpoint, local or s3://")
    parser.add_argument("--output", required=True, metavar="OUT", help="output folder, local or s3://")
    parser.add_argument("--labels", nargs="+", default=[], metavar="PATH",
                        help="optional ground truth: one file per input (same order), or one directory matched by name")
    add_config_args(parser)
    args = parser.parse_args()
    cfg = config_from_args(args)
    from segcore.pipelines.segment import plan_segment, run_segment

    summary = run_segment(plan_segment(args.input, args.checkpoint, args.output, cfg, args.labels))
    print(f"{summary['ok']} input(s) segmented, {summary['failed']} failed, {summary['tiles_computed']} tiles in "
          f"{summary['seconds']:.1f} s ({summary['tiles_per_s']:.2f} tiles/s) -> {summary['output']}/summary.json")
    return 1 if summary["failed"] else 0


def prepare() -> NoReturn:
    run_main(_prepare)


def train() -> NoReturn:
    run_main(_train)


def evaluate() -> NoReturn:
    run_main(_evaluate)


def segment() -> NoReturn:
    run_main(_segment)
