"""Shards: which part of the work this process does, and the few collective steps between ranks.

Under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set, ``WORLD_SIZE > 1``) a process group is
initialised (gloo on CPU, nccl on CUDA). Per-image stages split the work by *chunks* of the image
list (``chunks[rank::world]``), so every batch has the same composition as in a one-process run and
results are identical. Everything a rank computes lands in per-image cache files on the shared work
directory; metric states travel with ``all_gather_object``. Without torchrun every method is trivial.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class Shard:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def mine(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items`` (round robin)."""
        return list(items[self.rank :: self.world])

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (every rank gets the list)."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

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
        # Long timeout: the other ranks wait in a collective while rank 0 trains the student.
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=72))
        here = True
    return Shard(rank=rank, world=world, local_rank=local_rank, initialised_here=here)
