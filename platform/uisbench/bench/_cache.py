"""The stage cache: content-addressed folders under ``<workdir>/cache``.

Every stage output lives under a key, the SHA-256 of a canonical JSON of everything it depends on
(plugin name, ``spec.version``, uisbench version, resolved parameters, weights file hash, dataset
fingerprint, split, upstream keys, seed). Layout::

    cache/features/<key>/<image_id>.pt            float32 (C, h, w) + valid mask, one per image
    cache/features/<key>/summary-<ids>.json       written when the split's images are all done
    cache/pseudo-masks/<key>/<image_id>.json      one per image (resume granularity)
    cache/pseudo-masks/<key>/summary-<ids>.json   all images' masks + cost, when complete
    cache/student/<key>/                          the student's own checkpoints (its ``workdir``)
    cache/student/<key>/summary.json              val predictions + cost, when complete
    cache/<stage>/<key>/refused.json              a combination the stage refused (IncompatibleError)
    cache/metrics/<key>.json                      computed values

Per-image and per-split files are written atomically (temp file + rename), so a kill leaves either
no entry or a complete one; the next run finds what is there and does the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..io import atomic_write_json
from ..io import file_sha256 as sha256_of_file

STAGES = ("features", "pseudo-masks", "student", "finetune", "metrics")


def canonical(obj: Any) -> str:
    """Stable JSON text of ``obj`` (sorted keys, tuples as lists, paths as strings)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_default)


def _default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    return repr(obj)


def make_key(**parts: Any) -> str:
    """A 24-hex-digit key of ``parts`` (enough against collisions, short enough for paths)."""
    return hashlib.sha256(canonical(parts).encode()).hexdigest()[:24]


def ids_digest(ids: Iterable[int]) -> str:
    return hashlib.sha256(",".join(str(int(i)) for i in ids).encode()).hexdigest()[:12]


def folder_digest(path: str | os.PathLike[str]) -> str:
    """Digest of a folder's listing (relative name, size, mtime of every file below it): a path
    parameter naming a folder (images, a weights directory) changes the key when its content does."""
    root = Path(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in root.rglob("*") if p.is_file()):
        st = item.stat()
        digest.update(f"{item.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return "dir:" + digest.hexdigest()


def file_sha256(path: str | os.PathLike[str], memo: Path | None = None) -> str:
    """SHA-256 of a file; with ``memo`` (a JSON file) reuse the hash while the file is provably the
    same one: same inode, size, modification *and* change time (``ctime`` cannot be set back by a
    user, so a file replaced with its old mtime is hashed again). A damaged memo is ignored."""
    path = Path(path).resolve()
    st = path.stat()
    stamp = f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    table: dict[str, Any] = {}
    if memo is not None:
        loaded = Cache.read(memo)
        table = loaded if isinstance(loaded, dict) else {}
        hit = table.get(str(path))
        if isinstance(hit, dict) and hit.get("stamp") == stamp and isinstance(hit.get("sha256"), str):
            return hit["sha256"]
    value = sha256_of_file(path)
    if memo is not None:
        table[str(path)] = {"stamp": stamp, "sha256": value}
        try:
            atomic_write_json(memo, table)
        except OSError:
            pass
    return value


class Cache:
    """The stage cache of one work directory: ``cache/<stage>/<key>/`` folders, metric results, and
    JSON reading that treats an unreadable file as absent (it is then recomputed)."""

    def __init__(self, workdir: Path) -> None:
        self.root = Path(workdir) / "cache"

    def dir(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def hash_memo(self) -> Path:
        return self.root / "file-hashes.json"

    def metric_file(self, key: str) -> Path:
        return self.root / "metrics" / f"{key}.json"

    @staticmethod
    def summaries(folder: Path) -> list[Path]:
        """Summaries of a per-image stage's folder (one per id list it was run over)."""
        return sorted(folder.glob("summary-*.json")) if folder.exists() else []

    @staticmethod
    def read(path: Path) -> Any | None:
        """The JSON at ``path``, or ``None`` when absent or unreadable (then it is recomputed)."""
        try:
            with open(path, encoding="utf-8") as handle:
                return json.load(handle)
        except (OSError, ValueError, RecursionError):  # absent, truncated, not UTF-8, nested absurdly deep
            return None

    @staticmethod
    def write(path: Path, obj: Mapping[str, Any] | list[Any]) -> None:
        atomic_write_json(path, obj, indent=None)
