"""report.html: summary sentences, the leaderboard table, the four plots, the gallery, private
reports, and (when Chromium is installed) the page in a real browser (scripts/report_check.py)."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import uisbench
from uisbench.bench import BenchOptions, run_bench
from uisbench.bench._run import open_pipeline
from uisbench.bench.report.findings import findings
from uisbench.bench.report.outputs import write_outputs, write_report
from uisbench.bench.report.page import page
from uisbench.bench.report.plots import all_plots

REPO = Path(__file__).resolve().parents[1]
CHECK = REPO / "scripts" / "report_check.py"
NO_CHROMIUM = ("Chromium is not installed (Debian: apt-get install chromium), so report.html is not checked in a "
               "browser; the checks on the HTML text still ran")

UNAVAILABLE = ("Backbone 'vit_small_patch16_224.dino': no weights on this machine (offline, not in the cache). "
               "Get timm/vit_small_patch16_224.dino/model.safetensors, then name the file in a registry file.")


def _host_registry(extra: str | None = None, tmp: Path | None = None):
    host = uisbench.host.load_plugins()  # strict under UISBENCH_STRICT_PLUGINS=1 (make test)
    paths = []
    if extra is not None:
        path = tmp / "mine.yaml"
        path.write_text(extra)
        paths.append(str(path))
    return host, uisbench.host.load_registry(paths, host)


def _bench(workdir: Path, host, registry, **options):
    options = {"backbones": ["oracle-instance", "pixels"], "maskers": ["kmeans", "ncut"], "students": [],
               "metrics": ["coco", "instance-awareness", "cost"], "limit": 4, "device": "cpu", "report": True, **options}
    return run_bench(host, registry, BenchOptions(workdir=workdir, **options))


def _render(workdir: Path, host, registry, results, private=False, **options):
    """write_report on a cached pipeline of the run in ``workdir`` (nothing recomputed)."""
    options = {"backbones": ["oracle-instance", "pixels"], "maskers": ["kmeans", "ncut"], "students": [],
               "metrics": ["coco", "instance-awareness", "cost"], "limit": 4, "device": "cpu", **options}
    pipeline = open_pipeline(host, registry, BenchOptions(workdir=workdir, **options))
    try:
        return write_report(pipeline, results, 4, private=private)
    finally:
        pipeline.close()


def _with_unavailable(results):
    """The results plus a backbone that could not run here (as an offline DINO row looks)."""
    out = copy.deepcopy(results)
    out["backbones"]["dino-vits16"] = {"plugin": "dino", "status": "unavailable", "reason": UNAVAILABLE, "calibration": False, "metrics": {}}
    for masker in dict.fromkeys(c["masker"] for c in results["cells"]):
        cell = {"backbone": "dino-vits16", "masker": masker, "student": None, "calibration": False, "pretrained": None,
                "status": "unavailable", "reason": UNAVAILABLE, "pseudo_masks": None, "student_stage": None, "timings": {}, "seconds": 0.0}
        out["cells"].append(cell)
        out["ranking"]["rows"].append({"id": f"dino-vits16/{masker}/-", "value": None, "ci": None, "within_noise_of_previous": None})
    return out


def _label_efficiency():
    """As _label_efficiency.label_efficiency writes it: k = 0 of the pseudo curve is the student itself."""
    def series(base, step, ci, ks):
        return [{"k": k, "mean": base + step * i, "std": 0.02, "ci": [base + step * i - 0.03, base + step * i + 0.03] if ci else None}
                for i, k in enumerate(ks)]

    return {"metric": "coco", "value": "AP50mask", "rows": [
        {"backbone": "pixels", "masker": "kmeans", "student": "maskrcnn", "selection": "random", "budgets": [0, 4, 16, 64],
         "pseudo": series(0.2, 0.1, True, [0, 4, 16, 64]), "baseline": series(0.05, 0.1, False, [4, 16, 64]),
         "labels_saved": 24.0, "labels_saved_text": "24.0"}]}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One real tiny bench run (oracle-instance, pixels x kmeans, ncut on 4 synth-instances images)."""
    workdir = tmp_path_factory.mktemp("report") / "w"
    host, registry = _host_registry()
    _bench(workdir, host, registry)
    return workdir, host, registry, json.loads((workdir / "results.json").read_text())


# ---------------------------------------------------------------------------------------------


