"""Metric ``instance-awareness``: do the features (and their candidate masks) separate instances?

Two measures, after Engstler et al. (arXiv 2311.14665), computed on ground-truth instances that are
not crowd regions (crowd annotations are ignored entirely, also when counting instances):

Recall split (needs ground truth and predictions)
    A ground-truth instance is *recalled* when some candidate mask overlaps it with IoU >= ``iou``
    (0.5; any candidate, no one-to-one matching: this is proposal recall). Instances are split by
    how many instances of their class (``GroundTruth.category``) their image holds: exactly one
    (``recall_single``) or two and more (``recall_multi``). ``recall_ratio`` is
    ``recall_multi / recall_single``: below 1 when candidates merge neighbouring instances of a class.

Feature separability (needs ground truth and features)
    Each instance is pooled to the patch grid of ``EvalSample.features`` ``(C, h, w)`` (lined up with
    the pixels by ``EvalSample.preprocessing``: a partly padded last patch row or column holds only
    its share of the image, :meth:`uisbench.Preprocessing.coverage`): a patch belongs to an instance
    when most of its pixels do (patches claimed by two overlapping instances
    are dropped; instances smaller than half a patch have none). In each image, for the patches of
    classes with two or more instances, every pair of patches is either "same instance" (positive) or
    "other instance of the same class" (negative), scored by the cosine similarity of their features.
    At most ``max_patches`` patches per image enter (a fixed random subset, seeded by the image id, so
    the value does not depend on order or sharding). Both AUROCs are computed per image and averaged
    over images (0.5: cannot tell, 1: every same-instance pair is more similar than every
    other-instance pair; ties count 1/2). Similarities are computed in float64 by a fixed loop (not
    BLAS, whose sums may depend on the thread count) and rounded to ``SIMILARITY_DECIMALS`` (5)
    decimals before ranking: float32 features give cosines to about 1e-7, and similarities equal in
    exact arithmetic (a position code at equal offsets) must tie, not be ordered by rounding error
    (which, unrounded, put ``position`` at 0.46):

    ``separability_auroc`` (the headline): only a positive and a negative pair *at the same patch
    offset distance* are compared, i.e. with equal squared Euclidean distance ``dy**2 + dx**2`` in
    patches (integers: the strata are exact). The AUROC is the share of won comparisons within strata
    over all within-stratum comparisons (``nan`` when no stratum holds both kinds). Why: the patches of
    one instance lie closer together than those of two instances, so any feature that carries position
    (a ViT's position embedding, the ``position`` and ``pixels`` backbones) tells near from far and
    would score high without telling instances apart. On synth-instances the ``position`` backbone
    (position only) scores 0.50 matched and 0.85-0.89 unmatched. Distances rounded to whole patches
    are not enough: within such a bin same-instance pairs still lie closer (``position`` 0.54).

    ``separability_auroc_unmatched``: every positive against every negative, whatever their distance
    (the value before matching). Proximity-confounded: kept for comparison, not for ranking.

Values are ``nan`` where undefined: no single- or multi-instance ground truth, or no features (the
student stage has none: separability is then ``nan`` while the recall split is still computed).
"""

from __future__ import annotations

import math
from collections import Counter

import uisbench

HIGHER_IS_BETTER = {
    "recall_single": True,
    "recall_multi": True,
    "recall_ratio": True,
    "separability_auroc": True,
    "separability_auroc_unmatched": True,
}

#: cosine similarities are rounded to this many decimals before they are ranked (see the module docstring)
SIMILARITY_DECIMALS = 5


