"""docs/architecture.md matches the tree: every path it names exists, and its file map names every
module of the core (``platform/uisbench/``) and of the built-ins (``plugins/uisbench_builtins/``), so
the map cannot rot when a module is added, moved or removed."""

from __future__ import annotations

import re
from pathlib import Path

from helpers import REPO_ROOT

DOC = REPO_ROOT / "docs" / "architecture.md"
SOURCES = ("platform/uisbench", "plugins/uisbench_builtins")
# where a short path of the prose resolves: `bench/_stage.py` means platform/uisbench/bench/_stage.py
BASES = ("", "platform/uisbench", "platform/uisbench/bench", "plugins")
_BACKTICKED = re.compile(r"`([^`\s]+)`")
_PATH = re.compile(r"^[\w.-]+(?:/[\w.-]+)*/?$")
_PROSE_PY = re.compile(r"(?<![\w/.])((?:[\w-]+/)+[\w]+\.py)\b")  # diagram lines name files without backticks


def named_paths(text: str) -> set[str]:
    """Every path-like name in ``text``: backticked names with a ``/`` (``tests/x.py::test`` counts as
    its file), and ``dir/file.py`` anywhere."""
    found = set()
    for token in _BACKTICKED.findall(text):
        token = token.split("::")[0]
        if "/" in token and _PATH.match(token):
            found.add(token)
    found.update(_PROSE_PY.findall(text))
    return found


def missing_paths(text: str, root: Path = REPO_ROOT) -> list[str]:
    return sorted(p for p in named_paths(text) if not any((root / base / p).exists() for base in BASES))


def file_map(text: str) -> str:
    start = text.index("\n## File map")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def unnamed_modules(text: str, root: Path = REPO_ROOT) -> list[str]:
    """Modules under :data:`SOURCES` the file map does not name (a package's ``__init__.py`` is
    named by the file itself or by its folder, written with a trailing ``/``)."""
    named = named_paths(file_map(text))
    missing = []
    for source in SOURCES:
        for path in sorted((root / source).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if "__pycache__" in rel or rel in named:
                continue
            if path.name == "__init__.py" and path.parent.relative_to(root).as_posix() + "/" in named:
                continue
            missing.append(rel)
    return missing


def test_every_path_the_architecture_doc_names_exists():
    text = DOC.read_text(encoding="utf-8")
    assert len(named_paths(file_map(text))) > 50  # a check that finds nothing to check must fail
    assert missing_paths(text) == [], "docs/architecture.md names paths that do not exist: fix or remove them"


def test_the_file_map_names_every_module():
    unnamed = unnamed_modules(DOC.read_text(encoding="utf-8"))
    assert unnamed == [], f"add these to the file map of docs/architecture.md (one line each): {unnamed}"


def test_the_checks_catch_a_stale_map(tmp_path):
    """Independent of the real doc: a tree with one module the map omits and a map line naming a
    module that is gone are both reported."""
    for rel in ("platform/uisbench/__init__.py", "platform/uisbench/new.py", "plugins/uisbench_builtins/x.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    doc = ("# t\n\n## File map\n\n| `platform/uisbench/__init__.py` | facade |\n"
           "| `plugins/uisbench_builtins/x.py` | x |\n| `platform/uisbench/gone.py` | gone |\n\nsee bench/_gone.py\n")
    assert unnamed_modules(doc, tmp_path) == ["platform/uisbench/new.py"]
    assert missing_paths(doc, tmp_path) == ["bench/_gone.py", "platform/uisbench/gone.py"]
