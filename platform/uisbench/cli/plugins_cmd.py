"""``platform plugins``: installed plugins, their distribution and version, load failures and name
conflicts. It lists both providers of a conflicting name (every other command refuses to run until
one is uninstalled), so this is where such a clash gets diagnosed.

A distribution's entry point (``acme``) is not what a registry entry names: ``plugin:`` takes a
plugin name that the entry point provides (``acme-resnet18``). The default view lists those names
per entry point, ``--all`` one per row."""

from __future__ import annotations

import argparse

from ._common import print_json, table


def add_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("plugins", parents=[common], help="list installed plugins and load failures")
    p.add_argument("--all", action="store_true", help="one row per registered backbone, masker, ... with its version")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--requirements", action="store_true", help="print name==version lines of third-party plugins")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .._manager import load_plugins
    from ..types import KINDS

    host = load_plugins(strict=args.strict_plugins)
    provides: dict[str, list[str]] = {}
    specs = []
    conflicts = []
    for kind in KINDS:
        for name, owners in host.providers(kind).items():
            for spec, info in owners:
                owner = info.name if info else "local"
                provides.setdefault(owner, []).append(f"{kind[:-1]}:{name}")
                specs.append(
                    {
                        "kind": kind[:-1],
                        "name": name,
                        "version": spec.version,
                        "plugin": owner,
                        "distribution": info.distribution if info else "local",
                        "description": spec.description,
                    }
                )
        conflicts += host.conflicts(kind)
    plugins = sorted(host.plugins.values(), key=lambda p: (p.builtin, p.name))  # third-party first
    if args.requirements:
        for dist in sorted({(p.distribution, p.version) for p in plugins if not p.builtin}):
            print(f"{dist[0]}=={dist[1]}")
        return 0
    if args.json:
        print_json(
            {
                "plugins": [{**vars(p), "builtin": p.builtin, "provides": provides.get(p.name, [])} for p in plugins],
                "specs": specs,
                "failures": [vars(f) for f in host.failures],
                "conflicts": conflicts,
            }
        )
        return 0
    if args.all:
        rows = [[s["kind"], s["name"], s["version"], s["plugin"], s["distribution"], s["description"]] for s in specs]
        print(table(rows, ["kind", "plugin name", "version", "entry point", "distribution", "description"]))
    else:
        def names(owner: str) -> str:  # "backbone:acme-resnet18" -> "acme-resnet18 (backbone)"
            return ", ".join(f"{n.split(':', 1)[1]} ({n.split(':', 1)[0]})" for n in provides.get(owner, []))

        rows = [[p.name, p.distribution, p.version, "built-in" if p.builtin else "third-party", names(p.name)] for p in plugins]
        print(table(rows, ["entry point", "distribution", "version", "origin", "plugin names (registry `plugin:`)"])
              if rows else "No plugins installed.")
    if specs and not args.all:
        example = next((s for s in specs if s["distribution"] not in ("uisbench", "local")), specs[0])
        print(f"\nA registry entry names a plugin name, not an entry point: e.g. `plugin: {example['name']}` "
              "(`platform plugins --all`: one per row, with descriptions).")
    if host.failures:
        print("\nFailed to load (the rest works; --strict-plugins makes this an error):")
        print(
            table(
                [[f.name, f.distribution, f.version, f.error] for f in host.failures],
                ["plugin", "distribution", "version", "error"],
            )
        )
    if conflicts:
        print("\nConflicting names (other commands refuse to run until one provider is uninstalled or renames its entry):")
        print("\n".join(f"  {line}" for line in conflicts))
    return 0
