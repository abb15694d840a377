"""Metric ``label-free``: what a cell's pseudo-masks say about themselves, with no ground truth.

A team with a folder of its own unlabelled photos gets no AP; what it can read is how the masker
behaved on them. Per image, over the masks of the pseudo-mask stage:

- ``masks_per_image``: how many masks the masker kept;
- ``coverage``: the share of the image's pixels under at least one mask (the union, so overlapping
  masks count once);
- ``mask_score``: the mean of the masker's own scores of its masks (images without masks left out).

Each value is a mean over the val images, with a bootstrap interval over the images (the run's
paired draws). None of them says whether a mask is *right*: more masks, more coverage or higher
scores are not better by themselves, and the scores of two maskers are on different scales. The
metric therefore sets ``descriptive = True``: its values are shown and kept, but the bench never
ranks by them unless ``--rank-by`` names one. ``higher_is_better`` is declared (the contract needs a
direction) as ``True`` for all three: more of each is the direction read as "found more".

Agreement between backbones and maskers on the same images is computed by the bench from the
pseudo-masks of every cell (results.json ``label_free``), not by this metric: a metric sees one cell.
"""

from __future__ import annotations

import math

import uisbench

PARAMS = (
    uisbench.Param("score_threshold", "float", 0.0, "masks scored below this are not counted (0: all)", ge=0, le=1),
)


class LabelFree(uisbench.Metric):
    """Masks per image, image coverage and mean mask score of the pseudo-masks, per val image."""

    higher_is_better = {"masks_per_image": True, "coverage": True, "mask_score": True}
    headline = ("masks_per_image", "coverage", "mask_score")
    #: describes, does not rank: the bench's default ranking passes over these values
    descriptive = True

    def __init__(self, score_threshold: float = 0.0) -> None:
        super().__init__()
        uisbench.complete_params("metric label-free", PARAMS, {"score_threshold": score_threshold})
        self.score_threshold = float(score_threshold)
        # image id -> number of masks, covered share, mean score (None: no mask, so no score)
        self.add_state("counts", default={}, merge="union")
        self.add_state("coverages", default={}, merge="union")
        self.add_state("scores", default={}, merge="union")

    def update(self, sample: uisbench.EvalSample) -> None:
        from pycocotools import mask as mask_utils

        kept = [p for p in sample.predictions if p.score >= self.score_threshold]
        image_id = sample.record.id
        self.counts[image_id] = len(kept)
        self.scores[image_id] = math.fsum(p.score for p in kept) / len(kept) if kept else None
        if not kept:
            self.coverages[image_id] = 0.0
            return
        rles = [_rle(p.segmentation) for p in kept]
        union = mask_utils.merge(rles, intersect=False) if len(rles) > 1 else rles[0]
        height, width = (int(v) for v in union["size"])
        # integer pixel counts: the quotient is exact, whatever the order of the masks
        self.coverages[image_id] = float(mask_utils.area(union)) / float(height * width)

    def compute(self) -> dict[str, float]:
        return self._values(list(self.counts))

    def resample(self, draws):
        return [self._values(draw) for draw in draws]

    def _values(self, ids) -> dict[str, float]:
        ids = [i for i in ids if i in self.counts]
        scored = [self.scores[i] for i in ids if self.scores.get(i) is not None]
        return {
            "masks_per_image": _mean([self.counts[i] for i in ids]),
            "coverage": _mean([self.coverages[i] for i in ids]),
            "mask_score": _mean(scored),
        }


def _mean(values) -> float:
    return math.fsum(values) / len(values) if values else math.nan


def _rle(segmentation):
    """A COCO RLE with bytes counts, as pycocotools' C functions want it."""
    counts = segmentation["counts"]
    return {"size": list(segmentation["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


@uisbench.hookimpl
def uisbench_metrics():
    yield uisbench.MetricSpec(
        factory=LabelFree,
        name="label-free",
        description="Masks per image, image coverage and mean mask score of the pseudo-masks; no ground truth needed.",
        params=PARAMS,
        needs=frozenset({"predictions"}),
        stages=frozenset({"pseudo-masks"}),
        version="1",
    )