def auroc(positive, negative) -> float:
    """Area under the ROC curve of scores ``positive`` (label 1) against ``negative`` (label 0).

    The Mann-Whitney rank statistic: ``(sum of positive ranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg)``
    with average ranks for ties, which equals sklearn's ``roc_auc_score``. ``nan`` if a side is empty.
    """
    import numpy as np
    from scipy.stats import rankdata

    pos = np.asarray(positive, dtype=np.float64).ravel()
    neg = np.asarray(negative, dtype=np.float64).ravel()
    n_pos, n_neg = pos.size, neg.size
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def stratified_auroc(positive, negative, positive_strata, negative_strata) -> float:
    """AUROC counting only comparisons of a positive and a negative score in the same stratum.

    ``sum_s U_s / sum_s n_pos,s n_neg,s``, with ``U_s`` the Mann-Whitney statistic of stratum ``s``
    (average ranks for ties, so a tie counts 1/2, as in :func:`auroc`); strata are integer labels.
    Twice the rank sums are integers (exact in float64 far beyond any image's pairs), so the value is
    exact and does not depend on the order of the scores or the names of the strata. ``nan`` if no stratum holds both a positive and a negative score.
    """
    import numpy as np

    pos = np.asarray(positive, dtype=np.float64).ravel()
    neg = np.asarray(negative, dtype=np.float64).ravel()
    strata = np.concatenate([np.asarray(positive_strata).ravel(), np.asarray(negative_strata).ravel()]).astype(np.int64)
    scores = np.concatenate([pos, neg])
    if strata.size != scores.size:
        raise ValueError(f"stratified_auroc: {scores.size} scores but {strata.size} strata labels")
    is_pos = np.r_[np.ones(pos.size, dtype=np.int64), np.zeros(neg.size, dtype=np.int64)]
    n = scores.size
    if n == 0:
        return math.nan
    order = np.lexsort((scores, strata))  # by stratum, then by score
    strata, scores, is_pos = strata[order], scores[order], is_pos[order]
    new_stratum = np.r_[True, strata[1:] != strata[:-1]]
    new_group = new_stratum | np.r_[True, scores[1:] != scores[:-1]]  # a group: equal scores of one stratum
    position = np.arange(n, dtype=np.int64)
    stratum_start = np.maximum.accumulate(np.where(new_stratum, position, 0))
    group_start = np.flatnonzero(new_group)
    group_end = np.r_[group_start[1:], n]
    group = np.cumsum(new_group) - 1
    # twice the 1-based rank within the stratum, averaged over the tie group: an integer
    twice_rank = (group_start + group_end + 1 - 2 * stratum_start[group_start])[group]
    stratum = np.cumsum(new_stratum) - 1
    n_pos = np.bincount(stratum, weights=is_pos).astype(np.int64)
    n_all = np.bincount(stratum).astype(np.int64)
    twice_rank_sum = np.bincount(stratum, weights=twice_rank * is_pos).astype(np.int64)
    pairs = int((n_pos * (n_all - n_pos)).sum())
    if pairs == 0:
        return math.nan
    twice_u = int((twice_rank_sum - n_pos * (n_pos + 1)).sum())
    return twice_u / (2 * pairs)


def squared_distances(rows, cols):
    """``(n, n)`` int64 squared Euclidean distance, in patches, of every pair of grid positions
    ``(rows[i], cols[i])``: integers, so pairs at equal distance are found exactly."""
    import numpy as np

    r = np.asarray(rows, dtype=np.int64)
    c = np.asarray(cols, dtype=np.int64)
    return (r[:, None] - r[None, :]) ** 2 + (c[:, None] - c[None, :]) ** 2


