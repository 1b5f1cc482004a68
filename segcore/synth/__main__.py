"""Command line: ``python -m segcore.synth --width W --height H --seed S --output DIR``."""
from __future__ import annotations

import argparse

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
                        help=f"metres per pixel (default {DEFAULT_PIXEL_SIZE})")
    args = parser.parse_args(argv)
    paths = generate_city(args.output, args.width, args.height, seed=args.seed, crs=args.crs,
                          pixel_size=args.pixel_size)
    print(f"wrote {args.width}x{args.height} px city (seed {args.seed}, {args.crs}, "
          f"{args.pixel_size} m/px): {paths.image}, {paths.labels}, {paths.buildings}")


if __name__ == "__main__":
    main()
