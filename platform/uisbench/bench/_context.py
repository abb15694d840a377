"""What one bench run shares between its parts: the options, the device, the ranks, the cache, the
log, and the counters of what was built and computed.

Everything here is cheap to create; torch is imported only where a device or a seed is needed.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import BackboneUnavailable, ConfigError, IncompatibleError
from ._cache import STAGES, Cache
from ._shard import Shard, detect_shard

__all__ = ["BenchOptions", "BenchContext", "WorkdirWriteError", "resolve_device", "seed_everything", "short_error", "progress_bar",
           "write_failure"]


@dataclass
class BenchOptions:
    """What ``platform bench`` was asked to do. ``None`` lists mean "the registry's bench default"."""

    backbones: list[str] | None = None
    maskers: list[str] | None = None
    students: list[str] | None = None
    metrics: list[str] | None = None
    dataset: str | None = None
    device: str = "auto"
    workdir: Path = Path("runs/default")
    force: frozenset[str] = frozenset()
    skip_bad_images: bool = False
    limit: int | None = None
    seed: int | None = None
    #: repetitions of the stochastic stages (default: the registry's bench seeds)
    seeds: int | None = None
    #: bootstrap resamples per confidence interval (default: the registry's bench bootstrap; 0: none)
    bootstrap: int | None = None
    #: METRIC.VALUE or STAGE.METRIC.VALUE to rank by (default: the registry's bench rank_by)
    rank_by: str | None = None
    #: the few-label stage's ``finetune:`` entry, or ``"none"`` (default: the registry's bench finetune)
    finetune: str | None = None
    batch_size: int = 8
    num_workers: int | None = None
    report: bool = True
    report_images: int = 4
    #: no image pixels, thumbnails or image file paths in any output (ids only): for images that may
    #: not leave the site (``--private``; the registry's ``report: {images: false}`` too)
    private: bool = False
    argv: list[str] = field(default_factory=list)


def resolve_device(device: str) -> str:
    if device in (None, "", "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: CUDA is not available here; use --device cpu or auto.")
    elif device != "cpu":
        raise ConfigError(f"--device {device!r}: use auto, cpu, cuda or cuda:N.")
    return device


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def short_error(err: BaseException) -> str:
    """One readable line for a cell's ``reason``: uisbench's own messages as they are, others with
    their exception type."""
    text = str(err).strip() or type(err).__name__
    if not isinstance(err, (BackboneUnavailable, IncompatibleError, ConfigError)):
        text = f"{type(err).__name__}: {text}"
    return text if len(text) <= 2000 else text[:1997] + "..."


#: The width budget of what the bench prints: progress lines and the terminal table (``--columns all``
#: or a list of columns goes past it on purpose).
TERMINAL_WIDTH = 120


def fit_to_terminal(text: str) -> list[str]:
    """``text`` wrapped at spaces into lines of :data:`TERMINAL_WIDTH` columns, continuations indented
    by two; entry names (``dino-vits16-cpu``) and paths are never split, a leading indent is kept."""
    import textwrap

    return textwrap.wrap(text, TERMINAL_WIDTH, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False) or [text]


def shorten(text: str, limit: int) -> str:
    """``text`` when it fits ``limit`` characters, else cut at a word with an ellipsis."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    return (cut.rsplit(" ", 1)[0] if " " in cut else cut).rstrip(",:;") + "…"


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=None if enabled else True, leave=False, dynamic_ncols=True)


def _check_ranges(options: BenchOptions, seeds: int, bootstrap: int) -> None:
    """The run's counts, checked for Python callers as the command line checks its options (a batch
    size of 0 was taken for 1, a limit of 0 said only "split has no images")."""
    from ..registry import MAX_BOOTSTRAP

    wrong = [
        f"{name} must be an integer {bound} (got {value})"
        for name, value, ok, bound in (
            ("--batch-size (batch_size)", options.batch_size, options.batch_size >= 1, ">= 1"),
            ("--workers (num_workers)", options.num_workers, options.num_workers is None or options.num_workers >= 0, ">= 0"),
            ("--limit (limit)", options.limit, options.limit is None or options.limit >= 1, ">= 1"),
            ("--repeats (seeds)", seeds, seeds >= 1, ">= 1"),
            ("--bootstrap (bootstrap)", bootstrap, 0 <= bootstrap <= MAX_BOOTSTRAP, f">= 0 and <= {MAX_BOOTSTRAP}"),
        )
        if not ok
    ]
    if wrong:
        raise ConfigError("; ".join(wrong) + ".")