def patch_labels(masks, height: int, width: int, grid: tuple[int, int], coverage: tuple[float, float] = (1.0, 1.0)):
    """Instance index per patch of an ``(h, w)`` grid (-1: none) from full-resolution masks.

    ``masks`` are COCO RLEs at ``height x width``; a patch takes an instance when more than half of
    its pixels belong to it (area pooling, torch ``adaptive_avg_pool2d``). ``coverage`` is the share
    of the grid the image covers (:meth:`uisbench.Preprocessing.coverage`; below 1 when the backbone
    padded the last patch row/column): the masks are padded to the grid's extent first, so patches
    line up with the pixels they saw.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    h, w = grid
    labels = np.full((h, w), -1, dtype=np.int64)
    if not masks:
        return labels
    stack = np.stack([uisbench.masks.decode(m) for m in masks]).astype(np.float32)
    if stack.shape[1:] != (height, width):
        raise uisbench.DataError(
            f"metric instance-awareness: mask size {stack.shape[1:]} differs from the image size "
            f"{(height, width)}; ground truth must be at image resolution."
        )
    ch, cw = coverage
    if ch < 1.0 or cw < 1.0:
        full_h, full_w = max(height, round(height / ch)), max(width, round(width / cw))
        stack = np.pad(stack, ((0, 0), (0, full_h - height), (0, full_w - width)))
    fraction = F.adaptive_avg_pool2d(torch.from_numpy(stack)[None], (h, w))[0].numpy()
    owned = fraction > 0.5
    single = owned.sum(0) == 1  # patches claimed by two overlapping instances are dropped
    labels[single] = owned.argmax(0)[single]
    return labels


PARAMS = (
    uisbench.Param("iou", "float", 0.5, "IoU at which a candidate recalls a ground-truth instance", gt=0, le=1),
    uisbench.Param("max_patches", "int", 256, "patches per image entering the separability AUROCs (all pairs)", ge=2),
    uisbench.Param("seed", "int", 0, "seed of the per-image patch subset", ge=0),
)


class InstanceAwareness(uisbench.Metric):
    """Recall of candidates on single- vs multi-instance ground truth, and feature separability."""

    higher_is_better = HIGHER_IS_BETTER
    headline = ("recall_multi", "recall_single", "separability_auroc")

    def __init__(self, iou: float = 0.5, max_patches: int = 256, seed: int = 0) -> None:
        super().__init__()
        p = uisbench.complete_params("metric instance-awareness", PARAMS, {"iou": iou, "max_patches": max_patches, "seed": seed})
        self.iou = float(p["iou"])
        self.max_patches = int(p["max_patches"])
        self.seed = int(p["seed"])
        #: image id -> [single total, single recalled, multi total, multi recalled,
        #:              distance-matched AUROC or None, unmatched AUROC or None]
        self.add_state("images", default={}, merge="union")

    # -- update ------------------------------------------------------------------------------

    def update(self, sample: uisbench.EvalSample) -> None:
        import numpy as np

        gts = [g for g in (sample.ground_truth or []) if not g.iscrowd]
        if not gts:
            return
        per_class = Counter(g.category for g in gts)
        multi = np.array([per_class[g.category] >= 2 for g in gts])

        # Recall split: best IoU of any candidate with each instance.
        cands = [p.segmentation for p in sample.predictions]
        if cands:
            best = uisbench.masks.iou_matrix([g.segmentation for g in gts], cands).max(axis=1)
        else:
            best = np.zeros(len(gts))
        hit = best >= self.iou
        counts = [int((~multi).sum()), int((hit & ~multi).sum()), int(multi.sum()), int((hit & multi).sum())]

        # Separability: only instances with a sibling of their class, only with features.
        matched = unmatched = math.nan
        if sample.features is not None and multi.any():
            matched, unmatched = self._separability(sample, [g for g, m in zip(gts, multi, strict=True) if m])
        self.images[sample.record.id] = [*counts, *(None if math.isnan(v) else v for v in (matched, unmatched))]

    def _separability(self, sample: uisbench.EvalSample, gts: list[uisbench.GroundTruth]) -> tuple[float, float]:
        """(distance-matched AUROC, unmatched AUROC) of one image; ``nan`` where undefined."""
        import numpy as np

        feats = sample.features.detach().float().cpu().numpy()  # (C, h, w)
        c, h, w = feats.shape
        rec = sample.record
        prep = sample.preprocessing
        coverage = (1.0, 1.0) if prep is None else prep.coverage(rec.height, rec.width, (h, w))
        labels = patch_labels([g.segmentation for g in gts], rec.height, rec.width, (h, w), coverage).ravel()
        idx = np.flatnonzero(labels >= 0)
        if idx.size > self.max_patches:  # a fixed subset per image, independent of order and shards
            rng = np.random.default_rng([self.seed, rec.id])
            idx = np.sort(rng.choice(idx, self.max_patches, replace=False))
        if idx.size < 2:
            return math.nan, math.nan
        vectors = feats.reshape(c, h * w)[:, idx].T.astype(np.float64)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        # einsum without optimize runs numpy's own loop, not BLAS: the same sums in the same order on
        # any thread count, so equal features give exactly equal similarities (ties count 1/2)
        sim = np.round(np.einsum("ic,jc->ij", vectors, vectors), SIMILARITY_DECIMALS)
        inst = labels[idx]
        cls = np.array([gts[i].category for i in inst])
        upper = np.triu(np.ones_like(sim, dtype=bool), k=1)  # each unordered pair once
        same_class = cls[:, None] == cls[None, :]
        same_inst = inst[:, None] == inst[None, :]
        positive, negative = upper & same_inst, upper & same_class & ~same_inst
        d2 = squared_distances(idx // w, idx % w)
        matched = stratified_auroc(sim[positive], sim[negative], d2[positive], d2[negative])
        return matched, auroc(sim[positive], sim[negative])

    # -- result ------------------------------------------------------------------------------

    def compute(self) -> dict[str, float]:
        return self._values(sorted(self.images))

    def describe(self) -> dict[str, str]:
        """How many instances each recall is over: a recall of 12 instances reads differently from one of 1,200."""
        rows = list(self.images.values())
        single, multi = sum(r[0] for r in rows), sum(r[2] for r in rows)
        with_auroc = sum(r[4] is not None for r in rows)
        return {"instances": f"{single} single-instance, {multi} multi-instance (of {len(rows)} images; AUROC over {with_auroc})"}

    def resample(self, draws):
        return [{k: v for k, v in self._values(draw).items() if k in self.headline} for draw in draws]

    def _values(self, image_ids) -> dict[str, float]:
        """The values over ``image_ids`` (an image listed twice counts twice); integer counts and
        an exactly rounded sum, so the result does not depend on the order of images or shards."""
        rows = [self.images[i] for i in image_ids if i in self.images]
        single_total, single_hit, multi_total, multi_hit = (sum(r[k] for r in rows) for k in range(4))
        single = single_hit / single_total if single_total else math.nan
        multi = multi_hit / multi_total if multi_total else math.nan
        ratio = multi / single if single > 0 else math.nan  # nan stays nan
        return {"recall_single": single, "recall_multi": multi, "recall_ratio": ratio,
                "separability_auroc": _mean(r[4] for r in rows), "separability_auroc_unmatched": _mean(r[5] for r in rows)}


def _mean(values) -> float:
    """Mean of the defined values (``None`` left out), exactly rounded: independent of their order."""
    defined = [v for v in values if v is not None]
    return math.fsum(defined) / len(defined) if defined else math.nan


@uisbench.hookimpl
def uisbench_metrics():
    description = "Candidate recall on single- vs multi-instance classes, and patch-feature instance separability (AUROC)."
    needs = frozenset({"ground_truth", "predictions", "features"})
    yield uisbench.MetricSpec(name="instance-awareness", description=description, factory=InstanceAwareness, params=PARAMS,
                              needs=needs, stages=frozenset({"pseudo-masks"}))
