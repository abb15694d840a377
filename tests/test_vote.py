"""The ``vote`` ensemble masker and the engine's ensemble extension (a masker that consumes other
cells' pseudo-masks): the voting rule on hand-made masks, registry checks, and a bench run."""

from __future__ import annotations

import numpy as np
import pytest

import uisbench
from uisbench.bench import BenchOptions, run_bench
from uisbench_builtins.vote import VoteMasker


def _rect(y0, y1, x0, x1, h=40, w=40):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _pred(mask, score=1.0):
    rle = uisbench.masks.encode(mask)
    return uisbench.Prediction(7, rle, uisbench.masks.to_bbox(rle), score)


RECORD = uisbench.ImageRecord(id=7, file=None, width=40, height=40)


def test_votes_count_members_not_copies_and_pixels_follow_agreement():
    a = _rect(5, 15, 5, 15)
    a_shift = _rect(5, 15, 6, 16)  # IoU 90/110 = 0.82 with a
    b = _rect(25, 35, 25, 35)
    members = [
        [_pred(b), _pred(b), _pred(b), _pred(a)],  # member 0: three copies of b, one of a
        [_pred(a_shift)],
        [_pred(a)],
    ]
    out = VoteMasker(["x/m0", "y/m1", "z/m2"]).combine(members, RECORD)
    assert len(out) == 2
    # a: three members agree; b: one member, three copies -> still one vote, ranked second
    assert [round(p.score, 6) for p in out] == [1.0, round(1 / 3, 6)]
    first = uisbench.masks.decode(out[0].segmentation)
    # agreement 0.2 of 3 masks: a pixel covered by one of them (1/3 > 0.2) is kept -> the union
    assert first.sum() == np.logical_or(a, a_shift).sum()
    assert uisbench.masks.decode(out[1].segmentation).sum() == b.sum()
    assert out[0].bbox == (5.0, 5.0, 11.0, 10.0)

    # at agreement 0.5 only pixels of at least two of the three masks (a, a_shift, a) remain: a
    strict = VoteMasker(["x/m0", "y/m1", "z/m2"], agreement=0.5).combine(members, RECORD)
    assert (uisbench.masks.decode(strict[0].segmentation) == a).all()
    # at 0.7 a pixel needs all three: the intersection
    stricter = VoteMasker(["x/m0", "y/m1", "z/m2"], agreement=0.7).combine(members, RECORD)
    assert (uisbench.masks.decode(stricter[0].segmentation) == np.logical_and(a, a_shift)).all()
    # min_votes 2 drops what one member alone found
    assert len(VoteMasker(["x/m0", "y/m1", "z/m2"], min_votes=2).combine(members, RECORD)) == 1


def test_exact_agreement_boundary_and_nms_and_empty():
    a, a2 = _rect(0, 10, 0, 10), _rect(0, 10, 0, 20)
    # two masks, agreement 0.5: a pixel covered by one of two (exactly 0.5) is NOT more than 0.5
    out = VoteMasker(["x/m", "y/m"], agreement=0.5, iou_threshold=0.4).combine([[_pred(a)], [_pred(a2)]], RECORD)
    assert len(out) == 1 and uisbench.masks.decode(out[0].segmentation).sum() == a.sum()
    # two groups whose merged masks overlap above nms_iou: the second is suppressed
    big, inner = _rect(0, 20, 0, 20), _rect(0, 20, 0, 14)  # IoU 0.7: one group at 0.6 ...
    sep = VoteMasker(["x/m", "y/m"], iou_threshold=0.75, nms_iou=0.5).combine([[_pred(big)], [_pred(inner)]], RECORD)
    assert len(sep) == 1  # ... two groups at 0.75, the second removed by NMS (0.7 > 0.5)
    kept = VoteMasker(["x/m", "y/m"], iou_threshold=0.75, nms_iou=0.8).combine([[_pred(big)], [_pred(inner)]], RECORD)
    assert len(kept) == 2
    assert VoteMasker(["x/m", "y/m"]).combine([[], []], RECORD) == []


