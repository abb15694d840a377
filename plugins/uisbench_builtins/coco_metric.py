"""Metric ``coco``: class-agnostic COCO AP/AR of masks and boxes, computed by pycocotools.

Every category is collapsed to one (id 1) in ground truth and predictions, as in CutLER's
class-agnostic annotation files; ``COCOeval`` then runs with ``useCats=1`` on that single category
(``useCats=0`` would change AR, cocodataset/cocoapi#681). ``maxDets`` is ``[1, 10, max_dets]``:
100 for COCO, 300 for LVIS (entry ``coco-lvis``), and the AR value is named after it
(``AR100mask``, ``AR300mask``).

Every value is read at the largest ``maxDets`` (``max_dets``) from ``COCOeval.eval``, not from
``COCOeval.stats``: the classic summary takes its headline AP at ``maxDets=100`` whatever the
parameters say, so with ``[1, 10, 300]`` it has no such entry and gives ``-1``. Each value is the
mean of the defined entries (``> -1``) of ``eval['precision']`` (T x R x K x A x M) or
``eval['recall']`` (T x K x A x M), as ``COCOeval.summarize`` computes it; at ``max_dets=100`` the
values are therefore those of ``stats[0:6]`` and ``stats[8]``.

The mask evaluation sees predictions *without* their box, so pycocotools takes a detection's area
from its mask, not from its box, when it sorts detections into small/medium/large (detectron2's
``_evaluate_predictions_on_coco`` does the same). Values pycocotools cannot define (``-1``, e.g.
``APmask_l`` with no large ground-truth instance) are reported as ``nan``.

State: per image its size, its ground truth and its ``max_dets`` highest-scoring predictions
(pycocotools would discard the others anyway), so memory stays bounded and shards merge by union.

Confidence intervals (:meth:`CocoMetric.resample`) reuse pycocotools' per-image evaluation: the
images of a bootstrap draw (with repeats) are accumulated from ``COCOeval.evalImgs`` without
re-matching anything, so 200 draws cost 200 ``accumulate`` calls of the mask evaluation.
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any

import uisbench

#: AP values per evaluation type, in the order ``_summary`` returns them (AP, AP50, AP75, then AP of
#: small, medium, large instances, as ``COCOeval.stats[:6]``); the AR value follows them.
_AP_KEYS = (
    "APmask",
    "AP50mask",
    "AP75mask",
    "APmask_s",
    "APmask_m",
    "APmask_l",
    "APbox",
    "AP50box",
    "AP75box",
    "APbox_s",
    "APbox_m",
    "APbox_l",
)


def value_names(max_dets: int = 100) -> dict[str, bool]:
    """``higher_is_better`` of the values reported at ``max_dets`` detections per image."""
    return {**dict.fromkeys(_AP_KEYS, True), f"AR{max_dets}mask": True, f"AR{max_dets}box": True}


#: maxDets is [1, 10, max_dets]: below 10 the largest would not be the last
PARAMS = (uisbench.Param("max_dets", "int", 100, "detections kept per image (COCO 100, LVIS 300); names ARN", ge=10),)


class CocoMetric(uisbench.Metric):
    """Class-agnostic COCO evaluation of masks (``segm``) and boxes (``bbox``).

    ``higher_is_better`` and ``headline`` follow ``max_dets`` (the AR value is named after it).
    """

    def __init__(self, max_dets: int = 100) -> None:
        super().__init__()
        uisbench.complete_params("metric coco", PARAMS, {"max_dets": max_dets})
        self.max_dets = max_dets
        self.higher_is_better = value_names(max_dets)
        self.headline = ("AP50mask", "APmask", f"AR{max_dets}mask")
        #: image id -> {"width", "height", "gt": [...], "dt": [...]}
        self.add_state("images", default={}, merge="union")

    def update(self, sample: uisbench.EvalSample) -> None:
        rec = sample.record
        if rec.id in self.images:
            raise uisbench.DataError(
                f"metric coco: image {rec.id} was given twice; each image must be scored once per run "
                "(check that shards do not overlap)."
            )
        gt = [
            {
                "segmentation": dict(g.segmentation),
                "bbox": [float(v) for v in g.bbox],
                "area": float(g.area),
                "iscrowd": int(g.iscrowd),
            }
            for g in (sample.ground_truth or [])
        ]
        # Highest scores first; a stable sort keeps the given order among ties, as pycocotools does.
        kept = sorted(sample.predictions, key=lambda p: -float(p.score))[: self.max_dets]
        dt = [
            {"segmentation": dict(p.segmentation), "bbox": [float(v) for v in p.bbox], "score": float(p.score)}
            for p in kept
        ]
        self.images[rec.id] = {"width": int(rec.width), "height": int(rec.height), "gt": gt, "dt": dt}

    # -- evaluation --------------------------------------------------------------------------

    def coco_dicts(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The class-agnostic COCO ground-truth dict and results list of everything seen so far.

        Images are sorted by id and annotations numbered from 1 in that order, so the result does
        not depend on the order of updates or shards.
        """
        images, annotations, results = [], [], []
        for image_id in sorted(self.images):
            item = self.images[image_id]
            images.append({"id": image_id, "width": item["width"], "height": item["height"]})
            for g in item["gt"]:
                annotations.append({**g, "id": len(annotations) + 1, "image_id": image_id, "category_id": 1})
            for d in item["dt"]:
                results.append({**d, "image_id": image_id, "category_id": 1})
        gt = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}
        return gt, results

    def compute(self) -> dict[str, float]:
        gt_dict, results = self.coco_dicts()
        out: dict[str, float] = {}
        for iou_type, suffix in (("segm", "mask"), ("bbox", "box")):
            drop = "bbox" if iou_type == "segm" else "segmentation"
            stats = _evaluate(
                gt_dict, [{k: v for k, v in r.items() if k != drop} for r in results], iou_type, self.max_dets
            )
            names = (f"AP{suffix}", f"AP50{suffix}", f"AP75{suffix}", f"AP{suffix}_s", f"AP{suffix}_m", f"AP{suffix}_l")
            out.update(zip(names, stats[:6], strict=True))
            out[f"AR{self.max_dets}{suffix}"] = stats[6]  # AR at max_dets, all areas
        return {k: out[k] for k in self.higher_is_better}

    def resample(self, draws):
        """The headline (mask) values on bootstrap resamples of the images, reusing pycocotools'
        per-image evaluation: ``COCOeval.evaluate`` runs once, then for each draw its per-image
        records are picked (repeats included) and ``accumulate`` runs on them."""
        import copy

        gt_dict, results = self.coco_dicts()
        if not gt_dict["images"]:
            return [dict.fromkeys(self.headline, math.nan) for _ in draws]
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator = _evaluator(gt_dict, [{k: v for k, v in r.items() if k != "bbox"} for r in results], "segm", self.max_dets)
            evaluator.evaluate()
        per_image = list(evaluator.evalImgs)  # K x A x I, image index fastest
        ids = list(evaluator.params.imgIds)
        position = {image_id: i for i, image_id in enumerate(ids)}
        blocks = len(per_image) // len(ids)
        names = ("APmask", "AP50mask", "AP75mask", "APmask_s", "APmask_m", "APmask_l", f"AR{self.max_dets}mask")
        out = []
        for draw in draws:
            picked = [position[i] for i in draw if i in position]
            evaluator.evalImgs = [per_image[b * len(ids) + i] for b in range(blocks) for i in picked]
            evaluator.params.imgIds = [ids[i] for i in picked]
            evaluator._paramsEval = copy.copy(evaluator.params)  # accumulate reads the images from here
            with contextlib.redirect_stdout(io.StringIO()):
                evaluator.accumulate()
            values = dict(zip(names, _summary(evaluator), strict=True))
            out.append({k: values[k] for k in self.headline})
        return out


