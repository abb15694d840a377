"""Metric ``coco``: class-agnostic COCO AP/AR of masks and boxes, computed by pycocotools.

Every category is collapsed to one (id 1) in ground truth and predictions, as in CutLER's
class-agnostic annotation files; ``COCOeval`` then runs with ``useCats=1`` on that single category
(``useCats=0`` would change AR, cocodataset/cocoapi#681). ``maxDets`` is ``[1, 10, max_dets]``:
100 for COCO, 300 for LVIS (entry ``coco-lvis``), and the AR value is named after it
(``AR100mask``, ``AR300mask``).

The mask evaluation sees predictions *without* their box, so pycocotools takes a detection's area
from its mask, not from its box, when it sorts detections into small/medium/large (detectron2's
``_evaluate_predictions_on_coco`` does the same). Values pycocotools cannot define (``-1``, e.g.
``APmask_l`` with no large ground-truth instance) are reported as ``nan``.

State: per image its size, its ground truth and its ``max_dets`` highest-scoring predictions
(pycocotools would discard the others anyway), so memory stays bounded and shards merge by
concatenation.
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any

import uisbench

#: AP values per evaluation type, in the order of ``COCOeval.stats[:6]`` (AP, AP50, AP75, then
#: AP of small, medium, large instances); ``stats[8]`` gives the AR value.
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


class CocoMetric(uisbench.Metric):
    """Class-agnostic COCO evaluation of masks (``segm``) and boxes (``bbox``).

    The instance's ``higher_is_better`` is authoritative (the engine reads it): its AR keys follow
    ``max_dets``, while the spec's lists the values at the default ``max_dets=100``.
    """

    def __init__(self, max_dets: int = 100) -> None:
        if not isinstance(max_dets, int) or isinstance(max_dets, bool) or max_dets < 10:
            raise uisbench.ConfigError(f"metric coco: max_dets must be an integer >= 10, got {max_dets!r}.")
        self.max_dets = max_dets
        self.higher_is_better = value_names(max_dets)
        super().__init__()

    # -- state -------------------------------------------------------------------------------

    def reset(self) -> None:
        #: image id -> {"width", "height", "gt": [...], "dt": [...]}
        self.images: dict[int, dict[str, Any]] = {}

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

    def state(self) -> dict[str, Any]:
        return {"max_dets": self.max_dets, "images": dict(self.images)}

    def merge(self, states) -> None:
        for other in states:
            if other["max_dets"] != self.max_dets:
                raise uisbench.PluginError(
                    f"metric coco: cannot merge a shard with max_dets={other['max_dets']} into max_dets={self.max_dets}."
                )
            overlap = self.images.keys() & other["images"].keys()
            if overlap:
                raise uisbench.DataError(
                    f"metric coco: shards overlap on image ids {sorted(overlap)[:5]}; give each image to one shard."
                )
            self.images.update(other["images"])

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
            out[f"AR{self.max_dets}{suffix}"] = stats[8]  # AR at maxDets[2], all areas
        return {k: out[k] for k in self.higher_is_better}


def _evaluate(gt_dict: dict[str, Any], results: list[dict[str, Any]], iou_type: str, max_dets: int) -> list[float]:
    """``COCOeval.stats`` of one evaluation, with pycocotools' prints silenced and -1 as nan."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not gt_dict["images"]:
        return [math.nan] * 12
    with contextlib.redirect_stdout(io.StringIO()):
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
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) if v >= 0 else math.nan for v in evaluator.stats]


@uisbench.hookimpl
def uisbench_metrics():
    yield uisbench.MetricSpec(
        name="coco",
        description="Class-agnostic COCO AP/AR of masks and boxes (pycocotools), small/medium/large.",
        factory=CocoMetric,
        params=(uisbench.Param("max_dets", "int", 100, "detections kept per image (COCO 100, LVIS 300); names ARN"),),
        higher_is_better=value_names(100),
        needs=frozenset({"ground_truth", "predictions"}),
        stages=frozenset({"pseudo-masks", "student"}),
        version="1",
    )
