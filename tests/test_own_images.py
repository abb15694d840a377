"""A team's own unlabelled photos: the label-free measures (per row and agreement between rows), the
labelling route in the summary, ``--private`` keeping the site's names home, and the first hour's
papercuts. One real tiny bench on 3 generated photos in a folder named like a ward (the sentinel)."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

import uisbench
from helpers import FakeEntryPoint
from uisbench.bench import BenchOptions, run_bench

SENTINEL = "ward-7-sentinel"


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def _decode(segmentation: dict) -> np.ndarray:
    from pycocotools import mask as mask_utils

    return mask_utils.decode({"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}).astype(bool)


def _sample(image_id: int, masks: list[np.ndarray], scores: list[float], shape=(20, 30)) -> uisbench.EvalSample:
    record = uisbench.ImageRecord(id=image_id, file=None, width=shape[1], height=shape[0])
    preds = [uisbench.Prediction(image_id, _rle(m), (0.0, 0.0, 1.0, 1.0), s) for m, s in zip(masks, scores, strict=True)]
    return uisbench.EvalSample(record=record, ground_truth=None, predictions=preds)


def _rect(y0, y1, x0, x1, shape=(20, 30)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def _brute_agreement(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """The best one-to-one matching by trying every assignment (the reference for the Hungarian one)."""
    if not a or not b:
        return 0.0
    iou = [[(x & y).sum() / (x | y).sum() for y in b] for x in a]
    small, large = (a, b) if len(a) <= len(b) else (b, a)
    best = 0.0
    for perm in itertools.permutations(range(len(large)), len(small)):
        total = sum(iou[i][j] if small is a else iou[j][i] for i, j in enumerate(perm))
        best = max(best, total)
    return best / max(len(a), len(b))


# -- the metric and the matching, against numpy --------------------------------------------------


def test_label_free_values_and_resamples_match_numpy():
    from uisbench_builtins.label_free import LabelFree

    a, b = _rect(0, 10, 0, 10), _rect(5, 15, 5, 20)
    metric = LabelFree()
    metric.update(_sample(1, [a, b], [0.9, 0.4]))
    metric.update(_sample(2, [], []))
    covered = (a | b).sum() / a.size
    got = metric.compute()
    assert got["masks_per_image"] == 1.0
    assert got["coverage"] == pytest.approx(covered / 2, abs=1e-12)
    assert got["mask_score"] == pytest.approx(0.65, abs=1e-12)  # image 2 has no mask, so no score
    # a draw with repeats weighs image 1 twice; a draw of image 2 alone has no score (nan, not 0)
    twice, alone = metric.resample([[1, 1, 2], [2]])
    assert twice["masks_per_image"] == pytest.approx(4 / 3) and twice["coverage"] == pytest.approx(2 * covered / 3)
    assert twice["mask_score"] == pytest.approx(0.65) and math.isnan(alone["mask_score"]) and alone["coverage"] == 0.0
    # the threshold counts only the masks scored at least that much
    strict = LabelFree(score_threshold=0.5)
    strict.update(_sample(1, [a, b], [0.9, 0.4]))
    assert strict.compute() == {"masks_per_image": 1.0, "coverage": pytest.approx(a.sum() / a.size), "mask_score": 0.9}
    assert LabelFree.descriptive is True and set(LabelFree.headline) == set(LabelFree.higher_is_better)
    with pytest.raises(uisbench.ConfigError, match="score_threshold"):
        LabelFree(score_threshold=2)


def test_matched_iou_is_the_best_one_to_one_matching():
    from uisbench.bench.stats.agreement import matched_iou

    rng = np.random.default_rng(3)
    for _ in range(20):
        a = [rng.random((12, 16)) < 0.4 for _ in range(rng.integers(0, 4))]
        b = [rng.random((12, 16)) < 0.4 for _ in range(rng.integers(0, 5))]
        a = [m for m in a if m.any()]
        b = [m for m in b if m.any()]
        got = matched_iou([{"segmentation": _rle(m)} for m in a], [{"segmentation": _rle(m)} for m in b])
        if not a and not b:
            assert got is None
        else:
            assert got == pytest.approx(_brute_agreement(a, b), abs=1e-9)
    same = [{"segmentation": _rle(_rect(0, 5, 0, 5))}, {"segmentation": _rle(_rect(10, 20, 10, 30))}]
    assert matched_iou(same, same[::-1]) == pytest.approx(1.0)


# -- one bench on a folder of unlabelled photos ----------------------------------------------------


def _photos(root: Path, n: int = 3) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    yy, xx = np.ogrid[:72, :96]
    for i in range(n):
        pixels = np.full((72, 96, 3), (60, 120, 60), np.uint8) + rng.integers(0, 20, (72, 96, 3), dtype=np.uint8)
        for _ in range(2 + i % 2):
            cy, cx, r = rng.integers(12, 60), rng.integers(12, 84), rng.integers(7, 14)
            pixels[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 255, 3)
        Image.fromarray(pixels).save(root / f"patient-{i}.png")


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """``--private`` bench of pixels and position x kmeans and ncut on 3 unlabelled photos, plus the
    oracle (a calibration backbone that cannot run without ground truth)."""
    base = tmp_path_factory.mktemp("own") / SENTINEL
    photos, workdir = base / "photos", base / "work"
    _photos(photos)
    (base / "mine.yaml").write_text(f"version: 1\ndatasets:\n  site: {{plugin: images, root: {photos}}}\n")
    host = uisbench.host.load_plugins()
    registry = uisbench.host.load_registry([str(base / "mine.yaml")], host)
    argv = ["bench", "--registry", str(base / "mine.yaml"), "--dataset", "site", "--workdir", str(workdir), "--private"]
    options = BenchOptions(backbones=["pixels", "position", "oracle-instance"], maskers=["kmeans", "ncut"], students=[],
                           metrics=["coco", "cost", "label-free"], dataset="site", device="cpu", workdir=workdir,
                           private=True, argv=argv, bootstrap=50)
    terminal = io.StringIO()  # the lines the run prints: a terminal log is pasted into tickets too
    with contextlib.redirect_stderr(terminal):
        outcome = run_bench(host, registry, options)
    (base / "terminal.txt").write_text(terminal.getvalue())
    return base, workdir, outcome, json.loads((workdir / "results.json").read_text())


def test_unlabelled_photos_get_label_free_measures_and_agreement(own):
    _, workdir, outcome, results = own
    # the oracle cannot run without ground truth, by design: skipped with the reason, and the run exits 0
    oracle = [c for c in results["cells"] if c["backbone"] == "oracle-instance"]
    assert [c["status"] for c in oracle] == ["skipped", "skipped"] and "has no ground truth" in oracle[0]["reason"]
    assert outcome.exit_code == 0
    rows = {(c["backbone"], c["masker"]): c for c in results["cells"] if c["status"] == "ok"}
    assert set(rows) == {("pixels", "kmeans"), ("pixels", "ncut"), ("position", "kmeans"), ("position", "ncut")}
    masks = {}
    for (b, m), cell in rows.items():
        metrics = cell["pseudo_masks"]["metrics"]
        assert metrics["coco"]["status"] == "skipped" and "no ground truth" in metrics["coco"]["reason"]
        free = metrics["label-free"]
        assert free["status"] == "ok" and free["descriptive"] is True
        # the reference: the cached pseudo-mask files, decoded by numpy
        folder = workdir / "cache" / "pseudo-masks" / cell["pseudo_masks"]["key"]
        per_image = {int(p.stem): json.loads(p.read_text())["predictions"] for p in folder.glob("[0-9]*.json")}
        assert len(per_image) == 3
        masks[(b, m)] = per_image
        decoded = [[_decode(p["segmentation"]) for p in preds] for preds in per_image.values()]
        assert free["values"]["masks_per_image"] == pytest.approx(np.mean([len(d) for d in decoded]))
        coverage = [np.logical_or.reduce(d).mean() if d else 0.0 for d in decoded]
        assert free["values"]["coverage"] == pytest.approx(np.mean(coverage), abs=1e-12)
        lo, hi = free["ci"]["coverage"]
        assert lo <= free["values"]["coverage"] <= hi
    # nothing ranks without labels: the label-free values describe, they do not rank
    assert results["primary_metric"]["metric"] is None
    pairs = {(p["a"], p["b"]): p for p in results["label_free"]["agreement"]}
    assert set(pairs) == {("pixels/kmeans", "pixels/ncut"), ("pixels/kmeans", "position/kmeans"),
                          ("pixels/ncut", "position/ncut"), ("position/kmeans", "position/ncut")}
    pair = pairs[("pixels/kmeans", "position/kmeans")]
    assert pair["between"] == "backbones" and pair["images"] == 3
    expected = np.mean([_brute_agreement([_decode(p["segmentation"]) for p in masks[("pixels", "kmeans")][i]],
                                         [_decode(p["segmentation"]) for p in masks[("position", "kmeans")][i]]) for i in (1, 2, 3)])
    assert pair["value"] == pytest.approx(expected, abs=1e-9)
    assert pairs[("pixels/kmeans", "pixels/ncut")]["between"] == "maskers"


def test_summary_says_what_was_measured_and_gives_the_labelling_route(own):
    from uisbench.bench.report.findings import findings

    _, workdir, _, results = own
    text = " ".join(t for _, t in findings(results))
    assert "Without labels (label-free" in text and "masks per image" in text and "Agreement between backbones" in text
    assert "No ground truth, so no ranking" in text and "train_unlabelled: true" in text
    assert "platform bench --registry mine.yaml --dataset site-labelled" in text
    assert "No backbone produced a number" not in text
    html_text = (workdir / "report.html").read_text()
    assert "site-labelled" in html_text and "train_unlabelled: true" in html_text


def test_private_keeps_the_sites_names_home_and_the_gallery_local(own):
    """The sentinel (the folder above the photos, the registry file and the work directory) is in no
    output meant to be shared; only logs/, cache/ and private/ stay on site by design."""
    _, workdir, _, results = own
    kept_home = {"logs", "cache", "private"}
    shared = [p for p in workdir.rglob("*") if p.is_file() and p.relative_to(workdir).parts[0] not in kept_home]
    names = {p.relative_to(workdir).as_posix() for p in shared}
    assert {"results.json", "report.html", "leaderboard.md", "leaderboard.csv", ".lock", "report/leaderboard.png"} <= names
    leaks = [n for p, n in zip(shared, names, strict=True) if SENTINEL.encode() in p.read_bytes()]
    assert leaks == []
    # the cell lines on the terminal too (the oracle's reason quotes its dataset's folder)
    terminal = (workdir.parent / "terminal.txt").read_text()
    assert "[skipped] oracle-instance" in terminal and "<private>" in terminal
    assert SENTINEL not in terminal
    assert "<private>" in results["run"]["argv"] and results["run"]["workdir"] == "<private>"
    assert all(f["path"] == "<private>" for f in results["provenance"]["registry"]["files"])
    assert json.loads((workdir / ".lock").read_text())["host"] == "<private>"
    # the local gallery: the site's images with their masks, said so at the top, never linked
    page = (workdir / "private" / "gallery.html").read_text()
    assert "this page holds the site's images" in page and page.count("background-image:url(data:image/") == 3
    assert "gallery.html" not in (workdir / "report.html").read_text()
    assert "background-image:url(data:image/" not in (workdir / "report.html").read_text()


def test_private_argv_and_redactor():
    from uisbench.bench._private import Redactor, private_argv

    argv = ["/home/ward7/.venv/bin/platform", "bench", "--registry", "mine.yaml", "--workdir=/srv/ward7/run",
            "--set", "root=/srv/ward7/photos", "--set", "n_masks=3", "--backbones", "pixels"]
    assert private_argv(argv) == ["platform", "bench", "--registry", "<private>", "--workdir=<private>", "--set",
                                  "root=<private>", "--set", "n_masks=3", "--backbones", "pixels"]
    redact = Redactor(["ward7/photos"])
    text = "ImageFolder('/srv/ward7/photos') at 3.1 images/s; pixels/kmeans and */vote/- ok; see ward7/photos"
    # a value of a name option stays, even where a folder of that name exists (here: ".")
    assert private_argv(["platform", "bench", "--dataset", ".", "--maskers", "a/b"])[3:] == [".", "--maskers", "<private>"]
    assert redact.text(text) == "ImageFolder('<private>') at 3.1 images/s; pixels/kmeans and */vote/- ok; see <private>"
    assert redact({"a": [text], "n": 1}) == {"a": [redact.text(text)], "n": 1}


def test_dry_run_without_a_student_says_so(tmp_path, capsys):
    from uisbench.cli import main

    code = main(["bench", "--dry-run", "--backbones", "pixels", "--maskers", "kmeans,ncut", "--students", "none",
                 "--workdir", str(tmp_path / "w")])
    out = capsys.readouterr().out
    assert code == 0 and "plan: 1 backbone(s) x 2 masker(s) x no student = 2 cell(s)" in out and "student(s)" not in out


def _acme():
    class Plugin:
        @uisbench.hookimpl
        def uisbench_backbones(self):
            yield uisbench.BackboneSpec(name="acme-resnet18", description="A vendor's backbone.", factory=object)

    return Plugin()


def test_plugins_lists_the_names_a_registry_entry_uses(fake_entry_points, monkeypatch, capsys):
    from uisbench.cli import main

    monkeypatch.delenv("UISBENCH_STRICT_PLUGINS", raising=False)
    fake_entry_points([FakeEntryPoint("acme", obj=_acme(), dist="uisbench-acme")])
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("acme "))
    assert "uisbench-acme" in row and "acme-resnet18 (backbone)" in row
    assert "plugin names (registry `plugin:`)" in out and "A registry entry names a plugin name, not an entry point: e.g. `plugin: " in out


def test_unknown_plugin_says_which_plugins_failed_to_load(fake_entry_points, monkeypatch, tmp_path):
    monkeypatch.delenv("UISBENCH_STRICT_PLUGINS", raising=False)
    fake_entry_points([FakeEntryPoint("acme", error=ImportError("no module named acme_cuda"), dist="uisbench-acme")])
    with pytest.warns(UserWarning, match="acme_cuda"):
        host = uisbench.host.load_plugins()
    path = tmp_path / "mine.yaml"
    path.write_text("version: 1\nbackbones:\n  r18: {plugin: acme-resnet18}\n")
    with pytest.raises(uisbench.ConfigError) as err:
        uisbench.host.load_registry([str(path)], host)
    text = str(err.value) + "\n".join(getattr(err.value, "problems", []))
    assert "unknown plugin 'acme-resnet18'" in text
    assert "1 plugin(s) failed to load and may provide it: acme (uisbench-acme 1.0): ImportError" in text and "acme_cuda" in text
    assert "`platform plugins --all` lists the plugin names an entry can use" in text


class _WrongGrid(uisbench.GridBackbone):
    """Declares 8 px patches on 128 px input (16 x 16) but returns a 32 x 32 grid."""

    def __init__(self, **params):
        super().__init__(size=128, patch_size=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), where="backbone wrong-grid")

    def provenance(self):
        return {"model": "wrong-grid", "pretrained": False, "weights": None, "weights_sha256": None}

    def extract(self, pixels, image_ids):
        import torch

        feats = torch.nn.functional.avg_pool2d(pixels, 4)  # 128 / 4 = 32 per side, not 16
        return uisbench.FeatureMap(feats, [int(i) for i in image_ids], self.patch_size)


def test_a_feature_grid_off_the_declared_geometry_is_a_plugin_error(tmp_path):
    import torch

    prep = uisbench.Preprocessing((0, 0, 0), (1, 1, 1), size=128, patch_size=8)
    uisbench.FeatureMap(torch.zeros(1, 3, 16, 16), [0], 8).check_geometry(prep, "backbone ok")  # the declared grid
    with pytest.raises(uisbench.PluginError, match=r"backbone x returned a 32 x 32 feature grid, but its preprocessing "
                                                   r"declares 128 px input in 8 px patches, a 16 x 16 grid"):
        uisbench.FeatureMap(torch.zeros(1, 3, 32, 32), [0], 8).check_geometry(prep, "backbone x")
    with pytest.raises(uisbench.PluginError, match="feature maps of 16 px patches, but its preprocessing declares 8 px"):
        uisbench.FeatureMap(torch.zeros(1, 3, 16, 16), [0], 16).check_geometry(prep, "backbone x")

    class Plugin:
        @uisbench.hookimpl
        def uisbench_backbones(self):
            yield uisbench.BackboneSpec(name="wrong-grid", description="Off its grid.", factory=_WrongGrid)

    host = uisbench.host.load_plugins(plugins=[("wrong-grid-test", Plugin())])
    (tmp_path / "mine.yaml").write_text("version: 1\nbackbones:\n  wrong: {plugin: wrong-grid}\n")
    registry = uisbench.host.load_registry([str(tmp_path / "mine.yaml")], host)
    outcome = run_bench(host, registry, BenchOptions(backbones=["wrong"], maskers=["kmeans"], students=[], metrics=["coco"],
                                                     limit=2, device="cpu", workdir=tmp_path / "w", report=False))
    cell = outcome["cells"][0]
    assert cell["status"] == "failed" and "PluginError" in cell["reason"] and "32 x 32 feature grid" in cell["reason"]
    assert "a 16 x 16 grid" in cell["reason"] and outcome.exit_code == 1


def test_check_grid_params_fits_a_fixed_patch_size():
    """A backbone with a fixed patch size has no patch_size parameter: the check takes it as an
    argument instead of failing with KeyError, and says what to do when neither is given."""
    from uisbench.grid import check_grid_params

    assert list(check_grid_params({"size": 224}, patch_size=14)) == []
    assert list(check_grid_params({"size": 225}, patch_size=14)) == [("size", "225 is not a positive multiple of the patch size 14; use e.g. 224 or 238")]
    assert list(check_grid_params({"size": 128, "patch_size": 8}, patch_size=14)) == []  # the parameter wins
    [(name, message)] = check_grid_params({"size": 224})
    assert name == "patch_size" and "check_grid_params(params, patch_size=N)" in message


def test_stability_maps_masks_back():
    from uisbench.bench.stats.stability import _cut, crop_box, flip_back

    mask = _rect(2, 9, 3, 12)
    assert (_decode(flip_back([{"segmentation": _rle(mask[:, ::-1])}])[0]["segmentation"]) == mask).all()
    assert crop_box(20, 30) == (2, 4, 17, 26) and crop_box(20, 30, 1.0) == (0, 0, 20, 30) and crop_box(1, 1) == (0, 0, 1, 1)
    outside = _rect(0, 2, 0, 30)  # the top two rows: nothing left inside the centre box
    cut = _cut([{"segmentation": _rle(mask)}, {"segmentation": _rle(outside)}], crop_box(20, 30))
    assert len(cut) == 1 and (_decode(cut[0]["segmentation"]) == mask[2:17, 4:26]).all()


def test_stability_of_unlabelled_photos_and_its_rerun_reproduces_the_stage(own, monkeypatch):
    """The rows' stability is in the results (not for calibration rows), each value inside [0, 1]
    and its interval; with the transforms made identities the rerun gives back the stage's own masks
    exactly (stability 1 on every image): the rerun is the pseudo-mask stage, not an approximation."""
    from uisbench.bench._run import open_pipeline
    from uisbench.bench.report.findings import findings
    from uisbench.bench.stats import stability as _stability

    base, workdir, _, results = own
    rows = {e["row"]: e for e in results["label_free"]["stability"]}
    assert set(rows) == {"pixels/kmeans", "pixels/ncut"}  # position and the oracle are calibration rows
    for entry in rows.values():
        assert entry["images"] == 3
        for name in ("flip", "rescale"):
            lo, hi = entry["ci"][name]
            assert 0.0 <= lo <= entry[name] <= hi <= 1.0
    text = " ".join(t for _, t in findings(results))
    assert "Stability (matched mask IoU" in text and "pixels/kmeans flip" in text
    monkeypatch.setattr(_stability, "_transform", lambda name, image: image)
    monkeypatch.setattr(_stability, "flip_back", lambda preds: preds)
    monkeypatch.setattr(_stability, "CROP", 1.0)
    host = uisbench.host.load_plugins()
    registry = uisbench.host.load_registry([str(base / "mine.yaml")], host)
    pipeline = open_pipeline(host, registry, BenchOptions(backbones=["pixels"], maskers=["kmeans", "ncut"], students=[],
                                                          metrics=["label-free"], dataset="site", device="cpu", workdir=workdir))
    try:
        for masker in ("kmeans", "ncut"):
            # the row's masks from its cache folder (the key in results.json): a peek recomputes the key,
            # which moves when a source file changes between the fixture's run and this test
            cell = next(c for c in results["cells"] if (c["backbone"], c["masker"]) == ("pixels", masker))
            folder = workdir / "cache" / "pseudo-masks" / cell["pseudo_masks"]["key"]
            own_masks = {p.stem: json.loads(p.read_text())["predictions"] for p in folder.glob("[0-9]*.json")}
            values = _stability._row_values(pipeline, "pixels", masker, own_masks)
            assert {name: sorted(v.values()) for name, v in values.items()} == {"flip": [1.0] * 3, "rescale": [1.0] * 3}
    finally:
        pipeline.close()