class BenchContext:
    """The run-wide state every stage and evaluator reads (one per ``run_bench``)."""

    def __init__(self, options: BenchOptions, seed: int, seeds: int = 1, bootstrap: int = 0) -> None:
        self.options = options
        self.workdir = Path(options.workdir)
        self.cache = Cache(self.workdir)
        self.device = resolve_device(options.device)
        self.shard: Shard = detect_shard(self.device)
        if self.shard.distributed and self.device.startswith("cuda") and ":" not in self.device:
            self.device = f"cuda:{self.shard.local_rank}"
        self.device_type = self.device.split(":")[0]
        self.seed = int(seed)
        _check_ranges(options, int(seeds), int(bootstrap))
        self.seeds = int(seeds)
        self.bootstrap = int(bootstrap)
        self.force = _expand_force(options.force)
        self.batch_size = int(options.batch_size)
        default_workers = 0 if self.device_type == "cpu" else 4
        self.num_workers = options.num_workers if options.num_workers is not None else default_workers
        #: plugin objects built in this run ("backbone:NAME", ...): empty on a fully cached rerun
        self.built: list[str] = []
        #: images (or students, metric results) computed in this run, per stage
        self.computed = {stage: 0 for stage in STAGES}
        name = f"bench-rank{self.shard.rank}.log" if self.shard.distributed else "bench.log"
        self.log_path = self.workdir / "logs" / name
        self.show_progress = self.shard.main
        #: no image pixels or paths in the outputs (``BenchOptions.private`` or the registry's report section)
        self.private = bool(options.private)
        #: under ``--private``, the run's known paths replaced in every line :meth:`say` prints (a
        #: plugin's reason may quote its dataset folder; a terminal log pasted into a ticket is shared)
        self.redact: Callable[[str], str] | None = None

    def say(self, text: str) -> None:
        """A line for the user on stderr, from rank 0 only."""
        if self.shard.main:
            print(self.redact(text) if self.redact is not None else text, file=sys.stderr, flush=True)

    def log_failure(self, what: str, err: BaseException) -> None:
        """Append ``err``'s traceback to the run's log (the cell's reason points here).

        A failure to write (disk full, quota, file size limit) is no cell's fault and would fail every
        cell after it, and logging it would fail too: it stops the run with :class:`WorkdirWriteError`.
        The log is opened without following a symbolic link: a link planted in a shared work
        directory must not make the bench append to some other file of the user's.
        """
        reason = write_failure(err)
        if reason:
            raise WorkdirWriteError(self.workdir, reason, err) from None
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
            try:
                fd = os.open(self.log_path, flags, 0o644)
            except OSError:  # ELOOP: a symbolic link stands there; replace it with the log
                self.log_path.unlink(missing_ok=True)
                fd = os.open(self.log_path, flags, 0o644)
            with os.fdopen(fd, "a", encoding="utf-8") as handle:
                handle.write(f"\n==== {stamp} {what}\n")
                handle.write("".join(traceback.format_exception(type(err), err, err.__traceback__)))
        except OSError as log_err:
            reason = write_failure(log_err)
            if reason:
                raise WorkdirWriteError(self.workdir, reason, log_err) from None
            raise


#: errno values of a write that failed for want of room: disk full, quota exceeded, file size limit
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
#: how torch.save reports the same (its C++ stream writer loses the errno)
_TORCH_WRITE = re.compile(r"iostream error|file write failed|PytorchStreamWriter failed")


def write_failure(err: BaseException) -> str | None:
    """Why writing failed, when ``err`` (or an exception it came from) is a write that found no room;
    else ``None``."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _NO_ROOM:
            return f"{current.strerror or os.strerror(current.errno)}" + (f" (writing {current.filename})" if current.filename else "")
        if isinstance(current, RuntimeError) and _TORCH_WRITE.search(str(current)):
            return f"torch could not write a file ({str(current).strip().splitlines()[0][:120]})"
        current = current.__cause__ or current.__context__
    return None


class WorkdirWriteError(ConfigError):
    """The work directory has no room left (disk full, quota, ``ulimit -f``): the message names it,
    says how much is free and what the cache holds, and that a rerun resumes."""

    def __init__(self, workdir: Path, reason: str, err: BaseException | None = None) -> None:
        import shutil

        try:
            free = f"{_size(shutil.disk_usage(workdir).free)} free on its file system"
        except OSError:
            free = "free space unknown"
        limit = ""
        try:
            import resource

            soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
            if soft != resource.RLIM_INFINITY:
                limit = f"; this process may not write files over {_size(soft)} (`ulimit -f`)"
        except (ImportError, OSError, ValueError):
            pass
        cache = Path(workdir) / "cache"
        held = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) if cache.is_dir() else 0
        super().__init__(
            f"cannot write in the work directory {workdir}: {reason}. {free}{limit}; the cache holds {_size(held)} so "
            "far and needs room for the stages still to compute. Free some space or give --workdir on a larger disk. "
            "Finished stages are kept, nothing half-written: rerun the same command to resume."
        )


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _expand_force(force: frozenset[str]) -> frozenset[str]:
    """``--force STAGE`` redoes that stage and every stage after it."""
    unknown = set(force) - set(STAGES)
    if unknown:
        raise ConfigError(f"--force {', '.join(sorted(unknown))}: use one of {', '.join(STAGES)}.")
    if not force:
        return frozenset()
    first = min(STAGES.index(s) for s in force)
    return frozenset(STAGES[first:])
