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
    classes with two or more instances, every pair of patches is either "same instance" or "other
    instance of the same class"; ``separability_auroc`` is the AUROC of the cosine similarity at
    telling the two apart (0.5: cannot tell, 1: every same-instance pair is more similar than every
    other-instance pair), computed per image and averaged over images. At most ``max_patches``
    patches per image enter (a fixed random subset, seeded by the image id, so the value does not
    depend on order or sharding).

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
}


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
    uisbench.Param("iou", "float", 0.5, "IoU at which a candidate recalls a ground-truth instance"),
    uisbench.Param("max_patches", "int", 256, "patches per image entering the separability AUROC (all pairs)"),
    uisbench.Param("seed", "int", 0, "seed of the per-image patch subset"),
)


class InstanceAwareness(uisbench.Metric):
    """Recall of candidates on single- vs multi-instance ground truth, and feature separability."""

    higher_is_better = HIGHER_IS_BETTER
    headline = ("recall_multi", "recall_single", "separability_auroc")

    def __init__(self, iou: float = 0.5, max_patches: int = 256, seed: int = 0) -> None:
        super().__init__()
        if not 0.0 < float(iou) <= 1.0:
            raise uisbench.ConfigError(f"metric instance-awareness: iou must be in (0, 1], got {iou!r}.")
        if int(max_patches) < 2:
            raise uisbench.ConfigError(f"metric instance-awareness: max_patches must be >= 2, got {max_patches!r}.")
        self.iou = float(iou)
        self.max_patches = int(max_patches)
        self.seed = int(seed)
        #: image id -> [single total, single recalled, multi total, multi recalled, AUROC or None]
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
        value = None
        if sample.features is not None and multi.any():
            value = self._separability(sample, [g for g, m in zip(gts, multi, strict=True) if m])
        self.images[sample.record.id] = [*counts, None if value is None or math.isnan(value) else value]

    def _separability(self, sample: uisbench.EvalSample, gts: list[uisbench.GroundTruth]) -> float:
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
            return math.nan
        vectors = feats.reshape(c, h * w)[:, idx].T.astype(np.float64)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        sim = vectors @ vectors.T
        inst = labels[idx]
        cls = np.array([gts[i].category for i in inst])
        upper = np.triu(np.ones_like(sim, dtype=bool), k=1)  # each unordered pair once
        same_class = cls[:, None] == cls[None, :]
        same_inst = inst[:, None] == inst[None, :]
        return auroc(sim[upper & same_inst], sim[upper & same_class & ~same_inst])

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
        aurocs = [r[4] for r in rows if r[4] is not None]
        sep = math.fsum(aurocs) / len(aurocs) if aurocs else math.nan
        return {"recall_single": single, "recall_multi": multi, "recall_ratio": ratio, "separability_auroc": sep}


@uisbench.hookimpl
def uisbench_metrics():
    description = "Candidate recall on single- vs multi-instance classes, and patch-feature instance separability (AUROC)."
    needs = frozenset({"ground_truth", "predictions", "features"})
    yield uisbench.MetricSpec(name="instance-awareness", description=description, factory=InstanceAwareness, params=PARAMS,
                              needs=needs, stages=frozenset({"pseudo-masks"}))