def _evaluate(gt_dict: dict[str, Any], results: list[dict[str, Any]], iou_type: str, max_dets: int) -> list[float]:
    """AP, AP50, AP75, AP small/medium/large and AR of one evaluation at ``max_dets`` (``_summary``),
    with pycocotools' prints silenced."""
    if not gt_dict["images"]:
        return [math.nan] * 7
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = _evaluator(gt_dict, results, iou_type, max_dets)
        evaluator.evaluate()
        evaluator.accumulate()
    return _summary(evaluator)


def _evaluator(gt_dict: dict[str, Any], results: list[dict[str, Any]], iou_type: str, max_dets: int) -> Any:
    """A ``COCOeval`` of ``results`` against ``gt_dict`` with maxDets ``[1, 10, max_dets]`` (not yet run)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco_gt = COCO()
    coco_gt.dataset = gt_dict
    coco_gt.createIndex()
    if results:
        coco_dt = coco_gt.loadRes([dict(r) for r in results])
    else:  # loadRes cannot take an empty list: an empty results set scores 0 where GT exists
        coco_dt = COCO()
        coco_dt.dataset = {"images": gt_dict["images"], "categories": gt_dict["categories"], "annotations": []}
        coco_dt.createIndex()
    evaluator = COCOeval(coco_gt, coco_dt, iou_type)
    evaluator.params.maxDets = [1, 10, max_dets]
    return evaluator


def _summary(evaluator: Any) -> list[float]:
    """AP, AP50, AP75, AP small/medium/large and AR, all areas, at the largest ``maxDets``.

    Read from ``evaluator.eval`` the way ``COCOeval.summarize`` reads each of its values (the mean of
    the entries ``> -1``; none defined gives ``nan`` instead of ``-1``), but always at the last, largest
    ``maxDets``: ``summarize`` takes its headline AP at a hard-coded ``maxDets=100``.
    """
    import numpy as np

    params = evaluator.params
    precision = evaluator.eval["precision"]  # T x R x K x A x M
    recall = evaluator.eval["recall"]  # T x K x A x M
    m = len(params.maxDets) - 1  # maxDets = [1, 10, max_dets] with max_dets >= 10: the last is the largest
    area = {label: a for a, label in enumerate(params.areaRngLbl)}

    def mean(values: Any) -> float:
        defined = values[values > -1]
        return float(np.mean(defined)) if defined.size else math.nan

    def at_iou(threshold: float) -> Any:
        return np.where(params.iouThrs == threshold)[0]  # exact match, as summarize does

    return [
        mean(precision[:, :, :, area["all"], m]),
        mean(precision[at_iou(0.5)][:, :, :, area["all"], m]),
        mean(precision[at_iou(0.75)][:, :, :, area["all"], m]),
        mean(precision[:, :, :, area["small"], m]),
        mean(precision[:, :, :, area["medium"], m]),
        mean(precision[:, :, :, area["large"], m]),
        mean(recall[:, :, area["all"], m]),
    ]


@uisbench.hookimpl
def uisbench_metrics():
    # needs ground truth and predictions, at both stages (the defaults); version 2: every value read at
    # max_dets (AP at 300 was nan), unchanged at 100
    description = "Class-agnostic COCO AP/AR of masks and boxes (pycocotools), small/medium/large."
    yield uisbench.MetricSpec(name="coco", description=description, factory=CocoMetric, params=PARAMS, version="2")