def test_report_page_top_to_bottom(run):
    workdir, host, registry, results = run
    text = (workdir / "report.html").read_text()
    assert "<script src" not in text and "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in text  # offline: no CDN, nothing fetched
    order = [text.index(f"id={s}") for s in ("summary", "leaderboard", "plots", "gallery", "details")]
    assert order == sorted(order)
    summary = re.search(r"<section id=summary>(.*?)</section>", text, re.S).group(1)
    assert "Best contender: <b>pixels</b>" in summary and "Calibration ceiling: oracle-instance" in summary
    assert "Instance awareness:" in summary and "validation images" in summary
    # headline columns shown, the rest behind the toggle; calibration rows in their own group
    assert "AP50mask ↑" in text and "recall_<wbr>multi ↑" in text and "class='num extra" in text and "AP75mask" in text
    assert "data-group=calibration" in text and "<tr class='calib'" in text
    for plot in ("instance", "cost-pipeline", "stages"):
        assert f"data-plot='{plot}'" in text, plot
    assert "data-plot='label-efficiency'" not in text  # no few-label stage in this run
    # gallery: the val images and a mask layer per backbone x masker, images only from usable("val")
    layers = json.loads(re.search(r"<script type='application/json' id=layers>(.*?)</script>", text, re.S).group(1))
    assert sorted(layers) == ["1", "2", "3", "4"]
    assert {"gt", "pm|pixels|kmeans", "pm|oracle-instance|ncut"} <= set(layers["1"])
    assert "data:image/png;base64," in text
    for name in ("leaderboard.png", "image-1.png", "stages.svg", "instance-awareness.svg", "cost-pipeline.svg"):
        assert (workdir / "report" / name).is_file(), name


def test_instance_panel_shows_separability_matched_by_distance(run):
    """The instance-awareness picture's second panel places each backbone at its distance-matched
    separability_auroc (the headline) and marks the proximity-confounded unmatched value apart."""
    from uisbench.bench.report.data import fmt

    workdir, host, registry, results = run
    svg = (workdir / "report" / "instance-separability.svg").read_text()
    text = (workdir / "report.html").read_text()
    assert "data-plot='instance-separability'" in text
    shown = 0
    for cell in results["cells"]:
        values = cell["pseudo_masks"]["metrics"]["instance-awareness"]["values"]
        matched, unmatched = values["separability_auroc"], values["separability_auroc_unmatched"]
        if matched is None:
            continue
        tip = re.search(rf"<circle cx='([\d.]+)'[^>]*><title>{re.escape(cell['backbone'])}: separability_auroc ([\d.]+) ", svg)
        assert tip and tip.group(2) == fmt(matched), (cell["backbone"], matched)
        assert f"{cell['backbone']}: unmatched {fmt(unmatched)}" in svg
        shown += 1
    assert shown >= 2


def test_unavailable_rows_collapse_into_one_notice_and_label_efficiency_is_drawn(run, tmp_path):
    workdir, host, registry, results = run
    more = _with_unavailable(results)
    more["label_efficiency"] = _label_efficiency()
    text = page(more, findings(more), all_plots(more), None, private=False)
    notice = re.search(r"<details id=unavailable class=notice><summary>(.*?)</summary>", text).group(1)
    assert notice == "1 backbone not scored here: weights not on this machine — how to get them"
    table = re.search(r"<table id=board.*?</table>", text, re.S).group(0)
    assert "dino-vits16" not in table  # not a row of numbers that are not there
    svg = re.search(r"<svg[^>]*data-plot='label-efficiency'.*?</svg>", text, re.S).group(0)
    assert "labelled training images" in svg and "stroke-dasharray='5 3'" in svg  # baseline dashed
    assert svg.count("<path d='M") >= 4  # whiskers from ci (pseudo) and std (baseline)
    assert ">0</text>" in svg  # k = 0 has its own tick left of the log axis
    assert ("Label efficiency (<b>pixels / kmeans / maskrcnn</b>, random selection): the baseline needs 24.0 labelled images "
            "to reach what pseudo-mask training reaches with no labels (AP50mask 0.200)") in text


