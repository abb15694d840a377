"""A process's rank in a ``torch.distributed`` world, for the bench and for plugins that run under torchrun.

:class:`ProcessRank` is a mixin for records with ``rank`` and ``world`` fields: the bench's own shard
and a student's view of its process group both derive from it, so "rank 0 writes" and "which items
are mine" mean the same in the core and in every plugin. Without torchrun ``rank == 0`` and
``world == 1``, and every answer is the one-process one.

The collective steps are written here once, with one meaning per verb (as in ``torch.distributed``):

=================  ==========================================================
``all_gather(x)``  ``x`` of every rank, in rank order, on every rank
``gather(x)``      ``x`` of every rank, in rank order, on rank 0; ``None`` on the others
``broadcast(x)``   rank 0's ``x`` on every rank
``barrier()``      every rank waits for the others
=================  ==========================================================

Every rank calls a collective at the same point. They exchange picklable objects over
:attr:`ProcessRank.group` (``None``: the default process group; a subclass may name another, such
as a gloo group beside nccl so objects need not travel through the device).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

__all__ = ["ProcessRank"]

T = TypeVar("T")


class ProcessRank:
    """Mixin: ``rank`` and ``world`` come from the subclass (a dataclass's fields, typically)::

        @dataclass(frozen=True)
        class Ranks(uisbench.ranks.ProcessRank):
            rank: int = 0
            world: int = 1
    """

    rank: int
    world: int

    @property
    def group(self) -> Any:
        """The process group the collectives use; ``None``: the default (world) group."""
        return None

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes shared files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process: collectives are real."""
        return self.world > 1

    def mine(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items``, round robin (``items[rank::world]``)."""
        return list(items[self.rank :: self.world])

    def barrier(self) -> None:
        """Every rank waits here until all have arrived."""
        if self.distributed:
            import torch.distributed as dist

            dist.barrier(group=self.group)

    def all_gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def gather(self, obj: Any) -> list[Any] | None:
        """``obj`` of every rank, in rank order, on rank 0; ``None`` on the other ranks."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.world if self.main else None
        dist.gather_object(obj, out, dst=0, group=self.group)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]
