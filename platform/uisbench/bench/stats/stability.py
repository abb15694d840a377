"""Stability without labels: do a row's masks survive a horizontal flip and a rescale of the image?
results.json ``label_free.stability``.

For each backbone x masker row (not the calibration rows: an oracle's features come from the ground
truth, not from the pixels), every val image is transformed, run through the row's backbone and
masker again, and the masks are mapped back and matched one to one with the row's own pseudo-masks
(``agreement.matched_iou``):

- ``flip``: the image mirrored left-right; its masks mirrored back; compared on the whole image.
- ``rescale``: the centre ``3/4 x 3/4`` of the image, which the backbone's preprocessing scales up
  to its input size (objects 4/3 larger on the patch grid); its masks are placed back in that box and
  compared with the row's masks cut to the same box.

1 means the same masks came back; a row whose masks follow the image content scores high, one whose
masks follow the patch grid or the image border scores low. Like agreement, stability is not
correctness: a masker that always returns the whole image is perfectly stable.

A post-pass of the run (rank 0), cached per row in the metrics cache under the row's pseudo-mask key,
the transforms and this module's code version.
"""

from __future__ import annotations

import math
from typing import Any

from .._cache import make_key
from .agreement import matched_iou
from .uncertainty import interval

__all__ = ["TRANSFORMS", "CROP", "stability", "flip_back", "crop_box"]

#: the transforms, in results.json's names
TRANSFORMS = ("flip", "rescale")
#: share of each side the rescale keeps (the centre box), scaled back up by the preprocessing
CROP = 0.75
#: bump when the computation changes: the cached values are then recomputed
VERSION = 1


def crop_box(height: int, width: int, share: float | None = None) -> tuple[int, int, int, int]:
    """``(top, left, bottom, right)`` of the centre box keeping ``share`` (default :data:`CROP`) of
    each side (at least 1 px)."""
    share = CROP if share is None else share
    h, w = max(1, round(height * share)), max(1, round(width * share))
    top, left = (height - h) // 2, (width - w) // 2
    return top, left, top + h, left + w