def test_label_efficiency_colours_per_selection_shapes_per_masker_and_whiskers_stay_in_the_frame(run):
    """As `make bench` draws it: one backbone, two maskers, two selection rules; an interval reaching
    past the last round tick (0.114 above means <= 0.1) must widen the axis, not leave the frame."""
    workdir, host, registry, results = run
    rows = []
    for selection, base in (("random", 0.02), ("uncertain", 0.01)):
        for masker in ("ncut", "kmeans"):
            pseudo = [{"k": k, "mean": base + 0.03 * i, "std": None, "ci": [0.0, base + 0.03 * i + 0.024]} for i, k in enumerate([0, 8, 24])]
            baseline = [{"k": k, "mean": base + 0.01 * i, "std": None, "ci": None} for i, k in enumerate([8, 24])]
            rows.append({"backbone": "pixels", "masker": masker, "student": "maskrcnn", "selection": selection,
                         "budgets": [0, 8, 24], "pseudo": pseudo, "baseline": baseline})
    more = copy.deepcopy(results)
    more["label_efficiency"] = {"metric": "coco", "value": "AP50mask", "rows": rows}
    svg = all_plots(more)["label_efficiency"]
    frame = re.search(r"<rect x='([\d.]+)' y='([\d.]+)' width='([\d.]+)' height='([\d.]+)' class='box'/>", svg)
    top, bottom = float(frame.group(2)), float(frame.group(2)) + float(frame.group(4))
    whisker_ends = [float(v) for v in re.findall(r"V(-?[\d.]+)", svg)]
    assert whisker_ends and all(top - 1e-6 <= v <= bottom + 1e-6 for v in whisker_ends), (top, bottom, whisker_ends)
    lines = re.findall(r"<polyline points='[^']*' fill='none' stroke='(#[0-9a-f]{6})' stroke-width='1.8'( stroke-dasharray='5 3')?", svg)
    solid = [c for c, dash in lines if not dash]
    dashed = [c for c, dash in lines if dash]
    assert len(solid) == 4 and len(set(solid)) == 2  # a colour per selection rule, shared by its maskers
    assert len(dashed) == 2 and set(dashed) == set(solid)  # one baseline per selection, in its colour
    assert "masker ncut" in svg and "masker kmeans" in svg and "pixels, uncertain · baseline" in svg


def test_findings_follow_the_data():
    def cell(backbone, masker, value, ci, calibration=False):
        metrics = {"coco": {"status": "ok", "values": {"AP50mask": value}, "higher_is_better": {"AP50mask": True},
                            "headline": ["AP50mask"], "ci": {"AP50mask": ci}}}
        return {"backbone": backbone, "masker": masker, "student": None, "calibration": calibration, "status": "ok", "reason": None,
                "pseudo_masks": {"status": "ok", "metrics": metrics}, "student_stage": None, "timings": {}}

    cells = [cell("a", "m1", 0.5, [0.45, 0.55]), cell("b", "m1", 0.3, [0.25, 0.35]), cell("a", "m2", 0.2, [0.1, 0.3]),
             cell("b", "m2", 0.4, [0.3, 0.5])]
    rows = [{"id": "a/m1/-", "value": 0.5, "ci": [0.45, 0.55], "within_noise_of_previous": None},
            {"id": "b/m2/-", "value": 0.4, "ci": [0.3, 0.5], "within_noise_of_previous": True},
            {"id": "b/m1/-", "value": 0.3, "ci": [0.25, 0.35], "within_noise_of_previous": True},
            {"id": "a/m2/-", "value": 0.2, "ci": [0.1, 0.3], "within_noise_of_previous": True}]
    results = {"cells": cells, "metrics": {"coco": {}}, "backbones": {}, "dataset": {"name": "d", "splits": {"val": {"images": 500}}},
               "primary_metric": {"stage": "pseudo-masks", "metric": "coco", "value": "AP50mask"},
               "ranking": {"higher_is_better": True, "bootstrap": 100, "seeds": 1, "rows": rows, "calibration": []}}
    text = " ".join(t for _, t in findings(results))
    assert "lead over <b>b</b> with m2 (0.400) is <span class=tie>within noise</span> (paired bootstrap" in text
    # a/m1 vs b/m1 are not adjacent rows: their intervals decide
    assert "with m1: <b>a</b> (0.500; over b 0.300, <span class=sure>beyond noise</span> (95% intervals do not overlap)" in text
    assert "No masker wins everywhere" in text and "validation images" not in text
    transductive = {**results, "dataset": {**results["dataset"], "transductive": True}}
    assert findings(transductive)[0][0] == "caution" and "Transductive" in findings(transductive)[0][1]
    calib = copy.deepcopy(results)
    for c in calib["cells"]:
        c["calibration"] = True
    calib["ranking"]["calibration"], calib["ranking"]["rows"] = calib["ranking"]["rows"], []
    assert any("Calibration only" in t for k, t in findings(calib) if k == "caution")


