"""A process's rank in a ``torch.distributed`` world, for the bench and for plugins that run under torchrun.

:class:`ProcessRank` is a mixin for records with ``rank`` and ``world`` fields: the bench's own shard
and a student's view of its process group both derive from it, so "rank 0 writes" and "which items
are mine" mean the same in the core and in every plugin. Without torchrun ``rank == 0`` and
``world == 1``, and every answer is the one-process one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

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
