"""Shards: which part of the work this process does, and the few collective steps between ranks.

Under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set, ``WORLD_SIZE > 1``) a process group is
initialised (gloo on CPU, nccl on CUDA). Per-image stages split the work by *chunks* of the image
list (``chunks[rank::world]``), so every batch has the same composition as in a one-process run and
results are identical. Everything a rank computes lands in per-image cache files on the shared work
directory; metric states travel with ``all_gather``. Whole stages with ``all_ranks`` (the
student) compute on every rank, e.g. distributed training. Without torchrun every method is trivial.

The ranks share one work directory: on several nodes it must be on a file system that every node
mounts at the same path. :func:`check_shared_workdir` proves it at the start of a run, and every rank
fails with a message that says so when it is not.
"""

from __future__ import annotations

import datetime
import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..ranks import ProcessRank


@dataclass
class Shard(ProcessRank):
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    # barrier, all_gather (every rank gets the list), gather (rank 0 only) and broadcast come from
    # uisbench.ranks.ProcessRank, over the default process group: one meaning per verb, bench and plugins alike.

    def close(self) -> None:
        if self.initialised_here:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()
            self.initialised_here = False


def detect_shard(device: str) -> Shard:
    """Read torchrun's environment and initialise the process group when several ranks run."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Shard()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    import torch.distributed as dist

    here = False
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            import torch

            torch.cuda.set_device(local_rank)
        # Long timeout: the other ranks wait in a collective while rank 0 alone trains a student
        # that is not distributed (or computes another whole stage).
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=72))
        here = True
    return Shard(rank=rank, world=world, local_rank=local_rank, initialised_here=here)


#: How long a rank waits to see the file rank 0 wrote into the work directory. On a shared file system
#: a new name is normally visible at once (its lookup goes to the server); the wait covers slow
#: metadata propagation. Ranks that never see it fail after this long.
SHARED_WORKDIR_TIMEOUT_S = 30.0


def check_shared_workdir(shard: Shard, workdir: Path, *, timeout_s: float = SHARED_WORKDIR_TIMEOUT_S) -> None:
    """Raise :class:`ConfigError` on every rank unless every rank sees the same ``workdir``.

    A collective: every rank calls it, after rank 0 has created ``workdir``. Rank 0 writes a file
    with a random token into it (``.shared-workdir-check.<hex>.tmp``: a killed run's leftover is swept
    like any temporary file); each rank waits up to ``timeout_s`` to read that token through its own
    ``workdir``; rank 0 removes the file once every rank has answered. Trivial without torchrun.
    """
    if not shard.distributed:
        return
    token = secrets.token_hex(16)
    name = f".shared-workdir-check.{token[:8]}.tmp"
    problem = None
    if shard.main:
        try:
            (Path(workdir) / name).write_text(token, encoding="utf-8")
        except OSError as err:
            problem = f"rank 0 cannot write into --workdir {workdir} ({err.strerror})"
    name, token, problem = shard.broadcast((name, token, problem))
    seen = False
    if problem is None:
        path = Path(workdir) / name
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            try:
                seen = path.read_text(encoding="utf-8") == token
            except (OSError, UnicodeDecodeError):
                seen = False
            if seen or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
    answers = shard.all_gather((seen, socket.gethostname(), str(Path(workdir).resolve())))
    if shard.main:
        (Path(workdir) / name).unlink(missing_ok=True)
    if problem is not None:
        raise ConfigError(f"{problem}; pass a folder every rank can write to.")
    blind = [(rank, host, where) for rank, (ok, host, where) in enumerate(answers) if not ok]
    if blind:
        host0 = answers[0][1]
        shown = ", ".join(f"rank {rank} on {host} ({where})" for rank, host, where in blind[:8])
        more = f" and {len(blind) - 8} more" if len(blind) > 8 else ""
        raise ConfigError(
            f"--workdir {workdir} is not one folder shared by every torchrun rank: {shown}{more} did not see "
            f"the file rank 0 on {host0} wrote there within {timeout_s:g} s. The ranks exchange cache files "
            "and the student's checkpoints through the work directory, so with several nodes it must be on a "
            "file system that every node mounts at the same path (NFS, Lustre, GPFS, ...)."
        )
