"""Helpers shared by sub-commands: building the plugin host and the registry from CLI options."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def host_and_registry(args: argparse.Namespace, *, validate: bool = True) -> tuple[Any, Any]:
    from .._manager import load_plugins
    from ..registry import load_registry

    host = load_plugins(strict=args.strict_plugins)
    registry = load_registry(args.registry, host if validate else None)
    return host, registry


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def table(rows: list[list[Any]], headers: list[str], fmt: str = "simple") -> str:
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt=fmt)


def parse_columns(text: str) -> str | list[str]:
    """``--columns``: ``all`` or a comma-separated list of leaderboard columns."""
    return "all" if text.strip() == "all" else [c.strip() for c in text.split(",") if c.strip()]
