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


def test_an_ensemble_masker_is_one_row_of_its_own(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "r.yaml"
    path.write_text(REGISTRY)
    host = uisbench.host.load_plugins()
    reg = uisbench.host.load_registry([path], host)
    results = run_bench(host, reg, BenchOptions(workdir=tmp_path / "w", report=False, device="cpu"))
    cells = {(c["backbone"], c["masker"]): c for c in results["cells"]}
    # no student: every backbone has its km row, each ensemble exactly one row, with no backbone
    assert sorted((str(b), m) for b, m in cells) == sorted(
        [("oracle-instance", "km"), ("pixels", "km"), ("None", "vote-good"), ("None", "vote-mixed"), ("None", "vote-missing")])
    assert len(results["cells"]) == len(cells)

    def ap(b, m):
        return cells[(b, m)]["pseudo_masks"]["metrics"]["coco"]["values"]["AP50mask"]

    for m, members in (("vote-good", ["oracle-instance/km", "oracle-instance/ncut"]),
                       ("vote-mixed", ["oracle-instance/km", "oracle-semantic/ncut", "pixels/km"])):
        cell = cells[(None, m)]
        assert cell["status"] == "ok", cell["reason"]
        assert cell["masks_from"] == {"label": f"{m} = " + " + ".join(members), "ensemble": m, "members": members}
        assert cell["calibration"] is True  # a member reads the ground truth
        # members outside the matrix (ncut, oracle-semantic) ran as stages of their own; votes of
        # instance-oracle masks are instance masks, far above what pixels give k-means
        assert ap(None, m) > ap("pixels", "km") + 0.2
    assert cells[("pixels", "km")]["calibration"] is False
    assert cells[("pixels", "km")]["masks_from"] == {"label": "pixels/km", "ensemble": None, "members": None}
    # a member without weights ends that ensemble's row, not the backbones' rows
    missing = cells[(None, "vote-missing")]
    assert missing["status"] == "unavailable" and "vote-missing" in missing["reason"] and "dino" in missing["reason"]
    assert {r["status"] for r in results["backbones"].values()} == {"ok"}
    # the cost of a vote includes its members' seconds, over its own image count
    cost = cells[(None, "vote-mixed")]["timings"]["pseudo-masks"]
    assert cost["images"] == 6 and cost["seconds"] > cells[("pixels", "km")]["timings"]["pseudo-masks"]["seconds"]
    # the ranking lists the ensembles once, in the calibration table (a member reads ground truth)
    ranking = results["ranking"]
    assert sorted(r["id"] for r in ranking["rows"]) == ["*/vote-missing/-", "pixels/km/-"]  # no member reads ground truth
    assert sorted(r["id"] for r in ranking["calibration"]) == sorted(["oracle-instance/km/-", "*/vote-good/-", "*/vote-mixed/-"])
    rerun = run_bench(host, reg, BenchOptions(workdir=tmp_path / "w", report=False, device="cpu"))
    assert rerun["run"]["computed"]["pseudo-masks"] == 0 and rerun["run"]["computed"]["features"] == 0
    assert [c["pseudo_masks"] for c in rerun["cells"]] == [c["pseudo_masks"] for c in results["cells"]]


OWN_ROWS_REGISTRY = """\
version: 1
datasets:
  tiny-synth: {plugin: synth-instances, train_images: 6, val_images: 4, size: 64}
backbones:
  px-a: {plugin: pixels, size: 64, patch_size: 8}
  px-b: {plugin: pixels, size: 64, patch_size: 16}
  px-c: {plugin: pixels, size: 64, patch_size: 4}
maskers:
  km: {plugin: kmeans, ks: [2, 3], n_init: 1, iters: 10}
  vote-ab: {plugin: vote, members: [px-a/km, px-b/km]}
students:
  tiny-maskrcnn: {plugin: maskrcnn, iterations: 2, batch_size: 2, warmup_iters: 1, checkpoint_every: 2, fpn_channels: 16,
                  representation_size: 32, mask_head_channels: 8, rpn_post_nms_top_n_train: 100, copy_paste: false,
                  anchor_sizes: [8, 16, 32, 64, 128], box_batch_size_per_image: 32, predict_batch_size: 2}
bench:
  backbones: [px-a, px-b, px-c]
  maskers: [km, vote-ab]
  students: []
  metrics: [coco]
  dataset: tiny-synth
  bootstrap: 20
"""


def test_three_backbones_and_a_vote_of_two_give_one_ensemble_row(tmp_path, monkeypatch):
    """Issue 21.1: no backbone row carries an ensemble's pseudo-mask values, in results.json, the
    ranking, the leaderboard table and the report's summary; with a student, each backbone's student
    on the ensemble's masks is its own labelled row, ranked by its student values only."""
    from uisbench.bench import render_leaderboard, validate_results
    from uisbench.bench.report.findings import findings

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "r.yaml"
    path.write_text(OWN_ROWS_REGISTRY)
    host = uisbench.host.load_plugins()
    reg = uisbench.host.load_registry([path], host)
    results = run_bench(host, reg, BenchOptions(workdir=tmp_path / "w", report=False, device="cpu"))
    rows = [(c["backbone"], c["masker"], c["student"]) for c in results["cells"]]
    assert sorted(rows, key=str) == sorted([("px-a", "km", None), ("px-b", "km", None), ("px-c", "km", None),
                                            (None, "vote-ab", None)], key=str)
    ensemble = next(c for c in results["cells"] if c["backbone"] is None)
    assert ensemble["masks_from"]["label"] == "vote-ab = px-a/km + px-b/km" and ensemble["calibration"] is False
    assert sorted(r["id"] for r in results["ranking"]["rows"]) == ["*/vote-ab/-", "px-a/km/-", "px-b/km/-", "px-c/km/-"]
    assert validate_results(results) == []
    table = render_leaderboard(results, "markdown")
    assert table.count("vote-ab") == 1 and "vote-ab = px-a/km + px-b/km" in table
    said = " ".join(text for _, text in findings(results))
    assert "ensemble vote-ab = px-a/km + px-b/km" in said or "vote-ab" not in said
    assert "with vote-ab" not in said  # no backbone is credited with the vote's masks

    # with a student: the ensemble row, and one student row per backbone on the ensemble's masks
    path.write_text(OWN_ROWS_REGISTRY.replace("students: []", "students: [tiny-maskrcnn]").replace("maskers: [km, vote-ab]", "maskers: [vote-ab]"))
    reg = uisbench.host.load_registry([path], host)
    results = run_bench(host, reg, BenchOptions(workdir=tmp_path / "w", report=False, device="cpu"))
    rows = [(c["backbone"], c["masker"], c["student"]) for c in results["cells"]]
    assert sorted(rows, key=str) == sorted([(b, "vote-ab", "tiny-maskrcnn") for b in ("px-a", "px-b", "px-c")]
                                           + [(None, "vote-ab", None)], key=str)
    for c in results["cells"]:
        if c["masker"] == "vote-ab" and c["backbone"] is not None:
            assert c["status"] == "ok", c["reason"]
            # masks: the ensemble; features: the row's backbone; no pseudo-mask value of its own
            assert c["masks_from"]["ensemble"] == "vote-ab"
            assert c["pseudo_masks"]["metrics"] == {} and c["pseudo_masks"]["reported_in"] == "*/vote-ab/-"
            assert c["student_stage"]["metrics"]["coco"]["status"] == "ok"
    ranked = {r["id"]: r["value"] for r in results["ranking"]["rows"]}
    assert ranked["*/vote-ab/-"] is None  # ranked by the student stage: the ensemble's own row has none
    for b in ("px-a", "px-b", "px-c"):
        cell = next(c for c in results["cells"] if (c["backbone"], c["masker"]) == (b, "vote-ab"))
        assert ranked[f"{b}/vote-ab/tiny-maskrcnn"] == cell["student_stage"]["metrics"]["coco"]["values"]["AP50mask"]
    assert validate_results(results) == []
    table = render_leaderboard(results, "markdown")
    for b in ("px-a", "px-b", "px-c"):
        assert any(f"| {b} " in line and "vote-ab = px-a/km + px-b/km" in line for line in table.splitlines())
