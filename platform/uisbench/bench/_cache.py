"""The stage cache: content-addressed folders under ``<workdir>/cache``.

Every stage output lives under a key, the SHA-256 of a canonical JSON of everything it depends on
(plugin name, ``spec.version``, uisbench version, resolved parameters, weights file hash, dataset
fingerprint, split, upstream keys, seed). Layout::

    cache/features/<key>/<image_id>.pt            fp16 (C, h, w) + valid mask, one per image
    cache/features/<key>/summary-<split>-<ids>.json   written when a split is complete
    cache/pseudo-masks/<key>/<image_id>.json      one per image (resume granularity)
    cache/pseudo-masks/<key>/masks-<split>-<ids>.json all images of a split + cost, when complete
    cache/student/<key>/                          the student's own checkpoints (its ``workdir``)
    cache/student/<key>/predictions.json          val predictions + cost, when complete
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

STAGES = ("features", "pseudo-masks", "student", "metrics")


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
    """SHA-256 of a file; with ``memo`` (a JSON file) reuse the hash while size and mtime match."""
    path = Path(path).resolve()
    st = path.stat()
    stamp = f"{st.st_size}:{st.st_mtime_ns}"
    table: dict[str, Any] = {}
    if memo is not None and memo.exists():
        try:
            table = json.loads(memo.read_text())
        except (OSError, ValueError):
            table = {}
        hit = table.get(str(path))
        if hit and hit.get("stamp") == stamp:
            return str(hit["sha256"])
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    if memo is not None:
        table[str(path)] = {"stamp": stamp, "sha256": value}
        try:
            atomic_write_json(memo, table)
        except OSError:
            pass
    return value


class Cache:
    """Paths and readers/writers of the stage cache of one work directory."""

    def __init__(self, workdir: Path) -> None:
        self.root = Path(workdir) / "cache"

    # -- folders ---------------------------------------------------------------------------------

    def dir(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def hash_memo(self) -> Path:
        return self.root / "file-hashes.json"

    # -- features --------------------------------------------------------------------------------

    def feature_file(self, key: str, image_id: int) -> Path:
        return self.dir("features", key) / f"{int(image_id)}.pt"

    def summary_file(self, stage: str, key: str, split: str, ids: list[int]) -> Path:
        name = "summary" if stage == "features" else "masks"
        return self.dir(stage, key) / f"{name}-{split}-{ids_digest(ids)}.json"

    def other_summaries(self, stage: str, key: str) -> list[Path]:
        folder = self.dir(stage, key)
        name = "summary" if stage == "features" else "masks"
        return sorted(folder.glob(f"{name}-*.json")) if folder.exists() else []

    # -- pseudo-masks ----------------------------------------------------------------------------

    def mask_file(self, key: str, image_id: int) -> Path:
        return self.dir("pseudo-masks", key) / f"{int(image_id)}.json"

    # -- student ---------------------------------------------------------------------------------

    def student_dir(self, key: str) -> Path:
        return self.dir("student", key)

    def predictions_file(self, key: str) -> Path:
        return self.student_dir(key) / "predictions.json"

    def skipped_file(self, key: str) -> Path:
        return self.student_dir(key) / "skipped.json"

    # -- metrics ---------------------------------------------------------------------------------

    def metric_file(self, key: str) -> Path:
        return self.root / "metrics" / f"{key}.json"

    # -- generic json ----------------------------------------------------------------------------

    @staticmethod
    def read(path: Path) -> Any | None:
        """The JSON at ``path``, or ``None`` when absent or unreadable (then it is recomputed)."""
        try:
            with open(path, encoding="utf-8") as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return None

    @staticmethod
    def write(path: Path, obj: Mapping[str, Any] | list[Any]) -> None:
        atomic_write_json(path, obj, indent=None)