def test_private_report_holds_no_image_pixels_or_paths(tmp_path):
    """A COCO folder on disk (real file paths): the private page holds ids only."""
    import numpy as np
    from PIL import Image

    root = tmp_path / "site-secret-images"
    (root / "img").mkdir(parents=True)
    images, annotations = [], []
    for i in range(1, 4):
        pixels = np.full((64, 64, 3), 90, dtype=np.uint8)
        boxes = [(8, 8, 24, 24), (36, 30, 20, 22)]
        for x, y, w, h in boxes:
            pixels[y:y + h, x:x + w] = (200, 60 + 40 * i, 40)
        name = f"patient-{i:03d}.png"
        Image.fromarray(pixels).save(root / "img" / name)
        images.append({"id": i, "file_name": name, "width": 64, "height": 64})
        for k, (x, y, w, h) in enumerate(boxes):
            poly = [x, y, x + w, y, x + w, y + h, x, y + h]
            annotations.append({"id": 10 * i + k, "image_id": i, "category_id": 1, "segmentation": [poly], "bbox": [x, y, w, h],
                                "area": float(w * h), "iscrowd": 0})
    (root / "ann.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                               "categories": [{"id": 1, "name": "lesion"}]}))
    host, registry = _host_registry(f"version: 1\ndatasets:\n  site: {{plugin: coco, root: {root}, images: img, annotations: ann.json}}\n", tmp_path)
    options = {"dataset": "site", "backbones": ["pixels"], "maskers": ["kmeans"], "limit": 3}
    workdir = tmp_path / "w"
    _bench(workdir, host, registry, **options)
    public = (workdir / "report.html").read_text()
    assert "data:image/png;base64," in public and "patient-001.png" not in public  # the gallery, by id
    public_size = len(public)
    _render(workdir, host, registry, json.loads((workdir / "results.json").read_text()), private=True, **options)
    text = (workdir / "report.html").read_text()
    assert "data:image/" not in text and "base64" not in text
    assert str(root) not in text and "site-secret-images" not in text and "patient-" not in text
    assert "class=gimg" not in text and "Private report: no images" in text and "data-private='1'" in text
    assert "data-plot='stages'" in text  # plots as SVG stay
    assert not list((workdir / "report").glob("image-*.png"))  # the earlier public run's images are gone
    assert public_size > len(text)


def test_gallery_stays_small_for_large_images():
    """4 gallery images of 640 x 480 px with 20 cells' pseudo-masks and student predictions (20 masks
    each) stay within a few MB: JPEG for the photos, palette PNG layers for the masks."""
    import numpy as np

    from uisbench import masks
    from uisbench.bench.report.gallery import image_uri, layer

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:480, :640]
    photo = (128 + 60 * np.sin(xx / 17.0)[..., None] + rng.normal(0, 25, (480, 640, 3))).clip(0, 255).astype(np.uint8)
    rles = []
    for _ in range(20):
        cy, cx, r = rng.integers(40, 440), rng.integers(40, 600), rng.integers(15, 90)
        rles.append(masks.encode(((yy - cy) ** 2 + ((xx - cx) * 0.8) ** 2 < r * r).astype(np.uint8)))
    image_bytes, layer_bytes = len(image_uri(photo)), len(layer(rles, 480, 640))
    total = 4 * image_bytes + 4 * 20 * 2 * layer_bytes
    assert total < 4_000_000, (image_bytes, layer_bytes)


def test_write_outputs_passes_the_private_setting(run, tmp_path, monkeypatch):
    workdir, host, registry, results = run
    seen = {}

    def fake(pipeline, res, n, *, private=False):
        seen["private"] = private

    import uisbench.bench.report.outputs as report

    monkeypatch.setattr(report, "write_report", fake)

    class Ctx:
        private = True
        options = type("O", (), {"report_images": 4})()
        workdir = tmp_path
        log_path = tmp_path / "log"

        def say(self, text):
            pass

    write_outputs(type("P", (), {"ctx": Ctx()})(), results)
    assert seen == {"private": True}


