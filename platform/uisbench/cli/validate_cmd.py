"""``platform validate [FILE...]``: check registry files; exit 0 when valid, list every problem otherwise."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("validate", parents=[common], help="validate registry files")
    p.add_argument("files", nargs="*", help="registry files (default: the shipped registry.yaml)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .._manager import load_plugins
    from ..errors import ConfigError
    from ..registry import default_registry_path, load_registry

    host = load_plugins(strict=args.strict_plugins)
    default = default_registry_path().resolve()
    files = list(args.files) or [str(default)]
    status = 0
    for path in files:
        # A user file extends the shipped one, so its bench section may name shipped entries.
        is_default = Path(path).resolve() == default
        try:
            load_registry([*args.registry, path] if not is_default else args.registry, host, include_default=True,
                          check_files=True)
        except ConfigError as err:
            status = 1
            print(f"{path}: {len(err.problems)} problem(s)", file=sys.stderr)
            for line in err.problems:
                print(f"  {line}", file=sys.stderr)
            continue
        print(f"{path}: ok")
    return status
