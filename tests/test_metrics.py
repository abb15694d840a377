"""Built-in metric plugins: coco against a direct pycocotools run, instance-awareness on hand-made
cases and against sklearn's AUROC, cost, count-error, shard merges, and a conformance test over
every installed metric plugin."""

from __future__ import annotations

import contextlib
import io
import json
import math
import pickle

import numpy as np
import pytest

import uisbench
from uisbench import EvalSample, GroundTruth, ImageRecord, Prediction, StageCost
from uisbench_builtins.coco_metric import CocoMetric
from uisbench_builtins.cost import Cost
from uisbench_builtins.count_error import CountError
from uisbench_builtins.instance_awareness import InstanceAwareness, auroc, patch_labels

# ---------------------------------------------------------------------------------------------
# hand-made data
# ---------------------------------------------------------------------------------------------


def box_mask(h, w, x0, y0, x1, y1):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def disc_mask(h, w, cx, cy, r):
    yy, xx = np.mgrid[:h, :w]
    return ((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r).astype(np.uint8)


def gt(image_id, ann_id, mask, iscrowd=0, category="object"):
    rle = uisbench.masks.encode(mask)
    return GroundTruth(ann_id, image_id, rle, uisbench.masks.to_bbox(rle), uisbench.masks.area(rle), iscrowd, category)


def pred(image_id, mask, score, bbox=None):
    rle = uisbench.masks.encode(mask)
    return Prediction(image_id, rle, bbox or uisbench.masks.to_bbox(rle), float(score))


def jitter(mask, dx, dy):
    return np.roll(np.roll(mask, dy, axis=0), dx, axis=1)


def coco_case(n_noise: int = 130):
    """Five images: small/medium/large instances, a crowd region, ties in scores, an image without
    ground truth, one without predictions, one with more predictions than maxDets, and a box that
    differs from its mask's box (so box AP and mask AP differ)."""
    H, W = 120, 160
    rng = np.random.default_rng(3)
    samples = []
    # 1: large + medium + small, predictions close to them, one false positive
    a, b, c = box_mask(H, W, 5, 5, 115, 105), disc_mask(H, W, 130, 30, 20), box_mask(H, W, 140, 90, 150, 100)
    samples.append(
        (
            ImageRecord(1, None, W, H),
            [gt(1, 11, a), gt(1, 12, b), gt(1, 13, c)],
            [
                pred(1, jitter(a, 6, 3), 0.9),
                pred(1, jitter(b, 3, 2), 0.8),
                pred(1, jitter(c, 2, 0), 0.8),  # tie with the previous one
                pred(1, box_mask(H, W, 0, 100, 40, 120), 0.3),
            ],
        )
    )
    # 2: two touching medium instances and a crowd region; one prediction inside the crowd
    d, e = box_mask(H, W, 10, 10, 50, 60), box_mask(H, W, 50, 10, 90, 60)
    crowd = box_mask(H, W, 100, 60, 160, 120)
    samples.append(
        (
            ImageRecord(2, None, W, H),
            [gt(2, 21, d), gt(2, 22, e), gt(2, 23, crowd, iscrowd=1)],
            [
                pred(2, d | e, 0.95),  # merges both
                pred(2, jitter(d, 4, 4), 0.6),
                pred(2, box_mask(H, W, 110, 70, 150, 110), 0.7),  # inside the crowd: ignored
                pred(2, jitter(e, -8, 0), 0.6, bbox=(30.0, 5.0, 60.0, 40.0)),  # box off the mask
            ],
        )
    )
    # 3: no ground truth, predictions are false positives
    samples.append((ImageRecord(3, None, W, H), [], [pred(3, disc_mask(H, W, 80, 60, 15), 0.5)]))
    # 4: ground truth, no predictions
    samples.append((ImageRecord(4, None, W, H), [gt(4, 41, disc_mask(H, W, 60, 60, 30))], []))
    # 5: many noisy predictions (more than 100), one good one with a low score
    f = box_mask(H, W, 20, 30, 70, 90)
    preds = [pred(5, jitter(f, 1, 1), 0.05)]
    for _ in range(n_noise):
        x, y = int(rng.integers(0, W - 20)), int(rng.integers(0, H - 20))
        preds.append(
            pred(5, box_mask(H, W, x, y, x + int(rng.integers(4, 20)), y + int(rng.integers(4, 20))), rng.random())
        )
    samples.append((ImageRecord(5, None, W, H), [gt(5, 51, f)], preds))
    return samples


def feed(metric, samples):
    for record, gts, preds in samples:
        metric.update(EvalSample(record, gts, preds))
    return metric


def reference_coco(tmp_path, samples, max_dets=100, summary="eval"):
    """A direct pycocotools run on JSON files: class-agnostic GT file, results without boxes for segm.

    ``summary="eval"`` reads every value at the last (largest) ``maxDets`` from ``eval['precision']``
    (T x R x K x A x M) and ``eval['recall']`` (T x K x A x M), the mean of the entries > -1;
    ``summary="stats"`` takes the classic ``COCOeval.stats``, whose AP is read at ``maxDets=100``.
    Undefined values (-1) come back as nan.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, segm, bbox = [], [], [], []
    for record, gts, preds in samples:
        images.append(
            {"id": record.id, "width": record.width, "height": record.height, "file_name": f"{record.id}.png"}
        )
        for g in gts:
            anns.append(
                {
                    "id": g.id,
                    "image_id": g.image_id,
                    "category_id": 1,
                    "segmentation": g.segmentation,
                    "bbox": list(g.bbox),
                    "area": g.area,
                    "iscrowd": g.iscrowd,
                }
            )
        for p in preds:
            segm.append({"image_id": p.image_id, "category_id": 1, "segmentation": p.segmentation, "score": p.score})
            bbox.append({"image_id": p.image_id, "category_id": 1, "bbox": list(p.bbox), "score": p.score})
    (tmp_path / "gt.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]})
    )
    (tmp_path / "segm.json").write_text(json.dumps(segm))
    (tmp_path / "bbox.json").write_text(json.dumps(bbox))

    def mean_defined(a):
        return float(np.mean(a[a > -1])) if (a > -1).any() else -1.0

    out = {}
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(tmp_path / "gt.json"))
        for iou_type, suffix in (("segm", "mask"), ("bbox", "box")):
            ev = COCOeval(coco, coco.loadRes(str(tmp_path / f"{iou_type}.json")), iou_type)
            ev.params.maxDets = [1, 10, max_dets]
            ev.evaluate()
            ev.accumulate()
            if summary == "stats":
                ev.summarize()
                values = [ev.stats[k] for k in (0, 1, 2, 3, 4, 5, 8)]
            else:
                precision, recall = ev.eval["precision"], ev.eval["recall"]
                assert precision.shape[-1] == 3 and ev.params.maxDets[-1] == max_dets
                labels = list(ev.params.areaRngLbl)
                all_, small, medium, large = (labels.index(a) for a in ("all", "small", "medium", "large"))
                t50 = int(np.flatnonzero(np.isclose(ev.params.iouThrs, 0.5))[0])
                t75 = int(np.flatnonzero(np.isclose(ev.params.iouThrs, 0.75))[0])
                values = [
                    mean_defined(precision[:, :, :, all_, -1]),
                    mean_defined(precision[t50, :, :, all_, -1]),
                    mean_defined(precision[t75, :, :, all_, -1]),
                    mean_defined(precision[:, :, :, small, -1]),
                    mean_defined(precision[:, :, :, medium, -1]),
                    mean_defined(precision[:, :, :, large, -1]),
                    mean_defined(recall[:, :, all_, -1]),
                ]
            names = [f"AP{suffix}", f"AP50{suffix}", f"AP75{suffix}", f"AP{suffix}_s", f"AP{suffix}_m"]
            names += [f"AP{suffix}_l", f"AR{max_dets}{suffix}"]
            out.update(zip(names, values, strict=True))
    return {k: (math.nan if v < 0 else float(v)) for k, v in out.items()}


def assert_same(a: dict, b: dict, tol: float = 1e-9):
    assert set(a) == set(b)
    for k in a:
        if math.isnan(b[k]):
            assert math.isnan(a[k]), k
        else:
            assert a[k] == pytest.approx(b[k], abs=tol), k


# ---------------------------------------------------------------------------------------------
# coco
# ---------------------------------------------------------------------------------------------


def test_coco_matches_direct_pycocotools(tmp_path):
    samples = coco_case()
    got = feed(CocoMetric(), samples).compute()
    ref = reference_coco(tmp_path, samples)
    assert_same(got, ref)
    # The case is not degenerate: values are strictly between 0 and 1 and box differs from mask.
    assert 0 < got["APmask"] < 1 and 0 < got["AR100mask"] < 1
    assert got["APbox"] != got["APmask"]
    assert all(not math.isnan(got[k]) for k in ("APmask_s", "APmask_m", "APmask_l"))


def test_coco_lvis_max_dets_300(tmp_path):
    # 321 predictions on image 5: the cut at 100 vs 300 detections matters
    samples = coco_case(n_noise=320)
    metric = feed(CocoMetric(max_dets=300), samples)
    got = metric.compute()
    assert set(got) == set(metric.higher_is_better) and "AR300mask" in got and "AR100mask" not in got
    assert not any(math.isnan(v) for v in got.values()), got
    assert_same(got, reference_coco(tmp_path, samples, max_dets=300), tol=1e-12)
    # the classic summary cannot give AP at [1, 10, 300]: it reads maxDets=100 (the bug this guards against)
    assert math.isnan(reference_coco(tmp_path, samples, max_dets=300, summary="stats")["APmask"])
    # with 100 detections, the low-scored good prediction of image 5 is cut
    at_100 = feed(CocoMetric(), samples).compute()
    assert at_100["AR100mask"] < got["AR300mask"]
    assert at_100["APmask"] < got["APmask"] and at_100["APmask_m"] < got["APmask_m"]


def test_coco_max_dets_100_equals_classic_summary(tmp_path):
    # same case: the max_dets read path gives COCOeval.stats at the default [1, 10, 100]
    samples = coco_case(n_noise=320)
    got = feed(CocoMetric(), samples).compute()
    assert 0 < got["APmask"] < 1 and 0 < got["APmask_s"] < got["APmask_m"] < got["APmask_l"] < 1
    assert_same(got, reference_coco(tmp_path, samples, summary="stats"), tol=1e-12)
    assert_same(got, reference_coco(tmp_path, samples), tol=1e-12)


@pytest.mark.parametrize("max_dets", [100, 300])
def test_coco_perfect_predictions_score_one(max_dets):
    H, W = 200, 240
    masks = {
        1: [box_mask(H, W, 5, 5, 200, 190), disc_mask(H, W, 215, 25, 12), box_mask(H, W, 205, 170, 212, 178)],
        2: [box_mask(H, W, 10 + 28 * i, 10, 35 + 28 * i, 55) for i in range(8)],  # eight medium boxes
        3: [disc_mask(H, W, 120, 100, 80)],
    }
    samples = [
        (
            ImageRecord(i, None, W, H),
            [gt(i, 10 * i + k, m) for k, m in enumerate(ms)],
            [pred(i, m, 1.0 - 0.05 * k) for k, m in enumerate(ms)],
        )
        for i, ms in masks.items()
    ]
    got = feed(CocoMetric(max_dets=max_dets), samples).compute()
    assert set(got) == set(CocoMetric(max_dets=max_dets).higher_is_better)
    for key, value in got.items():  # small, medium and large instances all present: every value defined
        assert value == pytest.approx(1.0, abs=1e-12), key


def test_coco_empty_cases():
    nothing = CocoMetric().compute()
    assert all(math.isnan(v) for v in nothing.values())
    H, W = 64, 64
    only_gt = feed(
        CocoMetric(), [(ImageRecord(1, None, W, H), [gt(1, 1, box_mask(H, W, 10, 10, 50, 50))], [])]
    ).compute()
    for key in ("APmask", "AP50mask", "AP75mask", "APbox", "AP50box", "AR100mask", "AR100box", "APmask_m"):
        assert only_gt[key] == 0.0, key
    assert math.isnan(only_gt["APmask_l"])  # no large instance: undefined, as pycocotools' -1
    no_gt = feed(CocoMetric(), [(ImageRecord(1, None, W, H), [], [pred(1, box_mask(H, W, 0, 0, 9, 9), 0.4)])]).compute()
    assert all(math.isnan(v) for v in no_gt.values())


def test_coco_shard_merge_equals_single_run():
    samples = coco_case()
    single = feed(CocoMetric(), samples).compute()
    shard_a, shard_b = feed(CocoMetric(), samples[3:]), feed(CocoMetric(), samples[:3][::-1])
    merged = CocoMetric()
    merged.merge([pickle.loads(pickle.dumps(shard_a.state())), pickle.loads(pickle.dumps(shard_b.state()))])
    assert merged.compute() == pytest.approx(single, nan_ok=True)
    with pytest.raises(ValueError, match="overlap"):  # an image belongs to one shard
        merged.merge([shard_a.state()])
    with pytest.raises(uisbench.DataError, match="twice"):
        shard_a.update(EvalSample(*samples[3]))


def test_coco_rejects_bad_max_dets():
    with pytest.raises(uisbench.ConfigError, match="max_dets"):
        CocoMetric(max_dets=0)


# ---------------------------------------------------------------------------------------------
# instance-awareness
# ---------------------------------------------------------------------------------------------


def test_auroc_equals_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    for n_pos, n_neg, shift in ((50, 70, 0.5), (3, 200, 2.0), (40, 40, 0.0)):
        pos = np.round(rng.normal(shift, 1.0, n_pos), 1)  # rounding makes ties
        neg = np.round(rng.normal(0.0, 1.0, n_neg), 1)
        expected = roc_auc_score(np.r_[np.ones(n_pos), np.zeros(n_neg)], np.r_[pos, neg])
        assert auroc(pos, neg) == pytest.approx(expected, abs=1e-12)
    assert auroc([1.0, 2.0], [0.0]) == 1.0 and auroc([0.0], [1.0, 2.0]) == 0.0 and auroc([1.0], [1.0]) == 0.5
    assert math.isnan(auroc([], [1.0]))


def test_instance_awareness_recall_split():
    H, W = 64, 64
    cat1, cat2, cat3 = box_mask(H, W, 0, 0, 20, 20), box_mask(H, W, 30, 0, 50, 20), box_mask(H, W, 0, 30, 20, 50)
    dog = box_mask(H, W, 40, 40, 60, 60)
    samples = [
        # image 1: two cats (multi) and a dog (single); candidates find one cat (merged pair is no hit) and the dog
        (
            ImageRecord(1, None, W, H),
            [gt(1, 1, cat1, category="cat"), gt(1, 2, cat2, category="cat"), gt(1, 3, dog, category="dog")],
            [
                pred(1, cat1, 0.1),
                pred(1, cat1 | cat2 | box_mask(H, W, 20, 0, 30, 20), 0.9),
                pred(1, jitter(dog, 3, 0), 0.2),
            ],
        ),
        # image 2: one cat (single) plus a crowd of cats (ignored); the cat is missed (IoU 1/4 < 0.5)
        (
            ImageRecord(2, None, W, H),
            [gt(2, 4, cat1, category="cat"), gt(2, 5, box_mask(H, W, 30, 30, 64, 64), iscrowd=1, category="cat")],
            [pred(2, box_mask(H, W, 0, 0, 10, 10), 0.5)],
        ),
        # image 3: three cats (multi), no candidates
        (
            ImageRecord(3, None, W, H),
            [gt(3, 6, cat1, category="cat"), gt(3, 7, cat2, category="cat"), gt(3, 8, cat3, category="cat")],
            [],
        ),
    ]
    metric = feed(InstanceAwareness(), samples)
    values = metric.compute()
    per_image = list(metric.images.values())  # [single, recalled, multi, recalled, matched AUROC, unmatched AUROC]
    assert tuple(sum(row[k] for row in per_image) for k in range(4)) == (2, 1, 5, 1)
    assert values["recall_single"] == 0.5 and values["recall_multi"] == 0.2
    assert values["recall_ratio"] == pytest.approx(0.4)
    assert math.isnan(values["separability_auroc"])  # no features given: separability undefined
    assert metric.describe() == {"instances": "2 single-instance, 5 multi-instance (of 3 images; AUROC over 0)"}
    # a stricter IoU loses the jittered dog (IoU 17/23)
    assert feed(InstanceAwareness(iou=0.8), samples).compute()["recall_single"] == 0.0
    # no multi-instance ground truth at all: multi recall and ratio undefined
    only_single = feed(InstanceAwareness(), samples[1:2]).compute()
    assert only_single["recall_single"] == 0.0 and math.isnan(only_single["recall_multi"])
    assert math.isnan(only_single["recall_ratio"])


def test_patch_labels_majority_rule():
    H, W = 32, 32  # 4 x 4 grid of 8-pixel patches
    a = box_mask(H, W, 0, 0, 12, 8)  # patch (0,0) fully, patch (0,1) half: not a majority
    b = box_mask(H, W, 16, 16, 32, 32)
    labels = patch_labels([uisbench.masks.encode(a), uisbench.masks.encode(b)], H, W, (4, 4))
    expected = np.full((4, 4), -1)
    expected[0, 0] = 0
    expected[2:, 2:] = 1
    np.testing.assert_array_equal(labels, expected)


def test_patch_labels_follow_partly_padded_edge_patches():
    # A 28 x 32 image in a padded frame: the 4 x 4 valid grid of 8-pixel patches spans 32 x 32
    # pixels, so the image covers 28/32 of its height. A mask on the image's bottom 4 rows sits in the
    # last patch row's top half; stretched over the grid it would wrongly own that whole row.
    H, W = 28, 32
    bottom = box_mask(H, W, 0, 24, 32, 28)
    stretched = patch_labels([uisbench.masks.encode(bottom)], H, W, (4, 4))
    aligned = patch_labels([uisbench.masks.encode(bottom)], H, W, (4, 4), coverage=(28 / 32, 1.0))
    assert (stretched[3] == 0).all()  # the bug this guards against
    assert (aligned == -1).all()  # 4 of 8 rows of the last patch: no majority


def _two_instances_sample(image_id, separation):
    """Two same-class instances (left and right halves of a 64x64 image, 8x8 grid) and features whose
    instance-specific part has weight ``separation`` (0: identical features, only noise)."""
    import torch

    H, W = 64, 64
    left, right = box_mask(H, W, 0, 0, 32, 64), box_mask(H, W, 32, 0, 64, 64)
    rng = np.random.default_rng(image_id)
    feats = 0.3 * rng.normal(size=(8, 8, 8))
    feats[0] += 1.0  # shared "class" direction
    feats[1, :, :4] += separation  # instance-specific directions
    feats[2, :, 4:] += separation
    return EvalSample(
        ImageRecord(image_id, None, W, H),
        [gt(image_id, 1, left, category="cat"), gt(image_id, 2, right, category="cat")],
        [pred(image_id, left, 0.9)],
        torch.tensor(feats, dtype=torch.float32),
    )


def test_separability_orders_features():
    values = []
    for sep in (0.0, 0.3, 3.0):
        metric = InstanceAwareness()
        for i in range(4):
            metric.update(_two_instances_sample(i, sep))
        values.append(metric.compute()["separability_auroc"])
    assert abs(values[0] - 0.5) < 0.1
    assert values[0] < values[1] < values[2]
    assert values[2] == 1.0


def test_instance_awareness_shard_merge_and_patch_cap():
    samples = [_two_instances_sample(i, 0.5) for i in range(6)]
    single = InstanceAwareness(max_patches=20)
    for s in samples:
        single.update(s)
    a, b = InstanceAwareness(max_patches=20), InstanceAwareness(max_patches=20)
    for s in samples[::2]:
        a.update(s)
    for s in samples[1::2][::-1]:
        b.update(s)
    merged = InstanceAwareness(max_patches=20)
    merged.merge([pickle.loads(pickle.dumps(b.state())), a.state()])
    assert merged.compute() == single.compute()
    assert 0.5 < single.compute()["separability_auroc"] < 1.0


# ---------------------------------------------------------------------------------------------
# cost and count-error
# ---------------------------------------------------------------------------------------------


def test_cost_per_stage_and_merge():
    cpu = "Test CPU (2 cores)"
    metric = Cost()
    metric.observe_cost(StageCost("features", 10, 2.0, 500.0, None, "cpu", cpu))
    metric.observe_cost(StageCost("features", 10, 3.0, 700.0, None, "cpu", cpu))  # a second piece: adds up
    metric.observe_cost(StageCost("student-train", 4, 8.0, 900.0, 1200.0, "cuda:0", "GPU X (CUDA)"))
    values = metric.compute()
    assert set(values) == set(metric.higher_is_better)
    assert values["features_images_per_s"] == 4.0 and values["features_seconds"] == 5.0
    assert values["features_peak_host_mb"] == 700.0 and math.isnan(values["features_peak_gpu_mb"])
    assert values["student_train_peak_gpu_mb"] == 1200.0 and values["student_train_images_per_s"] == 0.5
    assert math.isnan(values["student_predict_images_per_s"])  # training and prediction are separate figures
    assert all(math.isnan(values[f"pseudo_masks_{v}"]) for v in ("images_per_s", "seconds", "peak_host_mb"))
    assert metric.higher_is_better["features_images_per_s"] and not metric.higher_is_better["features_seconds"]
    facts = metric.describe()
    assert facts["features_hardware"] == cpu and facts["student_train_device"] == "cuda:0"
    assert facts["hardware"] == f"{cpu}; GPU X (CUDA)"
    # two shards ran side by side: images add up, wall time is the slower one's
    other = Cost()
    other.observe_cost(StageCost("features", 20, 4.0, 800.0, None, "cpu", cpu))
    metric.merge([pickle.loads(pickle.dumps(other.state()))])
    merged = metric.compute()
    assert merged["features_seconds"] == 5.0 and merged["features_images_per_s"] == 8.0
    assert merged["features_peak_host_mb"] == 800.0
    with pytest.raises(uisbench.PluginError, match="unknown stage 'training'"):
        metric.observe_cost(StageCost("training", 1, 1.0, 1.0, None, "cpu", cpu))


def test_count_error():
    H, W = 32, 32
    m = box_mask(H, W, 0, 0, 8, 8)
    samples = [
        (
            ImageRecord(1, None, W, H),
            [gt(1, 1, m), gt(1, 2, m, iscrowd=1)],
            [pred(1, m, 0.9), pred(1, m, 0.7)],
        ),  # 2 vs 1
        (ImageRecord(2, None, W, H), [gt(2, 3, m), gt(2, 4, m)], [pred(2, m, 0.2)]),  # 0 vs 2 at 0.5
    ]
    assert feed(CountError(), samples).compute() == {"count_mae": 1.5}
    assert feed(CountError(score_threshold=0.0), samples).compute() == {"count_mae": 1.0}
    assert math.isnan(CountError().compute()["count_mae"])
    a, b = feed(CountError(), samples[:1]), feed(CountError(), samples[1:])
    a.merge([b.state()])
    assert a.compute() == {"count_mae": 1.5} and a.score_threshold == 0.5


# ---------------------------------------------------------------------------------------------
# conformance: every installed metric plugin
# ---------------------------------------------------------------------------------------------


def _metric_names():
    import warnings

    with warnings.catch_warnings():  # plugins that fail to load are reported by the host fixture
        warnings.simplefilter("ignore")
        return sorted(uisbench.host.load_plugins().specs("metrics"))


@pytest.mark.parametrize("name", _metric_names())
def test_metric_conformance(host, name):
    """Every installed metric keeps the metric contract as uisbench.testing states it (directions,
    headline, pure compute, picklable state, shards merged equal one pass, reset, resample)."""
    import uisbench.testing

    uisbench.testing.check_metric(host.spec("metrics", name), host=host)


# ---------------------------------------------------------------------------------------------
# instance-awareness rises with the oracle's instance weight
# ---------------------------------------------------------------------------------------------


def threshold_components(features, record, thresholds=(0.7, 0.8, 0.9)):
    """A tiny masker for the test: connected components of the 4-neighbour patch graph whose edges
    join patches with cosine similarity above a threshold, candidates of several thresholds pooled."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    f = features.numpy() / np.maximum(np.linalg.norm(features.numpy(), axis=0, keepdims=True), 1e-12)
    _, h, w = f.shape
    index = np.arange(h * w).reshape(h, w)
    right = (f[:, :, :-1] * f[:, :, 1:]).sum(0)
    down = (f[:, :-1, :] * f[:, 1:, :]).sum(0)
    preds = []
    for tau in thresholds:
        rows = np.r_[index[:, :-1][right > tau], index[:-1, :][down > tau]]
        cols = np.r_[index[:, 1:][right > tau], index[1:, :][down > tau]]
        graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(h * w, h * w))
        n, labels = connected_components(graph, directed=False)
        for j in range(n):
            mask = uisbench.masks.resize_mask((labels.reshape(h, w) == j).astype(np.uint8), record.height, record.width)
            preds.append(pred(record.id, mask, 1.0))
    return preds


