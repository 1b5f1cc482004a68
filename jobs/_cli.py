"""The command-line pieces every job shares: config arguments, and bad input as `error: ...`, exit 2."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn, Optional

from segcore.config import Config, load_config
from segcore.errors import InputError


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """Add `--config X.yaml` and repeated `--set section.key=value`."""
    parser.add_argument("--config", metavar="X.yaml", help="YAML file naming the settings that differ from the defaults")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set prepare.tile_size=512 (repeatable)")


def config_from_args(args: argparse.Namespace) -> Config:
    """The Config named by the arguments `add_config_args` added."""
    return load_config(args.config, args.overrides)


def run_main(main: Callable[[], Optional[int]]) -> NoReturn:
    """Run `main` and exit with its code; an InputError becomes `error: <message>` on stderr and exit 2."""
    try:
        code = main()
    except InputError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
