"""``vote``: an ensemble of other cells' pseudo-masks, VoteCut's idea (CuVLER, Arica et al., CVPR 2024).

VoteCut pools the candidate masks several self-supervised backbones give an image, groups the
candidates that overlap (IoU above ``iou_threshold``), keeps one mask per group made of the pixels
enough of its candidates agree on, and ranks the groups by how many candidates agree. Objects that
several backbones find are trusted; the noise one backbone makes alone sinks to the bottom.

This masker is an ensemble (spec ``consumes="pseudo-masks"``): its ``members`` are
``backbone/masker`` registry pairs, whose pseudo-masks the bench computes first (each cached like
any other) and hands over per image. Per image:

1. Pool every member's masks; pairwise IoU with pycocotools on the RLEs.
2. Group greedily (VoteCut's clustering): the candidate with the most neighbours (IoU above the
   threshold) opens a group with its neighbours; the group's pivot moves to its member with the
   largest IoU sum with the group, the group takes that pivot's neighbours too, up to
   ``pivot_steps`` times or until it stops growing; its candidates are then used up.
3. Each group's mask: the pixels that more than ``agreement`` of its candidates cover.
4. Votes: the number of distinct *members* in the group (three near-copies from one masker are one
   vote). Score ``votes / len(members)``; groups below ``min_votes`` are dropped.
5. Order by votes, then group size, then the pivot's place in the pool; mask NMS (``nms_iou``) and at
   most ``max_masks`` per image.

Differences from VoteCut, on purpose: VoteCut's candidates are k-means labels of several
eigenvectors of each backbone, made inside the method; here the candidates are whatever the member
maskers produced, so any masker (MaskCut, k-means, ProMerge, ...) can vote. VoteCut ranks groups by
their candidate count; we count members, which is the agreement the idea is about. VoteCut's
CRF refinement is left out (pydensecrf does not build here), as for every built-in masker.

Every decision is exact: IoUs are computed by pycocotools as quotients of integer pixel counts,
sums of IoUs with ``math.fsum`` (correctly rounded, so no summation order or CPU changes them),
pixel agreement as integer counts; ties go to the first candidate in pool order (members in
``members`` order, each member's masks in its own order).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import uisbench


def check_params(params: dict[str, Any]) -> Any:
    """What the parameters' own bounds cannot say: ``min_votes`` against the number of members."""
    if params["min_votes"] > max(1, len(params["members"] or ())):
        yield "min_votes", f"must lie between 1 and the number of members ({len(params['members'] or ())}), got {params['min_votes']}"


class VoteMasker(uisbench.EnsembleMasker):
    """Groups the members' masks of an image by overlap and keeps the masks members agree on.

    ``VoteMasker(members, **options)``: the options and their defaults are :data:`PARAMS`."""

    def __init__(self, members: Sequence[str], **options: Any) -> None:
        p = uisbench.complete_params("masker vote", PARAMS, {"members": list(members), **options}, check_params)
        self.members: list[str] = p["members"]
        self.iou_threshold = float(p["iou_threshold"])
        self.agreement = float(p["agreement"])
        self.min_votes = int(p["min_votes"])
        self.nms_iou = float(p["nms_iou"])
        self.max_masks = int(p["max_masks"])
        self.pivot_steps = int(p["pivot_steps"])

    def combine(self, candidates: Sequence[Sequence[uisbench.Prediction]], record: uisbench.ImageRecord) -> list[uisbench.Prediction]:
        pool = [(member, p.segmentation) for member, masks in enumerate(candidates) for p in masks]
        if not pool:
            return []
        rles = [rle for _, rle in pool]
        iou = uisbench.masks.iou_matrix(rles, rles)
        groups = self.groups(iou)
        kept: list[tuple[tuple[int, int, int], dict[str, Any], int]] = []
        for pivot, group in groups:
            votes = len({pool[i][0] for i in group})
            if votes < self.min_votes:
                continue
            mask = self.agreed_mask([rles[i] for i in group], record)
            if mask is None:
                continue
            kept.append(((-votes, -len(group), pivot), mask, votes))
        kept.sort(key=lambda item: item[0])
        out: list[uisbench.Prediction] = []
        chosen: list[dict[str, Any]] = []
        for _, rle, votes in kept:
            if chosen and float(uisbench.masks.iou_matrix([rle], chosen).max()) > self.nms_iou:
                continue
            chosen.append(rle)
            out.append(uisbench.Prediction(record.id, rle, uisbench.masks.to_bbox(rle), votes / len(candidates)))
            if len(out) == self.max_masks:
                break
        return out

    def groups(self, iou: Any) -> list[tuple[int, list[int]]]:
        """VoteCut's greedy grouping: ``(pivot, candidate indices)`` per group, in order of discovery."""
        n = iou.shape[0]
        neighbours = [[j for j in range(n) if iou[i, j] > self.iou_threshold or i == j] for i in range(n)]
        # most neighbours first; equal counts keep pool order (sorted() is stable)
        order = sorted(range(n), key=lambda i: -len(neighbours[i]))
        used: set[int] = set()
        out = []
        for start in order:
            if start in used:
                continue
            pivot = start
            group = sorted(set(neighbours[pivot]) - used)
            for _ in range(self.pivot_steps):
                # the member closest to the whole group; fsum is correctly rounded, ties -> first
                sums = [math.fsum(float(iou[i, j]) for j in group) for i in group]
                pivot = group[sums.index(max(sums))]
                grown = sorted((set(group) | set(neighbours[pivot])) - used)
                if grown == group:
                    break
                group = grown
            used.update(group)
            out.append((pivot, group))
        return out

    def agreed_mask(self, rles: list[dict[str, Any]], record: uisbench.ImageRecord) -> dict[str, Any] | None:
        """The pixels more than ``agreement`` of the group's masks cover (exact integer counts)."""
        import numpy as np

        counts = np.zeros((record.height, record.width), dtype=np.int32)
        for rle in rles:
            counts += uisbench.masks.decode(rle)
        # count / n > agreement, decided in exact rational arithmetic
        num, den = self.agreement.as_integer_ratio()
        mask = counts.astype(np.int64) * den > num * len(rles)
        if not mask.any():
            return None
        return uisbench.masks.encode(mask)


PARAMS = (
    uisbench.Param("members", "list[str]", uisbench.REQUIRED, "'backbone/masker' registry pairs whose pseudo-masks vote"),
    uisbench.Param("iou_threshold", "float", 0.6, "candidates overlapping above this IoU fall in one group (VoteCut: 0.6)",
                   ge=0, lt=1),
    uisbench.Param("agreement", "float", 0.2, "a group's mask keeps the pixels more than this share of its masks cover (VoteCut: 0.2)",
                   ge=0, lt=1),
    uisbench.Param("min_votes", "int", 1, "drop groups found by fewer members than this", ge=1),
    uisbench.Param("nms_iou", "float", 0.5, "mask NMS threshold between the groups' masks", gt=0, le=1),
    uisbench.Param("max_masks", "int", 20, "at most this many masks per image", ge=1),
    uisbench.Param("pivot_steps", "int", 5, "times a group's pivot may move to its most central candidate (VoteCut: 5)", ge=0),
)


@uisbench.hookimpl
def uisbench_maskers():
    description = "VoteCut-style ensemble: other cells' masks grouped by overlap, scored by how many members agree."
    yield uisbench.MaskerSpec(name="vote", description=description, factory=VoteMasker, params=PARAMS,
                              check=check_params, consumes="pseudo-masks")
