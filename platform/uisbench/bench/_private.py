"""``--private``: the site's names stay home, not only its pixels.

A folder named after a hospital ward is as telling as an image from it. Under ``--private`` (or the
registry's ``report: {images: false}``) every output meant to be shared (results.json, the
leaderboards, report.html and its pictures, the work directory's ``.lock``) holds no user path:

- the command line: an argument that names a path (it holds a path separator, or is the value of a
  path option such as ``--registry``/``--workdir``, or is a positional argument naming an existing
  file) becomes ``<private>``
  (``NAME=PATH`` of ``--set`` keeps its ``NAME=``); the program becomes its base name;
- every path the run knows (the work directory, the registry files, every path parameter of the
  run's entries: dataset roots, weights files) is replaced wherever it appears in a text, error
  messages included, and so is any other absolute path in a text;
- the machine's host name in ``.lock``.

What stays on site, by design: ``logs/`` (full tracebacks, for you), ``cache/`` (the run's data) and
``private/gallery.html`` (the site's images with their masks, never linked from report.html).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["PRIVATE", "private_argv", "Redactor", "redactor_for"]

PRIVATE = "<private>"
#: options whose value is a path (the CLI's ``bench`` command)
_PATH_OPTIONS = frozenset({"--registry", "--workdir", "--set"})
#: an absolute path inside a text: starts with ``/``, ``~/`` or ``C:\\`` after a space, quote, bracket,
#: ``=`` or the start (never inside a word: ``images/s``, ``pixels/kmeans`` and ``*/vote/-`` stay); a known
#: path already replaced inside it goes with it (``/srv/<private>``), one after it stays (``<private>/logs``)
_ABSOLUTE = re.compile(r"(?<![\w.*/\\~>-])(?:~|[A-Za-z]:)?[/\\](?=[^\s/\\])(?:<private>|[^\s'\"<>|,;()\[\]{}])*")


def _is_pathlike(arg: str) -> bool:
    if "/" in arg or "\\" in arg:
        return True
    try:
        return arg not in (".", "..") and not arg.startswith("-") and os.path.exists(arg)
    except (OSError, ValueError):
        return False


def private_argv(argv: Iterable[str]) -> list[str]:
    """``argv`` with every path replaced (see the module docstring)."""
    args = [str(a) for a in argv]
    out: list[str] = [Path(args[0]).name or args[0]] if args else []
    for previous, arg in zip(args, args[1:], strict=False):
        if arg.startswith("--") and "=" in arg:  # --workdir=/x
            option, value = arg.split("=", 1)
            out.append(f"{option}={PRIVATE}" if option in _PATH_OPTIONS or _is_pathlike(value) else arg)
        elif previous == "--set" and "=" in arg:  # --set root=/data/ward7: the name stays
            name, value = arg.split("=", 1)
            out.append(f"{name}={PRIVATE}" if _is_pathlike(value) else arg)
        elif previous in _PATH_OPTIONS:
            out.append(PRIVATE)
        elif previous.startswith("-") and not arg.startswith("-"):  # --dataset photos: an entry name, even if a folder is so named
            out.append(PRIVATE if "/" in arg or "\\" in arg else arg)
        elif not arg.startswith("-") and _is_pathlike(arg):
            out.append(PRIVATE)
        else:
            out.append(arg)
    return out


class Redactor:
    """Replaces the known ``paths`` (as given and resolved) and any other absolute path in texts."""

    def __init__(self, paths: Iterable[Any]) -> None:
        known: set[str] = set()
        for path in paths:
            if path is None or not str(path).strip():
                continue
            text = str(path)
            known.add(text)
            try:
                known.add(str(Path(text).expanduser().resolve()))
            except (OSError, RuntimeError, ValueError):
                pass
        # longest first, so a folder never leaves the tail of a longer path behind; "." and "/" are no names
        self.paths = sorted((p for p in known if len(p) > 1 and p not in ("..", "./")), key=len, reverse=True)

    def text(self, text: str) -> str:
        for path in self.paths:
            if path in text:
                text = text.replace(path, PRIVATE)
        return _ABSOLUTE.sub(PRIVATE, text)

    def __call__(self, value: Any) -> Any:
        """``value`` (dicts, lists, strings; keys kept) with every text redacted."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self(v) for v in value]
        return value


def redactor_for(pipeline: Any, registry: Any) -> Redactor:
    """The run's known paths: work directory, registry files, every path parameter of its entries."""
    ctx, plan = pipeline.ctx, pipeline.plan
    paths: list[Any] = [ctx.workdir, *getattr(registry, "files", [])]
    for kind in ("datasets", "backbones", "maskers", "students", "metrics"):
        names = [plan.dataset] if kind == "datasets" else list(getattr(plan, kind, []) or [])
        if kind == "backbones":
            names += list(plan.member_backbones())
        for name in names:
            try:
                entry = plan.entry(kind, name)
            except Exception:  # an entry the plan does not hold: nothing of it is in the outputs
                continue
            spec_params = {p.name: p for p in getattr(entry.spec, "params", ())}
            for key, value in (entry.params or {}).items():
                param = spec_params.get(key)
                if isinstance(value, str) and (param is not None and param.type == "path" or "/" in value or "\\" in value):
                    paths.append(value)
    return Redactor(paths)
