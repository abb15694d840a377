"""``platform list KIND``: registry entries of one kind and their parameters."""

from __future__ import annotations

import argparse

from ..types import KINDS
from ._common import host_and_registry, print_json, table


def add_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("list", parents=[common], help="list registry entries of one kind")
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    host, registry = host_and_registry(args)
    items = []
    for name, entry in registry.entries[args.kind].items():
        spec = host.spec(args.kind, entry.plugin)
        info = host.provider(args.kind, entry.plugin)
        item = {
            "name": name,
            "plugin": entry.plugin,
            "description": entry.description or spec.description,
            "params": registry.resolved_params(entry, host),
            "source": entry.where(),
            "distribution": info.distribution if info else "local",
        }
        if getattr(spec, "calibration", False):
            item["calibration"] = True
        if args.kind == "datasets":
            item["presets"] = sorted(getattr(spec, "presets", {}))
            item["splits"] = list(spec.splits)
        if args.kind == "metrics":
            item["needs"], item["stages"] = sorted(spec.needs), sorted(spec.stages)
        items.append(item)
    if args.json:
        print_json(items)
        return 0
    rows = []
    for item in items:
        params = ", ".join(f"{k}={v!r}" for k, v in item["params"].items())
        extra = ""
        if item.get("presets"):
            extra = " presets: " + ", ".join(item["presets"])
        if item.get("calibration"):
            extra += " [calibration]"
        rows.append([item["name"], item["plugin"], item["description"] + extra, params])
    print(table(rows, ["entry", "plugin", "description", "parameters"]))
    return 0