def test_groups_follow_voteCut_pivot_rule():
    # candidates 0..3; 1 overlaps everyone, so it opens the first group and 3 (alone) the second
    iou = np.array([
        [1.0, 0.7, 0.0, 0.0],
        [0.7, 1.0, 0.7, 0.0],
        [0.0, 0.7, 1.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ])
    groups = VoteMasker(["x/m", "y/m"]).groups(iou)
    assert groups == [(1, [0, 1, 2]), (3, [3])]


def test_bad_parameters_and_members_are_refused_with_file_and_entry(tmp_path):
    with pytest.raises(uisbench.ConfigError, match="min_votes"):
        VoteMasker(["a/b", "c/d"], min_votes=3)
    host = uisbench.host.load_plugins()
    path = tmp_path / "r.yaml"
    path.write_text(
        "version: 1\n"
        "maskers:\n"
        "  v1: {plugin: vote, members: [pixels/kmeans]}\n"
        "  v2: {plugin: vote, members: [pixels/kmeans, pixel/kmeans, pixels/kmean, pixels/v1, nonsense]}\n"
    )
    with pytest.raises(uisbench.ConfigError) as err:
        uisbench.host.load_registry([path], host)
    text = str(err.value)
    assert f"{path}:3: masker entry 'v1': members must name at least two" in text
    assert "'pixel' is not a backbones entry. Did you mean 'pixels'?" in text
    assert "'kmean' is not a maskers entry. Did you mean 'kmeans'?" in text
    assert "'v1' is itself an ensemble" in text
    assert "'nonsense' is not 'backbone/masker'" in text


REGISTRY = """\
version: 1
datasets:
  tiny-synth: {plugin: synth-instances, train_images: 4, val_images: 6}
backbones:
  dino-offline: {plugin: dino, model: vit_small_patch16_224.dino, pretrained: true}
maskers:
  km: {plugin: kmeans, ks: [2, 3, 4], n_init: 1, iters: 20}
  vote-good: {plugin: vote, members: [oracle-instance/km, oracle-instance/ncut]}
  vote-mixed: {plugin: vote, members: [oracle-instance/km, oracle-semantic/ncut, pixels/km]}
  vote-missing: {plugin: vote, members: [pixels/km, dino-offline/km]}
bench:
  backbones: [oracle-instance, pixels]
  maskers: [km, vote-good, vote-mixed, vote-missing]
  students: []
  metrics: [coco]
  dataset: tiny-synth
  bootstrap: 0
"""


def test_an_ensemble_masker_reads_its_members_masks_in_every_row(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "r.yaml"
    path.write_text(REGISTRY)
    host = uisbench.host.load_plugins()
    reg = uisbench.host.load_registry([path], host)
    results = run_bench(host, reg, BenchOptions(workdir=tmp_path / "w", report=False, device="cpu"))
    cells = {(c["backbone"], c["masker"]): c for c in results["cells"]}

    def ap(b, m):
        return cells[(b, m)]["pseudo_masks"]["metrics"]["coco"]["values"]["AP50mask"]

    for m in ("vote-good", "vote-mixed"):
        rows = [cells[(b, m)] for b in ("oracle-instance", "pixels")]
        for cell in rows:
            assert cell["status"] == "ok", cell["reason"]
            assert cell["calibration"] is True  # members read the ground truth, whatever the row
        # the same masks in every row: one result (one key), not one per row
        assert rows[0]["pseudo_masks"]["key"] == rows[1]["pseudo_masks"]["key"]
        assert ap("oracle-instance", m) == ap("pixels", m)
        # members outside the matrix (ncut, oracle-semantic) ran as stages of their own; votes of
        # instance-oracle masks are instance masks, far above what pixels give k-means
        assert ap("pixels", m) > ap("pixels", "km") + 0.2
    assert cells[("pixels", "km")]["calibration"] is False
    # a member without weights ends that ensemble's cells, not the rows
    for b in ("oracle-instance", "pixels"):
        missing = cells[(b, "vote-missing")]
        assert missing["status"] == "unavailable" and "vote-missing" in missing["reason"] and "dino" in missing["reason"]
    assert {r["status"] for r in results["backbones"].values()} == {"ok"}
    # the cost of a vote includes its members' seconds, over its own image count
    cost = cells[("pixels", "vote-mixed")]["timings"]["pseudo-masks"]
    assert cost["images"] == 6 and cost["seconds"] > cells[("pixels", "km")]["timings"]["pseudo-masks"]["seconds"]
    rerun = run_bench(host, reg, BenchOptions(workdir=tmp_path / "w", report=False, device="cpu"))
    assert rerun["run"]["computed"]["pseudo-masks"] == 0 and rerun["run"]["computed"]["features"] == 0
    assert [c["pseudo_masks"] for c in rerun["cells"]] == [c["pseudo_masks"] for c in results["cells"]]
