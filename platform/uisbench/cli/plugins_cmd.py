"""``platform plugins``: installed plugins, their distribution and version, and load failures."""

from __future__ import annotations

import argparse

from ._common import print_json, table


def add_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("plugins", parents=[common], help="list installed plugins and load failures")
    p.add_argument("--all", action="store_true", help="include the built-in plugins")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--requirements", action="store_true", help="print name==version lines of third-party plugins")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .._manager import get_plugin_manager
    from ..types import KINDS

    host = get_plugin_manager(strict=args.strict_plugins)
    provides: dict[str, list[str]] = {}
    for kind in KINDS:
        for name in host.specs(kind):
            info = host.provider(kind, name)
            if info is not None:
                provides.setdefault(info.name, []).append(f"{kind[:-1]}:{name}")
    plugins = [p for p in host.plugins.values() if args.all or not p.builtin]
    if args.requirements:
        for dist in sorted({(p.distribution, p.version) for p in plugins if not p.builtin}):
            print(f"{dist[0]}=={dist[1]}")
        return 0
    if args.json:
        print_json(
            {
                "plugins": [
                    {**vars(p), "builtin": p.builtin, "provides": provides.get(p.name, [])} for p in plugins
                ],
                "failures": [vars(f) for f in host.failures],
            }
        )
        return 0
    rows = [[p.name, p.distribution, p.version, ", ".join(provides.get(p.name, []))] for p in plugins]
    if rows:
        print(table(rows, ["plugin", "distribution", "version", "provides"]))
    else:
        hidden = sum(p.builtin for p in host.plugins.values())
        print(f"No third-party plugins installed ({hidden} built-in; `platform plugins --all` shows them).")
    if host.failures:
        print("\nFailed to load:")
        print(table([[f.name, f.distribution, f.version, f.error] for f in host.failures], ["plugin", "distribution", "version", "error"]))
    return 0
