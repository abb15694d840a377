"""File helpers: crash-safe writing, streamed hashing, and the one JSON fallback (:func:`json_default`).

Writing goes to a temporary file in the same folder, is fsynced, then renamed: a Ctrl-C or a kill at
any point leaves either the old file or the new one, never half of one. :func:`file_sha256` hashes a
file of any size in 1 MiB blocks (weights files run to gigabytes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "read_json",
    "json_default",
    "file_sha256",
    "regular_file_problem",
]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed over ``path``.

    Use it with writers that want a file name (``torch.save``, ``Image.save``)::

        with atomic_path(ckpt) as tmp:
            torch.save(state, tmp)
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; results are meant to be shared
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process umask, read without changing it where Linux tells it (os.umask(0) would race
    with other threads creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write(path: str | os.PathLike[str], mode: str, write: Callable[[IO[Any]], None]) -> None:
    with atomic_path(path) as tmp, open(tmp, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as handle:
        write(handle)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    _write(path, "wb", lambda h: h.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    _write(path, "w", lambda h: h.write(text))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 1) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=json_default) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks (memory stays flat for huge files).

    Backbones record it as ``weights_sha256`` in their provenance::

        {"weights": str(path), "weights_sha256": uisbench.io.file_sha256(path)}
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def regular_file_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be read as a file, as the end of a sentence naming it, or ``None`` if it can.

    Only ``stat`` is called (through symbolic links): a FIFO, a device or a folder is refused before
    anything opens it (opening a FIFO blocks until a writer comes, ``/dev/zero`` never ends)::

        problem = uisbench.io.regular_file_problem(path)
        if problem:
            raise uisbench.ConfigError(f"weights file {path} {problem}; fix `weights:` in your registry file.")
    """
    import stat

    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "not found"
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    kind = next((name for test, name in kinds if test(mode)), "not a file")
    return f"is not a regular file ({kind})"


def json_default(obj: Any) -> Any:
    """The ``default=`` of every ``json.dumps`` in uisbench and its built-ins: what JSON cannot hold
    natively, as JSON, one rule everywhere (cache keys, results.json, checkpoints' provenance)::

        json.dumps(value, default=uisbench.io.json_default)

    - a set or frozenset: its sorted list (a set has no order; sorting makes the text stable)
    - numpy and torch scalars and arrays (anything with ``tolist``): ``tolist()``, numbers or
      nested lists; other objects with ``item`` (scalars): ``item()``
    - a path (``os.PathLike``): its string
    - a dataclass instance: ``dataclasses.asdict``
    - anything else: ``TypeError`` naming the type (a silent ``repr`` or ``str`` would put text that
      changes between runs, such as an address, into a cache key or a result)
    """
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"{type(obj).__module__}.{type(obj).__qualname__} is not JSON serialisable; "
                    "convert it to a str, number, list or dict first (rules: uisbench.io.json_default)")