@pytest.mark.slow
def test_instance_awareness_rises_with_oracle_instance_weight(host):
    import torch

    dataset = host.spec("datasets", "synth-instances").build(split="val", images=12, size=128, seed=0)
    ids = dataset.image_ids()
    results = []
    for weight in (0.0, 0.5, 1.0, 2.0):
        backbone = host.spec("backbones", "oracle").build(instance_weight=weight, size=128, patch_size=8, seed=0)
        backbone.bind(dataset)
        fm = backbone.extract(torch.stack([backbone.preprocess(dataset.load_image(i)) for i in ids]), ids)
        metric = host.spec("metrics", "instance-awareness").build()
        for k, image_id in enumerate(ids):
            record = dataset.record(image_id)
            candidates = threshold_components(fm.features[k], record)
            metric.update(EvalSample(record, dataset.ground_truth(image_id), candidates, fm.features[k]))
        totals = [sum(row[k] for row in metric.images.values()) for k in (0, 2)]  # single, multi instance counts
        assert totals[0] > 0 and totals[1] > 0  # both halves of the split exist
        results.append(metric.compute())
    for key in ("recall_multi", "recall_ratio", "separability_auroc"):
        series = [r[key] for r in results]
        assert all(a <= b for a, b in zip(series, series[1:], strict=False)), (key, series)
        assert series[-1] > series[0] + 0.3, (key, series)
    # a semantic-only descriptor cannot tell same-class instances apart; a strong instance one can
    assert abs(results[0]["separability_auroc"] - 0.5) < 0.05
    assert results[-1]["separability_auroc"] > 0.95
    assert results[0]["recall_ratio"] < 0.7 < results[-1]["recall_ratio"]


def test_coco_resample_equals_a_fresh_evaluation_of_the_draw():
    """The bootstrap reuses pycocotools' per-image evaluation; a draw without repeats must give exactly
    what a fresh pycocotools evaluation of those images gives."""
    samples = coco_case()
    metric = feed(CocoMetric(), samples)
    ids = sorted(s[0].id for s in samples)
    for subset in (ids, ids[1:-1], [ids[0], ids[-1]]):
        fresh = feed(CocoMetric(), [s for s in samples if s[0].id in subset]).compute()
        assert metric.resample([subset])[0] == {k: fresh[k] for k in metric.headline}, subset