@pytest.mark.skipif(not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")), reason=NO_CHROMIUM)
def test_report_in_a_real_browser(run, tmp_path):
    workdir, host, registry, results = run
    more = _with_unavailable(results)
    more["label_efficiency"] = _label_efficiency()
    (workdir / "results.json").write_text(json.dumps(more))
    try:
        _render(workdir, host, registry, more)
        shot = tmp_path / "report.png"
        out = subprocess.run([sys.executable, str(CHECK), str(workdir / "report.html"), "--screenshot", str(shot)],
                             capture_output=True, text=True, timeout=300)
    finally:
        (workdir / "results.json").write_text(json.dumps(results))
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    assert "self-test: pass" in out.stdout and shot.stat().st_size > 10_000


def _ranked_results(pretrained_a=False, ranked=True):
    """Two contenders, ``a`` (not pretrained) ahead of ``b``; ``ranked=False``: no metric ranked them."""
    def cell(backbone, value, pretrained):
        metrics = {"coco": {"status": "ok", "values": {"AP50mask": value}, "higher_is_better": {"AP50mask": True},
                            "headline": ["AP50mask"], "ci": {"AP50mask": [value - 0.05, value + 0.05]}}} if ranked else {}
        return {"backbone": backbone, "masker": "m", "student": None, "calibration": False, "pretrained": pretrained, "status": "ok",
                "reason": None, "pseudo_masks": {"status": "ok", "metrics": metrics}, "student_stage": None, "timings": {}}

    rows = [{"id": "a/m/-", "value": 0.5 if ranked else None, "ci": None, "within_noise_of_previous": None},
            {"id": "b/m/-", "value": 0.3 if ranked else None, "ci": None, "within_noise_of_previous": False if ranked else None}]
    return {"cells": [cell("a", 0.5, pretrained_a), cell("b", 0.3, True)], "metrics": {"coco": {}}, "backbones": {},
            "dataset": {"name": "d", "splits": {"val": {"images": 500}}},
            "primary_metric": {"stage": "pseudo-masks", "metric": "coco" if ranked else None, "value": "AP50mask" if ranked else None},
            "ranking": {"higher_is_better": True, "bootstrap": 100, "seeds": 1, "rows": rows, "calibration": []}}


def test_random_init_rows_are_marked_in_the_summary_table_and_page():
    from uisbench.bench import render_leaderboard
    from uisbench.bench.report.leaderboard import NOT_PRETRAINED_NOTE

    results = _ranked_results()
    text = " ".join(t for _, t in findings(results))
    assert "Best contender: <b>a</b> (not pretrained: random init or no learned weights) with m" in text
    assert "over <b>b</b> with m" in text and "<b>b</b> (not pretrained" not in text
    table = render_leaderboard(results)
    assert re.search(r"^1\s+a \*\s", table, re.M) and re.search(r"^2\s+b\s", table, re.M) and NOT_PRETRAINED_NOTE in table
    html_text = page(results, findings(results), all_plots(results), None, private=False)
    assert html_text.count("<span class=tag") == 1 and "not pretrained</span>" in html_text
    pretrained = _ranked_results(pretrained_a=True)
    assert "not pretrained" not in " ".join(t for _, t in findings(pretrained)) and "*" not in render_leaderboard(pretrained).split("\n\n")[1]


def test_an_unranked_run_says_so_and_ranks_rows_as_the_terminal_does():
    from uisbench.bench import render_leaderboard

    results = _ranked_results(pretrained_a=True, ranked=False)
    html_text = page(results, findings(results), all_plots(results), None, private=False)
    assert "ranked by" not in html_text and "<b>not ranked</b>: no metric that ranks reported a value" in html_text
    ranks = re.findall(r"<td class=num data-v='(\d)' title=''>([^<]*)</td>", html_text)
    assert ranks == [("1", "-"), ("2", "-")]  # the terminal shows "-" too
    table = render_leaderboard(results)
    assert "not ranked (no metric that ranks reported a value)" in table and re.search(r"^-\s+a\s", table, re.M)
    ranked = _ranked_results(pretrained_a=True)
    assert re.findall(r"<td class=num data-v='(\d)' title='[^']*'>([^<]*)</td>", page(ranked, [], all_plots(ranked), None, private=False)) \
        == [("1", "1"), ("2", "2")]


def test_axis_labels_stay_inside_the_picture():
    """The cost plot's x label (unit, stages, hardware) was cut at the left edge: every label line
    now lies inside the SVG, wrapped onto two lines when one does not fit."""
    from uisbench.bench.report.svg import LABEL_SIZE, Axes, text_width

    for label in ("images / s, features + pseudo-masks, log scale (Intel(R) Xeon(R) Processor (2 cores))",
                  "images / s, features, log scale (NVIDIA H100 80GB HBM3)", "k"):
        ax = Axes(600, 420, x=(1, 100), y=(0, 1), xlog=True, margin=(34, 200, 56, 64), title="t")
        ax.frame(label, "y")
        lines = re.findall(r"<text x='([\d.]+)' y='(\d+)' text-anchor='middle' class='label'>([^<]*)</text>", "".join(ax.parts))
        assert " ".join(t for _, _, t in sorted(lines, key=lambda m: int(m[1]))) == label
        for x, _, text in lines:
            half = text_width(text, LABEL_SIZE) / 2
            assert 0 <= float(x) - half and float(x) + half <= 600
