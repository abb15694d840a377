"""Stage ``pseudo-masks`` of an ensemble masker: other cells' pseudo-masks combined per image.

An ensemble entry (spec ``consumes="pseudo-masks"``) names ``backbone/masker`` member pairs. Its
inputs are those members' pseudo-mask stages, so they are computed, cached, healed and forced like
any other; its result does not depend on the row's backbone, so its key leaves the row out and
every row shares one result. Files and summary have the shape of :class:`PseudoMasksStage`'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...contracts import Prediction
from .._stage import Stage
from .masks import MasksStage

if TYPE_CHECKING:
    from .._pipeline import Pipeline

__all__ = ["EnsembleMasksStage"]


class EnsembleMasksStage(MasksStage):
    """Masks of ensemble masker ``masker`` on ``split``, from its members' pseudo-masks."""

    def __init__(self, pipeline: Pipeline, backbone: str, masker: str, split: str) -> None:
        # ``backbone`` is the row asking (for labels only); an ensemble has no seed of its own, and
        # its members run at their first repetition
        super().__init__(pipeline.ctx, f"{masker} ensemble pseudo-masks ({split})", split)
        self.pipeline = pipeline
        self.backbone = backbone
        self.masker = masker
        self.repeat = 0
        self.members = [pipeline.pseudo_masks(b, m, split) for b, m in pipeline.plan.members[masker]]

    @property
    def address(self) -> tuple[Any, ...]:
        return (self.name, "*", self.masker, self.split, 0)

    def identity(self) -> dict[str, Any]:
        # the members' keys enter through inputs(); their order is part of the entry
        return {"masker": self.pipeline.plan.entry("maskers", self.masker).identity, "ensemble": True}

    def inputs(self) -> list[Stage]:
        return list(self.members)

    def image_ids(self) -> list[int]:
        return self.pipeline.data.usable(self.split)

    def compute(self, key: str, chunks: list[list[int]] | None) -> dict[str, Any] | None:
        if not chunks:
            return None
        ensemble = self.pipeline.masker(self.masker)
        dataset = self.pipeline.data.dataset(self.split)
        member_keys = [self.pipeline.runner.key(m) for m in self.members]

        def masks_of(chunk: list[int]) -> list[list[Prediction]]:
            out = []
            for image_id in chunk:
                candidates = [[Prediction.from_coco(p) for p in member.read_masks(k, image_id)]
                              for member, k in zip(self.members, member_keys, strict=True)]
                out.append(ensemble.combine(candidates, dataset.record(image_id)))
            return out

        return self.write_masks(key, chunks, masks_of)
