"""Agreement without labels: do two backbones (same masker) or two maskers (same backbone) find the
same objects on the same val images? results.json ``label_free.agreement``.

A metric sees one cell, so this is a post-pass of the run over the cached pseudo-masks of every
finished row (``pipeline.peek``: nothing is computed). Per image, the two mask sets are matched
one to one (Hungarian matching on pycocotools' mask IoU, scipy's ``linear_sum_assignment``), and the
image's agreement is the sum of the matched IoUs over the larger set's size: 1 when both found the
same masks, 0 when nothing overlaps; a mask the other side lacks counts 0. An image where neither
side has a mask is left out; one side empty scores 0. The pair's value is the mean over images, its
interval the run's paired bootstrap draws (the same draws as every metric's).

Agreement is not correctness: two backbones can agree on the same wrong split (both take the
background), and a masker that always returns the whole image agrees with itself everywhere.
"""

from __future__ import annotations

import math
from typing import Any

from .uncertainty import interval

__all__ = ["matched_iou", "agreement"]


def _rle(segmentation: dict[str, Any]) -> dict[str, Any]:
    counts = segmentation["counts"]
    return {"size": list(segmentation["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def matched_iou(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> float | None:
    """Agreement of two images' mask lists (COCO results): sum of the one-to-one matched IoUs over
    ``max(len(a), len(b))``; ``None`` when both are empty."""
    if not a and not b:
        return None
    if not a or not b:
        return 0.0
    import numpy as np
    from pycocotools import mask as mask_utils
    from scipy.optimize import linear_sum_assignment

    ious = np.asarray(mask_utils.iou([_rle(p["segmentation"]) for p in a], [_rle(p["segmentation"]) for p in b],
                                     [0] * len(b)), dtype=np.float64).reshape(len(a), len(b))
    rows, cols = linear_sum_assignment(ious, maximize=True)
    return math.fsum(float(ious[r, c]) for r, c in zip(rows, cols, strict=True)) / max(len(a), len(b))


def _mean(values: list[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def agreement(pipeline: Any, cells: list[dict[str, Any]], draws: list[list[int]]) -> dict[str, Any]:
    """``{"agreement": [...]}``: one entry per pair of rows that share a masker (``between:
    "backbones"``) or a backbone (``between: "maskers"``), from the cached val pseudo-masks."""
    rows: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
    for cell in cells:
        b, m = cell.get("backbone"), cell["masker"]
        if b is None or (b, m) in rows or (cell.get("pseudo_masks") or {}).get("status") != "ok":
            continue
        if "reported_in" in (cell.get("pseudo_masks") or {}):
            continue  # an ensemble's masks under a backbone row: not this backbone's own
        try:
            output = pipeline.peek(pipeline.pseudo_masks(b, m, "val"))
        except Exception:  # agreement is extra: a row whose masks cannot be read is left out
            output = None
        if output is not None:
            rows[(b, m)] = output.summary.get("predictions") or {}
    pairs: list[dict[str, Any]] = []
    keys = list(rows)
    for i, first in enumerate(keys):
        for second in keys[i + 1:]:
            if first[1] == second[1]:
                between = "backbones"
            elif first[0] == second[0]:
                between = "maskers"
            else:
                continue
            pairs.append(_pair(first, second, rows[first], rows[second], between, draws))
    return {"agreement": pairs}


def _pair(first: tuple[str, str], second: tuple[str, str], a: dict[str, list[dict[str, Any]]],
          b: dict[str, list[dict[str, Any]]], between: str, draws: list[list[int]]) -> dict[str, Any]:
    per_image: dict[int, float] = {}
    for image_id in sorted(set(a) & set(b), key=int):
        value = matched_iou(a[image_id], b[image_id])
        if value is not None:
            per_image[int(image_id)] = value
    resampled = [_mean([per_image[i] for i in draw if i in per_image]) for draw in draws]
    return {
        "between": between,
        "a": f"{first[0]}/{first[1]}",
        "b": f"{second[0]}/{second[1]}",
        "value": _mean(list(per_image.values())),
        "ci": interval(resampled) if draws else None,
        "images": len(per_image),
    }
