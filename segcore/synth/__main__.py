"""Command line: ``python -m segcore.synth --width W --height H --seed S --output DIR``."""
from __future__ import annotations

import argparse
import sys

from segcore.config import load_config
from segcore.errors import InputError
from segcore.synth.city import DEFAULT_CRS, DEFAULT_PIXEL_SIZE, generate_city


def _count(minimum: int):
    """An argparse type: an integer no smaller than `minimum`."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m segcore.synth", description=__doc__)
    parser.add_argument("--width", type=_count(1), required=True, help="image width in pixels")
    parser.add_argument("--height", type=_count(1), required=True, help="image height in pixels")
    parser.add_argument("--seed", type=_count(0), default=0, help="city seed (default 0)")
    parser.add_argument("--output", required=True, help="directory to write the files to")
    parser.add_argument("--crs", default=DEFAULT_CRS, help=f"projected CRS (default {DEFAULT_CRS})")
    parser.add_argument("--pixel-size", type=float, default=DEFAULT_PIXEL_SIZE,
                        help=f"metres per pixel of the plan (default {DEFAULT_PIXEL_SIZE})")
    parser.add_argument("--config", metavar="X.yaml", help="a config whose synth section sets the look")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set synth.haze=0.2 (repeatable)")
    args = parser.parse_args(argv)
    try:
        realism = load_config(args.config, args.overrides).synth
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    paths = generate_city(args.output, args.width, args.height, seed=args.seed, crs=args.crs,
                          pixel_size=args.pixel_size, realism=realism)
    resolution = realism.ground_resolution or args.pixel_size
    print(f"wrote {args.width}x{args.height} px city (seed {args.seed}, {args.crs}, "
          f"{resolution} m/px): {paths.image}, {paths.labels}, {paths.buildings}")


if __name__ == "__main__":
    main()
