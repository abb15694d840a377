"""``platform new-plugin KIND NAME --out DIR``: write a pip-installable plugin distribution to start from.

The files come from ``uisbench/templates`` (``string.Template``, ``${name}`` placeholders): a
pyproject with the ``uisbench`` entry point, one module with a documented hookimpl and its declared
parameters, a registry snippet, a test file running :mod:`uisbench.testing`, a short README.
"""

from __future__ import annotations

import argparse
import sys

#: The kinds a plugin can be, as the command takes them (singular).
KINDS = ("backbone", "masker", "metric", "student", "dataset")

#: Per kind: parameters that make the generated test run in seconds, and the registry entry's parameters.
_TINY = {
    "backbone": ({"size": 32, "patch_size": 8}, ", size: 128, patch_size: 8"),
    "masker": ({}, ", threshold: 0.5"),
    "metric": ({}, ", min_score: 0.0"),
    "student": ({}, ", score: 0.5"),
    "dataset": ({"images": 3, "size": 32}, ", images: 8, size: 64"),
}


def add_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("new-plugin", parents=[common], help="write a new plugin distribution to start from",
                              description="Write a pip-installable uisbench plugin distribution: pyproject.toml (entry "
                              "point), one module, a registry snippet, tests using uisbench.testing and a README.")
    p.add_argument("kind", choices=KINDS, help="what the plugin provides")
    p.add_argument("name", help="the plugin's name (lower-case letters, digits, '.', '-', '_'), e.g. acme-vit")
    p.add_argument("--out", metavar="DIR", help="folder to write (must not exist or be empty; default: ./uisbench-NAME)")
    p.set_defaults(run=run)


def render(kind: str, name: str) -> dict[str, str]:
    """The distribution's files, relative path -> text, for a plugin ``name`` of ``kind``."""
    import re
    import string
    from importlib import resources

    from ..errors import ConfigError

    if kind not in KINDS:
        raise ConfigError(f"new-plugin: unknown kind {kind!r}; use one of {', '.join(KINDS)}.")
    if not re.fullmatch(r"[a-z][a-z0-9_.\-]*", name):
        raise ConfigError(f"new-plugin: name {name!r} is invalid: start with a letter, then lower-case letters, digits, "
                          "'.', '-', '_' (e.g. acme-vit).")
    slug = re.sub(r"[^a-z0-9]+", "_", name).strip("_")
    tiny, entry = _TINY[kind]
    values = {
        "name": name,
        "kind": kind,
        "kinds": kind + "s",
        "dist": f"uisbench-{slug.replace('_', '-')}",
        "module": f"uisbench_{slug}",
        "Class": "".join(part.capitalize() for part in slug.split("_")) + kind.capitalize(),
        "tiny": repr(tiny),
        "entry_params": entry,
    }
    folder = resources.files("uisbench") / "templates"

    def fill(template: str) -> str:
        return string.Template((folder / template).read_text(encoding="utf-8")).substitute(values)

    return {
        "pyproject.toml": fill("pyproject.toml.tmpl"),
        "README.md": fill("README.md.tmpl"),
        f"{values['module']}.py": fill(f"{kind}.py.tmpl"),
        "registry-snippet.yaml": fill("registry.yaml.tmpl"),
        f"tests/test_{values['module']}.py": fill("test.py.tmpl"),
    }


def write(kind: str, name: str, out: str | None = None) -> list[str]:
    """Write the distribution into ``out`` (default ``./uisbench-NAME``); returns the files written."""
    from pathlib import Path

    from ..errors import ConfigError
    from ..io import atomic_write_text

    files = render(kind, name)
    dist = files["pyproject.toml"].split('name = "', 1)[1].split('"', 1)[0]
    target = Path(out) if out else Path(dist)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(f"new-plugin: {target} exists and is not an empty folder; choose another --out.")
    written = []
    for rel, text in files.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
        written.append(str(path))
    return written


def run(args: argparse.Namespace) -> int:
    written = write(args.kind, args.name, args.out)
    folder = written[0].rsplit("/", 1)[0] if "/" in written[0] else "."
    print(f"wrote a {args.kind} plugin {args.name!r}:")
    for path in written:
        print(f"  {path}")
    print(f"next: cd {folder} && pip install -e . && pytest    (then `platform plugins` lists it)", file=sys.stdout)
    return 0
