"""Fingerprints of the code that computes a stage, so that a code change never reuses an old cache entry.

A plugin's declared ``version`` is a promise its author may forget to keep; the source is the truth.
:func:`code_fingerprint` hashes the source file of a module plus every module of the same top-level
package it imports, transitively (found with :mod:`ast`, nothing is imported for it). Cache keys take
the fingerprint of each entry's plugin module (``ResolvedEntry.identity["code"]``) and of the stage's
own module with the core modules it runs through (``StageRunner.key``).

Edit one line of a plugin, of one of its private helper modules or of a stage, and the keys of every
stage built on it change. Modules without a source file (built into the interpreter, or defined
interactively) are named instead of hashed.

The walk reaches the whole package (every module imports ``uisbench``, whose ``__init__`` imports
the rest), so the two folders that only *present* finished results are left out: ``bench/report/``
(the report, the leaderboard table) and ``cli/`` (the command line), :data:`PRESENTATION`. Editing
the report must not recompute a day of features; a module added to either folder is left out
without touching this file. Nothing a stage computes may import them (``tests/test_bench.py``
checks it).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

__all__ = ["PRESENTATION", "code_fingerprint", "factory_fingerprint"]

#: the packages (folders ``bench/report/``, ``cli/``) that format results and never compute them:
#: no module in them is part of any fingerprint
PRESENTATION = ("uisbench.bench.report", "uisbench.cli")


def _presentation(module: str) -> bool:
    """``module`` is one of the :data:`PRESENTATION` packages or a module inside one (its folder)."""
    return any(module == p or module.startswith(p + ".") for p in PRESENTATION)


@functools.lru_cache(maxsize=256)
def _roots(top: str) -> tuple[Path, ...]:
    """Folders of top-level package ``top`` (a plain module: its file). Found without importing it."""
    loaded = sys.modules.get(top)
    if loaded is not None:
        if getattr(loaded, "__path__", None):
            return tuple(Path(p) for p in loaded.__path__)
        return (Path(loaded.__file__),) if getattr(loaded, "__file__", None) else ()
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return ()
    if spec is None:
        return ()
    if spec.submodule_search_locations:
        return tuple(Path(p) for p in spec.submodule_search_locations)
    return (Path(spec.origin),) if spec.origin else ()


def _source_file(module: str) -> Path | None:
    """The ``.py`` file of ``module``, by path alone: importing a module to find it could be slow
    (torch) or have side effects."""
    top, _, rest = module.partition(".")
    for root in _roots(top):
        if root.suffix == ".py":
            candidates = [root] if not rest else []
        else:
            base = root.joinpath(*rest.split(".")) if rest else root
            candidates = [base / "__init__.py"] if not rest else [base.with_suffix(".py"), base / "__init__.py"]
        for path in candidates:
            if path.is_file():
                return path
    return None


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _imports(module: str, path: Path, source: bytes) -> set[str]:
    """Absolute names of the modules ``source`` imports (anywhere in it, function bodies included)."""
    package = module if _is_package(path) else module.rpartition(".")[0]
    try:
        tree = ast.parse(source, filename=str(path))
    except (SyntaxError, ValueError):
        return set()
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                try:
                    base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
                except ImportError:
                    continue
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return found


@functools.lru_cache(maxsize=4096)
def _file_info(module: str, path: Path, stamp: tuple[int, int, int]) -> tuple[str, frozenset[str]]:
    """SHA-256 and imports of a source file; cached per (inode, size, mtime), so an edited file is
    read again (a long-lived process that reloads a plugin sees the new code)."""
    source = path.read_bytes()
    return hashlib.sha256(source).hexdigest(), frozenset(_imports(module, path, source))


def code_fingerprint(module: str) -> str:
    """SHA-256 (24 hex digits) of ``module``'s source and of the modules of its top-level package that
    it imports, transitively."""
    top = module.partition(".")[0]
    hashes: dict[str, str | None] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in hashes:
            continue
        path = _source_file(name)
        hashes[name] = None
        if path is None:
            continue
        st = path.stat()
        hashes[name], imported = _file_info(name, path, (st.st_ino, st.st_size, st.st_mtime_ns))
        todo.extend(m for m in imported if m.partition(".")[0] == top and m not in hashes and not _presentation(m))
    digest = hashlib.sha256()
    for name in sorted(hashes):
        if hashes[name] is not None:
            digest.update(f"{name}\0{hashes[name]}\n".encode())
    if hashes[module] is None:
        digest.update(f"no source: {module}".encode())
    return digest.hexdigest()[:24]


def factory_fingerprint(factory: Any) -> str:
    """The code fingerprint of the module that defines a plugin's factory (class, function, partial)."""
    target = getattr(factory, "func", factory)  # functools.partial
    module = getattr(target, "__module__", None) or type(target).__module__
    return code_fingerprint(module)
