"""The work directory of a run: checked before any work, locked while the run lasts, swept of the
temporary files a killed run left, and never made to lose its last good results.

- ``--workdir`` must be a writable folder (a file or a read-only place is a :class:`ConfigError` that
  says so, before anything is computed).
- One bench at a time: an advisory lock (``fcntl.flock`` on ``<workdir>/.lock``) is held by rank 0; a
  second bench on the same folder exits at once, naming the first one's pid and start time, instead
  of computing everything twice and racing on the same files.
- ``.NAME.xxxxxxxx.tmp`` files (``uisbench.atomic_path`` writes through them) that a kill left behind
  are removed, once the lock is held (so none belongs to a live run).
- ``results.json`` is rotated to ``results.previous.json`` when the new results would lose a cell
  that was ``ok`` before (a rerun whose cell failed keeps the old numbers one file away).
"""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from ..errors import ConfigError
from ..io import atomic_write_text

__all__ = ["WorkdirLock", "check_workdir", "remove_stale_temporaries", "keep_previous_results"]


def check_workdir(workdir: Path) -> None:
    """Create ``workdir`` or explain why it cannot be used."""
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"--workdir {workdir} is a file, not a folder; pass a folder (it is created if absent).")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--workdir {workdir}: cannot create it ({err.strerror}); pass a folder you can write to.") from err
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise ConfigError(f"--workdir {workdir} is not writable by this user; pass a folder you can write to.")


class WorkdirLock:
    """The run's hold on its work directory (see the module docstring)."""

    def __init__(self, workdir: Path) -> None:
        self.path = workdir / ".lock"
        self._handle: IO[str] | None = None

    def acquire(self, argv: list[str], *, private: bool = False) -> None:
        """Hold the lock; ``argv`` (already redacted under ``--private``) and, unless ``private``, the
        host name go into ``.lock`` for the message a second bench gets."""
        import fcntl

        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the run
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = _holder(handle.read())
            handle.close()
            raise ConfigError(
                f"--workdir {self.path.parent} is in use by another bench ({holder}); wait for it to finish, "
                "or pass another --workdir. (The lock is released when that process ends, even if it is killed.)"
            ) from None
        handle.seek(0)
        handle.truncate()
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        handle.write(json.dumps({"pid": os.getpid(), "host": "<private>" if private else socket.gethostname(),
                                "started": stamp, "argv": argv}) + "\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing drops the flock
            self._handle = None


def _holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):
        return "a process that did not say which"


def remove_stale_temporaries(workdir: Path) -> int:
    """Delete the ``.NAME.xxxxxxxx.tmp`` files of atomic writes interrupted by a kill; returns how many."""
    removed = 0
    for path in workdir.rglob(".*.tmp"):
        if path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def keep_previous_results(workdir: Path, results: dict[str, Any]) -> Path | None:
    """Before ``results`` replaces ``results.json``: if a cell that was ``ok`` there is not ``ok`` (or
    gone) in ``results``, move the old file to ``results.previous.json``; returns that path, if moved."""
    current = workdir / "results.json"
    try:
        old = json.loads(current.read_text(encoding="utf-8"))
        old_cells = {(c["backbone"], c["masker"], c.get("student")): c["status"] for c in old["cells"]}
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None  # nothing (readable) to lose
    new_cells = {(c["backbone"], c["masker"], c.get("student")): c["status"] for c in results["cells"]}
    if all(new_cells.get(cell) == "ok" for cell, status in old_cells.items() if status == "ok"):
        return None
    previous = workdir / "results.previous.json"
    atomic_write_text(previous, current.read_text(encoding="utf-8"))
    return previous