def _decode(segmentation: dict[str, Any]) -> Any:
    from pycocotools import mask as mask_utils

    counts = segmentation["counts"]
    rle = {"size": list(segmentation["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(rle).astype(bool)


def _encode(mask: Any) -> dict[str, Any]:
    import numpy as np
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}}


def flip_back(preds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Masks of the mirrored image, mirrored back (COCO results in, ``{"segmentation"}`` out)."""
    return [_encode(_decode(p["segmentation"])[:, ::-1]) for p in preds]


def _cut(preds: list[dict[str, Any]], box: tuple[int, int, int, int]) -> list[dict[str, Any]]:
    """The row's own masks cut to ``box`` (masks that leave nothing in it dropped)."""
    top, left, bottom, right = box
    out = []
    for p in preds:
        part = _decode(p["segmentation"])[top:bottom, left:right]
        if part.any():
            out.append(_encode(part))
    return out


def _transform(name: str, image: Any) -> Any:
    import numpy as np

    if name == "flip":
        return np.ascontiguousarray(image[:, ::-1])
    top, left, bottom, right = crop_box(image.shape[0], image.shape[1])
    return np.ascontiguousarray(image[top:bottom, left:right])


def _row_values(pipeline: Any, b: str, m: str, own: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """``{transform: {image id: matched IoU}}`` of row ``b / m`` (computed: backbone and masker rerun)."""
    return _backbone_values(pipeline, b, {m: own})[m]


def _backbone_values(pipeline: Any, b: str, rows: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, dict[str, dict[str, float]]]:
    """:func:`_row_values` of every masker in ``rows`` (masker -> its masks) on backbone ``b``: the
    transformed images go through the backbone once per transform, then through each masker."""
    import torch

    from ...contracts import FeatureMap, ImageRecord
    from .._context import seed_everything

    ctx, data = pipeline.ctx, pipeline.data
    backbone = pipeline.backbones[b].bind("val")
    dataset = data.dataset("val")
    ids = [i for i in data.usable("val") if all(str(i) in own for own in rows.values())]
    out: dict[str, dict[str, dict[str, float]]] = {m: {} for m in rows}
    try:
        for name in TRANSFORMS:
            values: dict[str, dict[str, float]] = {m: {} for m in rows}
            batches = data.batches("val", ids, lambda image, name=name: backbone.preprocess(_transform(name, image)), ctx.batch_size, 0)
            for batch_ids, pixels in batches:
                with torch.inference_mode():
                    fm = backbone.extract(pixels.to(backbone.device), batch_ids)
                records = []
                for i in batch_ids:
                    record = dataset.record(i)
                    if name == "rescale":
                        top, left, bottom, right = crop_box(record.height, record.width)
                        record = ImageRecord(id=record.id, file=record.file, width=right - left, height=bottom - top)
                    records.append(record)
                for m, own in rows.items():
                    masker = pipeline.masker(m)
                    features = FeatureMap(fm.features.float().to(masker.device), list(batch_ids), fm.patch_size, fm.facet, fm.layer,
                                          None if fm.valid is None else fm.valid.to(masker.device))
                    seed_everything(ctx.seed + batch_ids[0])  # as the pseudo-mask stage seeds the same images
                    with torch.no_grad():
                        preds = masker.predict(features, records)
                    for i, image_preds in zip(batch_ids, preds, strict=True):
                        again = [p.to_coco() for p in image_preds]
                        if name == "flip":
                            value = matched_iou(own[str(i)], flip_back(again))
                        else:
                            full = dataset.record(i)
                            value = matched_iou(_cut(own[str(i)], crop_box(full.height, full.width)), again)
                        if value is not None:
                            values[m][str(i)] = value
            for m in rows:
                out[m][name] = values[m]
    finally:
        pipeline.backbones[b].release()
    return out


def _mean(values: list[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def stability(pipeline: Any, cells: list[dict[str, Any]], draws: list[list[int]]) -> list[dict[str, Any]]:
    """One entry per non-calibration backbone x masker row with ok pseudo-masks: ``{"row", "flip",
    "rescale", "ci": {...}, "images"}``. A backbone whose rows cannot be rerun is left out (logged)."""
    ctx = pipeline.ctx
    todo: dict[str, dict[str, tuple[Any, dict[str, Any]]]] = {}  # backbone -> masker -> (cache path, masks)
    found: dict[tuple[str, str], dict[str, Any]] = {}
    order: list[tuple[str, str]] = []
    for cell in cells:
        b, m, part = cell.get("backbone"), cell["masker"], cell.get("pseudo_masks") or {}
        if b is None or (b, m) in order or cell.get("calibration") or part.get("status") != "ok" or "reported_in" in part:
            continue
        if pipeline.plan.is_ensemble(m):
            continue
        try:
            output = pipeline.peek(pipeline.pseudo_masks(b, m, "val"))
            if output is None:
                continue
            key = make_key(stage="stability", upstream=output.key, transforms=list(TRANSFORMS), crop=CROP, version=VERSION)
            path = ctx.cache.metric_file(key)
            values = ctx.cache.read(path)
        except Exception as err:  # stability is extra: a row whose masks cannot be read is logged, the run goes on
            ctx.log_failure(f"{b} / {m} stability", err)
            continue
        order.append((b, m))
        if isinstance(values, dict) and set(values) == set(TRANSFORMS):
            found[(b, m)] = values
        else:
            todo.setdefault(b, {})[m] = (path, output.summary.get("predictions") or {})
    for b, rows in todo.items():
        try:
            computed = _backbone_values(pipeline, b, {m: masks for m, (_, masks) in rows.items()})
        except Exception as err:  # stability is extra: a backbone that cannot be rerun is logged, the run goes on
            ctx.log_failure(f"{b} stability", err)
            continue
        for m, (path, _) in rows.items():
            ctx.cache.write(path, computed[m])
            found[(b, m)] = computed[m]
    out: list[dict[str, Any]] = []
    for b, m in order:
        if (b, m) not in found:
            continue
        values = found[(b, m)]
        entry: dict[str, Any] = {"row": f"{b}/{m}", "ci": {}, "images": len(values["flip"])}
        for name in TRANSFORMS:
            per_image = {int(k): float(v) for k, v in values[name].items()}
            entry[name] = _mean(list(per_image.values()))
            resampled = [_mean([per_image[i] for i in draw if i in per_image]) for draw in draws]
            entry["ci"][name] = interval(resampled) if draws else None
        out.append(entry)
    return out
