"""The bench engine with tiny fake plugins (bench_fakes.py): cache keys, statuses and exit
codes, cached reruns, --force, interruption and resume, schema, leaderboard, torchrun shards."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bench_fakes as fakes
import uisbench
from uisbench.bench import BenchOptions, render_leaderboard, run_bench, validate_results

HERE = Path(__file__).resolve().parent
REPO = HERE.parent




def _setup(tmp_path, **registry_changes):
    host = uisbench.host.load_plugins(plugins=[("fakes", fakes)], load_entry_points=False, strict=True)
    path = fakes.write_registry(tmp_path / "registry.yaml", **registry_changes)
    return host, uisbench.host.load_registry([path], host, include_default=False)


def _bench(tmp_path, workdir="w", registry=None, **options):
    host, reg = _setup(tmp_path, **(registry or {}))
    options.setdefault("report", False)
    return run_bench(host, reg, BenchOptions(workdir=tmp_path / workdir, **options))


def _cell(results, backbone, masker="groups", student="student"):
    return next(c for c in results["cells"] if c["backbone"] == backbone and c["masker"] == masker and c["student"] == student)


def _values(results):
    """Every metric value of every cell (what must not change between equivalent runs)."""
    out = {}
    for c in results["cells"]:
        for stage in ("pseudo_masks", "student_stage"):
            for name, r in ((c.get(stage) or {}).get("metrics") or {}).items():
                if name != "cost":
                    out[(c["backbone"], c["masker"], c["student"], stage, name)] = (r["status"], r["values"])
    return out


def _tmp_files(root: Path):
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------------------------


def test_cache_keys_follow_what_a_stage_depends_on(tmp_path):
    from uisbench.bench._run import open_pipeline

    def keys(**changes):
        host, reg = _setup(tmp_path, **changes)
        p = open_pipeline(host, reg, BenchOptions(workdir=tmp_path / "w"))
        try:
            stages = (p.features("pixels", "val"), p.pseudo_masks("pixels", "groups", "val"), p.student("pixels", "groups", "student"))
            return tuple(p.runner.key(stage) for stage in stages)
        finally:
            p.close()

    base = keys()
    assert base == keys()  # deterministic
    assert keys(backbones={"oracle": {"plugin": "fake-oracle", "scale": 3.0}}) == base  # another row's param
    f, m, s = keys(backbones={"pixels": {"plugin": "fake-pixels", "scale": 2.0}})
    assert f != base[0] and m != base[1] and s != base[2]
    f, m, s = keys(maskers={"groups": {"plugin": "fake-groups", "decimals": 3}})
    assert f == base[0] and m != base[1] and s != base[2]
    f, m, s = keys(students={"student": {"plugin": "fake-student", "epochs": 3}})
    assert (f, m) == base[:2] and s != base[2]
    f, m, s = keys(datasets={"shapes": {"plugin": "fake-shapes", "images": 5}})
    assert f != base[0]
    assert keys(bench={**fakes.REGISTRY["bench"], "seed": 1})[0] != base[0]
    # the weights file's content enters the key, without building the backbone
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"one")
    with_file = keys(backbones={"pixels": {"plugin": "fake-pixels", "weights": str(weights)}})
    time.sleep(0.01)
    weights.write_bytes(b"two")
    os.utime(weights, ns=(time.time_ns(), time.time_ns() + 10_000_000))
    assert keys(backbones={"pixels": {"plugin": "fake-pixels", "weights": str(weights)}})[0] != with_file[0]


_TMP_MASKER = """
import uisbench

from ._geometry import SIDE


class Tiles(uisbench.Masker):
    def predict(self, features, records):
        import numpy as np

        out = []
        for rec in records:
            preds = []
            for y in range(0, rec.height, SIDE):
                for x in range(0, rec.width, SIDE):
                    mask = np.zeros((rec.height, rec.width), dtype=np.uint8)
                    mask[y : y + SIDE, x : x + SIDE] = 1
                    rle = uisbench.masks.encode(mask)
                    preds.append(uisbench.Prediction(rec.id, rle, uisbench.masks.to_bbox(rle), 1.0))
            out.append(preds)
        return out


@uisbench.hookimpl
def uisbench_maskers():
    yield uisbench.MaskerSpec(name="tmp-tiles", description="Square tiles.", factory=Tiles, version="1")
"""


def test_a_code_change_recomputes_the_stage(tmp_path, monkeypatch):
    """A plugin's source enters the cache keys (its declared version did not change): editing a
    private helper module of the plugin recomputes its pseudo-masks; the features stay cached."""
    import importlib

    package = tmp_path / "src" / "uisbench_tmp_tiles"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(_TMP_MASKER)
    (package / "_geometry.py").write_text("SIDE = 8\n")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    module = importlib.import_module("uisbench_tmp_tiles")
    registry = {"maskers": {"tiles": {"plugin": "tmp-tiles"}}}

    def bench(workdir="w"):
        host = uisbench.host.load_plugins(plugins=[("fakes", fakes), ("tiles", module)], load_entry_points=False, strict=True)
        reg = uisbench.host.load_registry([fakes.write_registry(tmp_path / "registry.yaml", **registry)], host, include_default=False)
        options = BenchOptions(workdir=tmp_path / workdir, backbones=["pixels"], maskers=["tiles"], students=[], metrics=["coco"], report=False)
        return run_bench(host, reg, options)

    def ap(results):
        return _cell(results, "pixels", "tiles", None)["pseudo_masks"]["metrics"]["coco"]["values"]["AP50mask"]

    first = bench()
    assert first["run"]["computed"]["pseudo-masks"] == 6 and ap(first) == 1.0  # 8 px tiles are the instances
    assert bench()["run"]["computed"] == {"features": 0, "pseudo-masks": 0, "student": 0, "finetune": 0, "metrics": 0}
    (package / "_geometry.py").write_text("SIDE = 32\n")  # one tile, the whole image: same version, other masks
    importlib.reload(importlib.import_module("uisbench_tmp_tiles._geometry"))
    importlib.reload(module)
    edited = bench()
    assert edited["run"]["computed"]["features"] == 0
    assert edited["run"]["computed"]["pseudo-masks"] == 6 and edited["run"]["computed"]["metrics"] == 1
    assert ap(edited) == ap(bench("fresh")) == 0.0


def test_code_fingerprints_leave_out_the_report_and_nothing_that_computes_imports_it(monkeypatch):
    """Editing the report, the table or the CLI must not recompute cached stages: their modules are not
    in any stage's fingerprint. That is only sound while no module a stage runs through imports them;
    the orchestrators that do are listed here, and a new importer fails this test."""
    import ast

    from uisbench.bench import _code

    visited = []
    real = _code._file_info

    def recording(module, path, stamp):
        visited.append(module)
        return real(module, path, stamp)

    monkeypatch.setattr(_code, "_file_info", recording)
    for module in ("uisbench.bench.stages.features", "uisbench.bench.stages.masks", "uisbench.bench.stages.student", "uisbench.bench.stages.evaluate"):
        visited.clear()
        _code.code_fingerprint(module)
        assert {"uisbench", "uisbench.contracts", "uisbench.spectral", "uisbench.bench._stage"} <= set(visited), module
        assert not [m for m in visited if _code._presentation(m)], module  # the walk reaches the facade, not the report
    root = Path(uisbench.__file__).parent
    importers = set()
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_bytes())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level else node.module
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            if any(_code._presentation(t) for t in targets) and not _code._presentation(name):
                importers.add(name)
    assert importers == {"uisbench.__main__", "uisbench.bench", "uisbench.bench._run"}


def test_code_fingerprint_leaves_out_the_report_folder_not_the_stages_folder(tmp_path, monkeypatch):
    """The exclusion is a folder, not a list of names: a module new to ``bench/report/`` is outside
    every fingerprint (editing it changes nothing, even for a module outside the folder that imports
    it), while the same module in ``bench/stages/`` is inside. Run on a copy of the package so the
    tree under test is never written."""
    import shutil

    from uisbench.bench import _code

    copy = tmp_path / "uisbench"
    shutil.copytree(Path(uisbench.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(_code, "_roots", lambda top: (copy,) if top == "uisbench" else ())
    for room in ("report", "stages"):
        (copy / "bench" / room / "added.py").write_text("X = 1\n")
    (copy / "bench" / "_uses_both.py").write_text("from .report.added import X\nfrom .stages.added import X as Y\n")
    stage, user = "uisbench.bench.stages.features", "uisbench.bench._uses_both"
    before = {m: _code.code_fingerprint(m) for m in (stage, user)}
    assert before == {m: _code.code_fingerprint(m) for m in (stage, user)}

    (copy / "bench" / "report" / "added.py").write_text("X = 2\n")
    with (copy / "bench" / "report" / "leaderboard.py").open("a") as f:  # bench/__init__ imports it; every stage's walk reaches that
        f.write("\nfrom .added import X  # noqa: E402\n")
    assert {m: _code.code_fingerprint(m) for m in (stage, user)} == before
    (copy / "bench" / "stages" / "added.py").write_text("X = 2\n")
    assert _code.code_fingerprint(user) != before[user]
    with (copy / "bench" / "stages" / "masks.py").open("a") as f:  # the pipeline imports every stage
        f.write("\n# edited\n")
    assert _code.code_fingerprint(stage) != before[stage]


def test_bench_ranks_oracle_first_and_rerun_computes_nothing(tmp_path):
    first = _bench(tmp_path, report=True)
    assert first.exit_code == 0
    assert {c["status"] for c in first["cells"]} == {"ok"}
    pm = {c["backbone"]: c["pseudo_masks"]["metrics"]["coco"]["values"]["AP50mask"] for c in first["cells"]}
    assert pm["oracle"] == 1.0 and pm["oracle"] > pm["semantic"] and pm["oracle"] > pm["pixels"]
    cell = _cell(first, "oracle")
    assert cell["calibration"] is True and _cell(first, "pixels")["calibration"] is False
    assert cell["pseudo_masks"]["metrics"]["feature-shape"]["values"] == {"channels": 4.0, "patches": 96.0}
    assert cell["pseudo_masks"]["metrics"]["cost"]["values"]["stages_seen"] == 2.0  # features, pseudo-masks
    assert cell["student_stage"]["metrics"]["cost"]["values"]["stages_seen"] == 4.0  # + student-train, -predict
    assert cell["student_stage"]["provenance"] == {"epochs": 2, "trained_on": 6, "epochs_run": 2}
    assert set(cell["timings"]) == {"features", "pseudo-masks", "student-train", "student-predict"}
    # Student throughput: training samples (2 epochs x 6 images) over training time; prediction its own.
    train, predict = cell["timings"]["student-train"], cell["timings"]["student-predict"]
    assert (train["stage"], train["images"], predict["stage"], predict["images"]) == ("student-train", 12, "student-predict", 6)
    assert train["images_per_s"] == round(12 / train["seconds"], 3) and predict["images_per_s"] == round(6 / predict["seconds"], 3)
    assert first["run"]["computed"] == {"features": 36, "pseudo-masks": 36, "student": 3, "finetune": 0, "metrics": 15}
    assert first["primary_metric"] == {"stage": "student", "metric": "coco", "value": "AP50mask"}
    assert first["backbones"]["pixels"]["pretrained"] is False
    assert first["dataset"]["transductive"] is False and "transductive" not in render_leaderboard(first)
    threads = first["provenance"]["threads"]
    assert threads["torch"] >= 1 and "OMP_NUM_THREADS" in threads
    w = tmp_path / "w"
    for name in ("results.json", "leaderboard.md", "leaderboard.csv", "report.html", "report/leaderboard.png", "report/image-1000.png"):
        assert (w / name).is_file(), name
    assert "data:image/png;base64," in (w / "report.html").read_text()
    assert validate_results(json.loads((w / "results.json").read_text())) == []

    again = _bench(tmp_path, report=True)
    assert again["run"]["computed"] == {"features": 0, "pseudo-masks": 0, "student": 0, "finetune": 0, "metrics": 0}
    assert again["run"]["built"] == []  # no backbone, masker or student object was even built
    assert _values(again) == _values(first)
    assert again["cells"][0]["timings"] == first["cells"][0]["timings"]  # costs come back from the cache


def test_a_student_trained_on_the_evaluation_images_is_flagged(tmp_path):
    registry = {"datasets": {"shapes": {"plugin": "fake-shapes", "same_splits": True}}}
    out = _bench(tmp_path, registry=registry, backbones=["pixels"])
    assert out["dataset"]["transductive"] is True
    assert "transductive: the students trained on the evaluation images" in render_leaderboard(out, "markdown")
    assert validate_results(out) == []
    assert _bench(tmp_path, "w2", registry=registry, backbones=["pixels"], students=[])["dataset"]["transductive"] is None


def test_statuses_unavailable_skipped_failed_and_exit_code(tmp_path):
    registry = {
        "backbones": {"missing": {"plugin": "fake-missing"}, "broken": {"plugin": "fake-pixels", "fail": True}},
        "students": {"student": {"plugin": "fake-student", "mode": "frozen-ssl"}},
    }
    out = _bench(tmp_path, registry=registry, backbones=["oracle", "pixels", "missing", "broken"])
    assert out.exit_code == 1
    oracle, pixels = _cell(out, "oracle"), _cell(out, "pixels")
    missing, broken = _cell(out, "missing"), _cell(out, "broken")
    assert oracle["status"] == "skipped" and "calibration" in oracle["reason"]
    assert oracle["pseudo_masks"]["status"] == "ok"  # the pseudo-mask results still count
    assert oracle["pseudo_masks"]["metrics"]["coco"]["values"]["AP50mask"] == 1.0
    assert out["backbones"]["oracle"]["features"]["train"] is None  # refused before any train-split work
    assert pixels["status"] == "ok"
    assert missing["status"] == "unavailable" and "/nowhere/fake.pth" in missing["reason"]
    assert out["backbones"]["missing"]["status"] == "unavailable"
    assert broken["status"] == "failed" and "boom" in broken["reason"]
    log = (tmp_path / "w" / "logs" / "bench.log").read_text()
    assert "Traceback" in log and "RuntimeError: boom" in log
    table = render_leaderboard(out, "table")  # compact: status words, the reasons once below
    assert "unavailable missing: fake-missing: weights /nowhere/fake.pth not found" in table
    assert "failed      broken/groups/student: broken features" in table
    assert max(len(line) for line in table.splitlines()) <= 120
    full = render_leaderboard(out, "table", "all")
    assert "unavailable: fake-missing" in full and "failed: broken features" in full
    assert validate_results(out) == []
    # The skip decision is cached too: a rerun neither builds the student nor the calibration backbone.
    again = _bench(tmp_path, registry=registry, backbones=["oracle", "pixels", "missing"])
    assert again.exit_code == 0
    assert not [b for b in again["run"]["built"] if b != "backbone:missing"]
    assert _cell(again, "oracle")["status"] == "skipped"


def test_cells_that_did_not_run_for_one_reason_share_one_short_line():
    """make bench's four calibration x student cells were four lines cut mid-word; now one line names
    them and the reason follows, cut at a word, within 120 columns."""
    from uisbench.bench.report.leaderboard import _first_sentence, _not_scored

    reason = ("maskrcnn with detector_backbone 'frozen-ssl' cannot use calibration backbone OracleBackbone: it reads the "
              "evaluation ground truth, so a student built on it would see the answers. Score them at the pseudo-mask stage.")
    rows = [{"_status": "skipped", "_reason": reason, "_id": f"{b}/{m}/maskrcnn", "backbone": b, "masker": m}
            for b in ("oracle-instance", "oracle-semantic") for m in ("kmeans", "ncut")]
    rows.append({"_status": "failed", "_reason": "boom", "_id": "pixels/ncut/maskrcnn", "backbone": "pixels", "masker": "ncut"})
    lines = "\n".join(_not_scored(rows)).splitlines()
    assert lines[1:3] == ["Not scored here:", "  skipped     oracle-instance, oracle-semantic / kmeans, ncut / maskrcnn (4 cells):"]
    assert lines[3].strip().startswith("maskrcnn with detector_backbone 'frozen-ssl'") and lines[3].endswith("…")
    assert lines[3].rstrip("…").split()[-1] in reason.split()  # a whole word before the ellipsis
    assert lines[4] == "  failed      pixels/ncut/maskrcnn: boom"
    assert max(map(len, lines)) <= 120
    assert _first_sentence("short. Second sentence.") == "short"


def test_dry_run_prints_the_plan_and_computes_nothing(tmp_path):
    """`platform bench --dry-run`: cells, what is cached, the time from speeds measured in this work
    directory; no file is written before, and a cached stage is counted as such after a real run."""
    from uisbench.bench import dry_run

    host, reg = _setup(tmp_path)
    options = BenchOptions(workdir=tmp_path / "w", report=False)
    before = dry_run(host, reg, options)
    assert before[0].startswith("plan: 3 backbone(s) x 1 masker(s) x 1 student(s) = 3 cell(s) on shapes (train 6, val 6 images)")
    assert "cached: features 0/6, pseudo-masks 0/6, student 0/3" in before
    assert before[-1].startswith("time: nothing measured before; unknown for features of oracle")
    assert not [p for p in (tmp_path / "w").rglob("*") if p.is_file() and p.name != ".lock"]  # computed nothing

    run_bench(host, reg, options)
    assert dry_run(host, reg, options)[-2:] == ["cached: features 6/6, pseudo-masks 6/6, student 3/3",
                                                "time: nothing to compute, every stage is cached"]
    host, changed = _setup(tmp_path, maskers={"groups": {"plugin": "fake-groups", "decimals": 3}})
    after = dry_run(host, changed, options)  # new masks of an entry measured before: estimated, not unknown
    assert "cached: features 6/6, pseudo-masks 0/6, student 0/3" in after  # the students train on those masks
    assert after[-1].startswith("time: about ") and after[-1].endswith("for the stages measured before")  # students too
    # what the terminal shows: the same words in lines of at most 120 columns, names never split
    long = BenchOptions(workdir=tmp_path / ("w-" + "x" * 150), report=False)
    logical, shown = dry_run(host, changed, long), dry_run(host, changed, long, wrap=True)
    assert len(shown) > len(logical) and all(len(line) <= 120 or " " not in line.strip() for line in shown)
    assert " ".join(line.strip() for line in shown).split() == " ".join(logical).split()


def test_a_progress_line_fits_the_terminal_unless_the_cell_failed():
    from uisbench.bench._cells import _summary_line

    reason = "maskrcnn with detector_backbone 'frozen-ssl' cannot use calibration backbone OracleBackbone: " + "it reads the ground truth " * 8
    cell = {"status": "skipped", "backbone": "oracle-instance", "masker": "kmeans", "student": "maskrcnn", "seconds": 12.8,
            "pseudo_masks": {"metrics": {"coco": {"status": "ok", "headline": ["AP50mask"], "values": {"AP50mask": 0.925}}}},
            "reason": reason}
    line = _summary_line(cell)
    assert len(line) <= 120 and line.startswith("[skipped] oracle-instance / kmeans / maskrcnn pseudo-masks coco.AP50mask=0.925 (maskrcnn")
    assert line.endswith("…) [12.8s]")
    failed = _summary_line({**cell, "status": "failed"})  # a failure's first line is shown whole: it is the diagnosis
    assert reason.strip() in failed and len(failed) > 120


def test_failing_metric_fails_the_cell_but_keeps_the_others(tmp_path):
    registry = {"metrics": {"exploding": {"plugin": "fake-exploding"}}}
    out = _bench(tmp_path, registry=registry, backbones=["pixels"], students=[], metrics=["coco", "exploding"])
    cell = _cell(out, "pixels", student=None)
    assert out.exit_code == 1 and cell["status"] == "failed" and "exploding metric" in cell["reason"]
    assert cell["pseudo_masks"]["metrics"]["coco"]["status"] == "ok"
    assert out["primary_metric"]["stage"] == "pseudo-masks"


def test_failing_backbone_level_metric_sets_the_exit_code(tmp_path):
    registry = {"metrics": {"exploding": {"plugin": "fake-exploding-features"}}}
    out = _bench(tmp_path, registry=registry, backbones=["pixels"], students=[], metrics=["coco", "exploding"])
    row = out["backbones"]["pixels"]
    assert row["metrics"]["exploding"]["status"] == "failed"
    assert row["status"] == "failed" and "exploding metric" in row["reason"]
    assert _cell(out, "pixels", student=None)["status"] == "ok"
    assert out.exit_code == 1 and validate_results(out) == []


def test_force_redoes_a_stage_and_the_ones_after_it(tmp_path):
    _bench(tmp_path, backbones=["pixels"])
    assert _bench(tmp_path, backbones=["pixels"], force=frozenset({"metrics"}))["run"]["computed"] == {
        "features": 0, "pseudo-masks": 0, "student": 0, "finetune": 0, "metrics": 5}
    # --force student trains afresh: the old checkpoints must not be resumed from
    forced = _bench(tmp_path, backbones=["pixels"], force=frozenset({"student"}))
    assert forced["run"]["computed"] == {"features": 0, "pseudo-masks": 0, "student": 1, "finetune": 0, "metrics": 5}
    assert _cell(forced, "pixels")["student_stage"]["provenance"]["epochs_run"] == 2
    assert _bench(tmp_path, backbones=["pixels"], force=frozenset({"pseudo-masks"}))["run"]["computed"] == {
        "features": 0, "pseudo-masks": 12, "student": 1, "finetune": 0, "metrics": 5}
    assert _bench(tmp_path, backbones=["pixels"], force=frozenset({"features"}))["run"]["computed"]["features"] == 12


def test_interrupted_run_leaves_no_partial_entry_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_BENCH_INTERRUPT_AFTER", "4")  # KeyboardInterrupt from the third batch on
    with pytest.raises(KeyboardInterrupt):
        _bench(tmp_path, backbones=["oracle"], students=[], batch_size=2)
    cache = tmp_path / "w" / "cache"
    assert _tmp_files(cache) == []
    done = sorted(p.name for p in cache.glob("features/*/*.pt"))
    assert done == ["1000.pt", "1001.pt", "1002.pt", "1003.pt"]
    assert not list(cache.glob("features/*/summary-*.json"))
    monkeypatch.delenv("FAKE_BENCH_INTERRUPT_AFTER")
    out = _bench(tmp_path, backbones=["oracle"], students=[], batch_size=2)
    assert out["run"]["computed"]["features"] == 2
    reference = _bench(tmp_path, "ref", backbones=["oracle"], students=[], batch_size=2)
    assert _values(out) == _values(reference)


def test_resumed_features_draw_the_same_random_numbers(tmp_path, monkeypatch):
    import torch

    registry = {"backbones": {"noisy": {"plugin": "fake-oracle", "noise": 0.5}}}
    run = {"registry": registry, "backbones": ["noisy"], "students": [], "metrics": [], "batch_size": 2}
    monkeypatch.setenv("FAKE_BENCH_INTERRUPT_AFTER", "4")
    with pytest.raises(KeyboardInterrupt):
        _bench(tmp_path, **run)
    monkeypatch.delenv("FAKE_BENCH_INTERRUPT_AFTER")
    _bench(tmp_path, **run)  # computes the last batch only
    _bench(tmp_path, "ref", **run)  # uninterrupted
    resumed = sorted((tmp_path / "w" / "cache" / "features").glob("*/1005.pt"))
    reference = sorted((tmp_path / "ref" / "cache" / "features").glob("*/1005.pt"))
    assert len(resumed) == len(reference) == 1
    a, b = (torch.load(p, weights_only=True)["features"] for p in (resumed[0], reference[0]))
    assert torch.equal(a, b)


def test_dataset_without_ground_truth_skips_those_metrics(tmp_path):
    registry = {"datasets": {"shapes": {"plugin": "fake-shapes", "images": 4, "ground_truth": False}}}
    out = _bench(tmp_path, registry=registry, backbones=["pixels"], students=[])
    metrics = _cell(out, "pixels", student=None)["pseudo_masks"]["metrics"]
    assert metrics["coco"]["status"] == "skipped" and "no ground truth" in metrics["coco"]["reason"]
    assert metrics["cost"]["status"] == "ok"
    assert out.exit_code == 0 and out["dataset"]["has_ground_truth"] is False


def test_results_schema_catches_problems(tmp_path):
    out = _bench(tmp_path, backbones=["pixels"], students=[])
    assert validate_results(out) == []
    broken = json.loads(json.dumps(out))
    broken["cells"][0]["status"] = "great"
    del broken["provenance"]["registry"]
    broken["run"]["computed"]["features"] = -1
    problems = validate_results(broken)
    assert any("status" in p for p in problems) and any("registry" in p for p in problems)
    assert any("minimum" in p for p in problems)
    try:
        import jsonschema
    except ImportError:
        return
    schema = json.loads((REPO / "platform/uisbench/bench/results.schema.json").read_text())
    jsonschema.validate(out, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


class _EntryPoint:
    name, value = "fakes", "bench_fakes"

    class dist:  # noqa: N801 - mimics importlib.metadata.Distribution
        metadata = {"Name": "uisbench-fakes"}
        version = "0.1"

    @staticmethod
    def load():
        return fakes


def test_cli_bench_and_leaderboard_rerender(tmp_path, monkeypatch, capsys, fake_entry_points):
    from uisbench.cli import main

    fake_entry_points([_EntryPoint()], keep_real=False)
    monkeypatch.setenv("UISBENCH_REGISTRY", fakes.write_registry(tmp_path / "registry.yaml"))
    w = str(tmp_path / "w")
    assert main(["bench", "--all", "--students", "none", "--workdir", w, "--no-report", "--format", "csv"]) == 0
    printed = capsys.readouterr().out
    rows = list(csv.DictReader(io.StringIO(printed)))
    # --all adds installed backbone plugins no entry uses (fake-missing: unavailable, still exit 0);
    # contenders first, then calibration rows
    assert [r["backbone"] for r in rows] == ["pixels", "fake-missing", "oracle", "semantic"]
    assert [r["calibration"] for r in rows] == ["False", "False", "True", "True"]
    assert rows[1]["status"].startswith("unavailable: fake-missing: weights /nowhere/fake.pth not found")
    for fmt in ("table", "markdown", "json", "csv"):
        assert main(["leaderboard", "--workdir", w, "--format", fmt]) == 0
        text = capsys.readouterr().out
        if fmt == "csv":
            assert text == printed
        if fmt == "json":
            board = json.loads(text)
            assert [r["backbone"] for r in board["calibration"]] == ["oracle", "semantic"]
        if fmt == "markdown":
            assert "| backbone" in text and "## Calibration" in text
    assert (Path(w) / "leaderboard.md").read_text() == render_leaderboard(json.loads((Path(w) / "results.json").read_text()), "markdown")
    assert main(["leaderboard", "--workdir", str(tmp_path / "nothing")]) == 2
    assert "no results.json" in capsys.readouterr().err


def test_plugin_load_failures_head_the_leaderboard(tmp_path, monkeypatch, capsys, fake_entry_points):
    from helpers import FakeEntryPoint
    from uisbench.cli import main

    monkeypatch.delenv("UISBENCH_STRICT_PLUGINS", raising=False)
    broken = FakeEntryPoint("vendor-vit", error=ImportError("no module named vendor_kernels"), dist="uisbench-vendor")
    fake_entry_points([_EntryPoint(), broken], keep_real=False)
    monkeypatch.setenv("UISBENCH_REGISTRY", fakes.write_registry(tmp_path / "registry.yaml"))
    w = tmp_path / "w"
    with pytest.warns(UserWarning, match="vendor-vit"):
        assert main(["bench", "--all", "--students", "none", "--workdir", str(w), "--no-report"]) == 0
    printed = capsys.readouterr().out
    header = printed.split("backbone")[0]
    assert "vendor-vit" in header and "vendor_kernels" in header
    results = json.loads((w / "results.json").read_text())
    assert [f["name"] for f in results["provenance"]["plugin_failures"]] == ["vendor-vit"]
    assert "vendor-vit" in (w / "leaderboard.md").read_text().split("| backbone")[0]


def test_bench_help_does_not_import_torch():
    code = "import sys\nfrom uisbench.cli import main\ntry:\n    main(['bench', '--help'])\nexcept SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'torch imported'\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--force" in proc.stdout and "--skip-bad-images" in proc.stdout


# ---------------------------------------------------------------------------------------------
# Subprocess runs: fakes installed as a distribution on PYTHONPATH, the CLI as users run it.
# ---------------------------------------------------------------------------------------------


def _env(tmp_path, **registry):
    return fakes.cli_env(tmp_path, **registry)


@pytest.mark.slow
def test_torchrun_two_gloo_ranks_match_one_process(tmp_path):
    env = _env(tmp_path)
    common = ["bench", "--backbones", "oracle,semantic,pixels", "--device", "cpu", "--no-report", "--batch-size", "2", "--format", "json"]
    torchrun = Path(sys.executable).with_name("torchrun")
    two = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "uisbench", *common,
                          "--workdir", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    r1 = _bench(tmp_path, "one", backbones=["oracle", "semantic", "pixels"], batch_size=2)  # one process
    r2 = json.loads((tmp_path / "two" / "results.json").read_text())
    assert r2["run"]["world_size"] == 2 and r1["run"]["world_size"] == 1
    assert _values(r1) == _values(r2)
    assert r2["run"]["computed"] == r1["run"]["computed"]
    assert (tmp_path / "two" / "logs").exists() is False or not list((tmp_path / "two" / "logs").glob("*.log"))


@pytest.mark.slow
def test_killed_during_student_resumes_with_the_same_results(tmp_path):
    students = {"student": {"plugin": "fake-student", "epochs": 4, "sleep": 0.5}}
    env = _env(tmp_path, students=students)
    cmd = [sys.executable, "-m", "uisbench", "bench", "--backbones", "pixels", "--no-report", "--workdir", str(tmp_path / "w")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list((tmp_path / "w" / "cache" / "student").glob("*/ckpt-0.json")):
            assert proc.poll() is None, "bench ended before the student checkpointed"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    cache = tmp_path / "w" / "cache"
    assert _tmp_files(cache) == []
    assert not list(cache.glob("student/*/summary.json")) and not (tmp_path / "w" / "results.json").exists()
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    r = json.loads((tmp_path / "w" / "results.json").read_text())
    assert r["run"]["computed"]["features"] == 0 and r["run"]["computed"]["student"] == 1
    assert _values(r) == _values(_bench(tmp_path, "ref", registry={"students": students}, backbones=["pixels"]))


# ---------------------------------------------------------------------------------------------
# Acceptance: the real built-in plugins end to end on a tiny synthetic set (CPU): the shipped
# registry's oracle-instance, oracle-semantic, pixels, ncut and kmeans entries, a tiny Mask R-CNN.
# ---------------------------------------------------------------------------------------------

ACCEPTANCE_REGISTRY = """\
version: 1
datasets:
  tiny-synth: {plugin: synth-instances, train_images: 8, val_images: 6}
students:
  tiny-maskrcnn: {plugin: maskrcnn, iterations: 6, batch_size: 2, warmup_iters: 2, checkpoint_every: 2, fpn_channels: 32,
                  representation_size: 64, mask_head_channels: 32, rpn_post_nms_top_n_train: 200,
                  box_batch_size_per_image: 64, predict_batch_size: 4}
bench:
  backbones: [oracle-instance, oracle-semantic, pixels]
  maskers: [ncut, kmeans]
  students: [tiny-maskrcnn]
  metrics: [coco, instance-awareness, cost, count-error]
  dataset: tiny-synth
"""


@pytest.mark.slow
def test_acceptance_real_plugins_rank_cache_schema_and_kill_resume(tmp_path):
    import shutil

    registry = tmp_path / "acceptance.yaml"
    registry.write_text(ACCEPTANCE_REGISTRY)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --finetune none: the shipped bench's few-label stage has its own acceptance test and kill matrix
    cmd = [sys.executable, "-m", "uisbench", "bench", "--registry", str(registry), "--device", "cpu", "--no-report", "--finetune", "none"]
    a = tmp_path / "a"
    first = subprocess.run([*cmd, "--workdir", str(a)], env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads((a / "results.json").read_text())
    assert validate_results(results) == []
    cells = {(c["backbone"], c["masker"]): c for c in results["cells"]}
    for masker in ("ncut", "kmeans"):
        def pm(backbone, metric, value, masker=masker):
            return cells[(backbone, masker)]["pseudo_masks"]["metrics"][metric]["values"][value]

        for other in ("oracle-semantic", "pixels"):
            assert pm("oracle-instance", "coco", "AP50mask") > pm(other, "coco", "AP50mask"), (masker, other)
            assert pm("oracle-instance", "instance-awareness", "recall_multi") > pm(other, "instance-awareness", "recall_multi"), (masker, other)
    # frozen-ssl students refuse calibration backbones: skipped, pseudo-mask numbers kept; pixels trains one
    assert cells[("oracle-instance", "ncut")]["status"] == "skipped"
    assert cells[("pixels", "ncut")]["student_stage"]["status"] == "ok"
    assert results["primary_metric"]["stage"] == "student"

    again = subprocess.run([*cmd, "--workdir", str(a)], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = json.loads((a / "results.json").read_text())
    assert rerun["run"]["computed"] == {"features": 0, "pseudo-masks": 0, "student": 0, "finetune": 0, "metrics": 0}
    assert rerun["run"]["built"] == []
    assert _values(rerun) == _values(results)

    # Kill during the student stage (at its first checkpoint), rerun: same results as uninterrupted.
    b = tmp_path / "b"
    shutil.copytree(a / "cache", b / "cache", ignore=lambda d, names: ["student", "metrics"] if d.endswith("cache") else [])
    proc = subprocess.Popen([*cmd, "--workdir", str(b)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not list((b / "cache" / "student").glob("*/maskrcnn-checkpoint.pt")):
            assert proc.poll() is None, "bench ended before the student checkpointed"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert _tmp_files(b / "cache") == [] and not (b / "results.json").exists()
    resumed = subprocess.run([*cmd, "--workdir", str(b)], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = json.loads((b / "results.json").read_text())
    assert final["run"]["computed"]["features"] == 0 and final["run"]["computed"]["pseudo-masks"] == 0
    assert _values(final) == _values(results)


@pytest.mark.gpu
def test_bench_on_cuda_matches_cpu(tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cpu = _bench(tmp_path, "cpu", device="cpu")
    cuda = _bench(tmp_path, "cuda", device="cuda", report=True)
    assert cuda["run"]["device"] == "cuda" and cuda["provenance"]["gpu"]
    assert _values(cuda) == _values(cpu)
    timings = _cell(cuda, "pixels")["timings"]["features"]
    assert timings["device"] == "cuda" and timings["peak_gpu_mb"] is not None
    assert validate_results(cuda) == []


def test_feature_coverage_of_padded_grids():
    """The patch-grid geometry lives on Preprocessing: a 100 x 70 image padded into a 64 px frame with
    16 px patches has content 64 x 45 px, so 3 patch rows (48 px) hold it, the last one partly."""
    prep = uisbench.Preprocessing((0, 0, 0), (1, 1, 1), 64, 16, "pad")
    assert prep.content_size(70, 100) == (45, 64)
    assert prep.content_grid(70, 100) == (3, 4)
    assert prep.coverage(70, 100) == (45 / 48, 1.0)
    square = uisbench.Preprocessing((0, 0, 0), (1, 1, 1), 64, 16, "square")
    assert square.coverage(70, 100) == (1.0, 1.0) and square.content_grid(70, 100) == (4, 4)


# ---------------------------------------------------------------------------------------------
# What the leaderboard ranks by, intervals, seeds
# ---------------------------------------------------------------------------------------------


def test_rank_by_a_renamed_metric_entry_and_its_headline_columns(tmp_path, capsys):
    registry = {"metrics": {"mask-ap": {"plugin": "fake-recall"}}, "bench": {**fakes.REGISTRY["bench"], "metrics": ["mask-ap"]}}
    out = _bench(tmp_path, registry=registry, backbones=["pixels"], students=[], rank_by="mask-ap.APmask")
    assert out["primary_metric"] == {"stage": "pseudo-masks", "metric": "mask-ap", "value": "APmask"}
    board = render_leaderboard(out, "csv").splitlines()
    assert board[0].startswith("rank,backbone,masker,pm AP50mask,pm APmask,") and "pm APmask ci low" in board[0]
    # the progress line of each cell shows the value the run ranks by, whatever the entry is called
    shown = f"[ok] pixels / groups pseudo-masks mask-ap.APmask={_cell(out, 'pixels', student=None)['pseudo_masks']['metrics']['mask-ap']['values']['APmask']:.3f} ["
    assert shown in capsys.readouterr().err
    _bench(tmp_path, "w3", registry=registry, backbones=["pixels"], students=[])
    assert "[ok] pixels / groups pseudo-masks mask-ap.AP50mask=" in capsys.readouterr().err  # default: first headline
    with pytest.raises(uisbench.ConfigError, match="metric entry 'coco' is not in this run"):
        _bench(tmp_path, "w2", registry=registry, backbones=["pixels"], students=[], rank_by="coco.APmask")
    assert "[ok]" not in capsys.readouterr().err  # refused before any cell ran


def test_a_vendor_metric_shows_in_the_leaderboard_and_can_rank(tmp_path):
    """The example plugin's metric (installed with the test extras) next to the fakes'."""
    host = uisbench.host.load_plugins(plugins=[("fakes", fakes)], strict=True)
    metrics = {"coco": {"plugin": "fake-recall"}, "masks": {"plugin": "example-masks-per-image"}}
    path = fakes.write_registry(tmp_path / "registry.yaml", metrics=metrics)
    reg = uisbench.host.load_registry([path], host, include_default=False)
    options = BenchOptions(workdir=tmp_path / "w", backbones=["oracle", "pixels"], students=[], metrics=["coco", "masks"],
                           rank_by="masks.masks_per_image", report=False)
    out = run_bench(host, reg, options)
    table = render_leaderboard(out, "table")
    assert "pm masks_per_image ↓" in table and out["ranking"]["higher_is_better"] is False
    values = [r["value"] for r in out["ranking"]["rows"] + out["ranking"]["calibration"]]
    assert all(v is not None for v in values)


def test_intervals_seeds_and_ties_within_noise(tmp_path):
    out = _bench(tmp_path, backbones=["oracle", "semantic", "pixels"], seeds=2, bootstrap=50)
    pm = _cell(out, "oracle")["pseudo_masks"]["metrics"]["coco"]
    lo, hi = pm["ci"]["AP50mask"]
    assert lo <= pm["values"]["AP50mask"] <= hi and "bootstrap" not in pm  # draws stay out of results.json
    student = _cell(out, "pixels")["student_stage"]["metrics"]["coco"]
    assert student["seeds"]["n"] == 2 and len(student["seeds"]["values"]["AP50mask"]) == 2
    ranking = out["ranking"]
    assert ranking["seeds"] == 2 and ranking["bootstrap"] == 50 and out["provenance"]["seeds"]["repeats"] == 2
    assert [r["id"] for r in ranking["calibration"]] == ["oracle/groups/student", "semantic/groups/student"]
    assert validate_results(out) == []


def test_within_noise_is_a_paired_bootstrap_difference():
    from uisbench.bench.stats.uncertainty import rank_rows

    shared = [0.1 * (i % 7) for i in range(100)]  # image noise both rows share (paired draws)
    rows = [
        {"id": "a", "value": 0.50, "draws": [0.5 + v for v in shared], "tiebreak": "a"},
        {"id": "b", "value": 0.45, "draws": [0.45 + v for v in shared], "tiebreak": "b"},  # always 0.05 below a
        {"id": "c", "value": 0.44, "draws": [0.44 + v + (0.05 if i % 2 else -0.05) for i, v in enumerate(shared)], "tiebreak": "c"},
    ]
    ranked = rank_rows(rows, higher_is_better=True)
    assert [r["id"] for r in ranked] == ["a", "b", "c"]
    assert [r["within_noise_of_previous"] for r in ranked] == [None, False, True]
    assert rank_rows(rows, higher_is_better=False)[0]["id"] == "c"


def test_a_300_detection_dataset_refuses_100_detection_metrics_and_students(tmp_path):
    """LVIS keeps 300 detections per image: the metric and student entries must follow, or be refused."""
    host = uisbench.host.load_plugins(plugins=[("fakes", fakes)], load_entry_points=False, strict=True)

    class Protocol300:
        @uisbench.hookimpl
        def uisbench_metrics(self):
            yield uisbench.MetricSpec(name="fake-recall-n", description="Fake recall with max_dets.", factory=lambda max_dets: fakes.Recall(),
                                      params=(uisbench.Param("max_dets", "int", 100),))

        @uisbench.hookimpl
        def uisbench_students(self):
            yield uisbench.StudentSpec(name="fake-student-n", description="Fake student with max_detections.",
                                       factory=lambda backbone=None, max_detections=100: fakes.Student(backbone),
                                       params=(uisbench.Param("max_detections", "int", 100),))

    host.register(Protocol300(), "protocol300")
    original = fakes.Shapes.__init__

    def shapes_300(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.max_dets = 300

    registry = {"metrics": {"ap": {"plugin": "fake-recall-n"}, "ap-300": {"plugin": "fake-recall-n", "max_dets": 300}},
                "students": {"capped": {"plugin": "fake-student-n"}, "lvis": {"plugin": "fake-student-n", "max_detections": 300}}}
    reg = uisbench.host.load_registry([fakes.write_registry(tmp_path / "registry.yaml", **registry)], host, include_default=False)
    fakes.Shapes.__init__ = shapes_300
    try:
        out = run_bench(host, reg, BenchOptions(workdir=tmp_path / "w", backbones=["pixels"], students=["capped", "lvis"],
                                                metrics=["ap", "ap-300"], report=False))
    finally:
        fakes.Shapes.__init__ = original
    capped, lvis = _cell(out, "pixels", student="capped"), _cell(out, "pixels", student="lvis")
    pm = capped["pseudo_masks"]["metrics"]
    assert pm["ap"]["status"] == "skipped" and "use metric entry 'ap-300'" in pm["ap"]["reason"]
    assert pm["ap-300"]["status"] == "ok"
    assert capped["status"] == "skipped" and "max_detections: 300" in capped["reason"]
    assert lvis["student_stage"]["status"] == "ok" and lvis["status"] == "ok"


TORCHRUN_REGISTRY = """\
version: 1
datasets:
  tiny-synth: {plugin: synth-instances, train_images: 4, val_images: 6, size: 64}
backbones:
  tiny-oracle-instance: {plugin: oracle, instance_weight: 3.0, noise: 0.05, size: 64, patch_size: 8}
  tiny-oracle-semantic: {plugin: oracle, instance_weight: 0.0, noise: 0.05, size: 64, patch_size: 8}
  tiny-pixels: {plugin: pixels, size: 64, patch_size: 8}
bench:
  backbones: [tiny-oracle-instance, tiny-oracle-semantic, tiny-pixels]
  maskers: [ncut, kmeans]
  students: []
  metrics: [coco, instance-awareness, count-error]
  dataset: tiny-synth
  bootstrap: 20
"""


@pytest.mark.slow
def test_torchrun_with_the_real_built_ins_matches_one_process(tmp_path):
    """The shards claim with real plugins: oracle and pixels backbones, ncut and kmeans, coco and
    instance-awareness; 2 gloo ranks give every value of one process, intervals included."""
    registry = tmp_path / "real.yaml"
    registry.write_text(TORCHRUN_REGISTRY)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["bench", "--registry", str(registry), "--device", "cpu", "--no-report", "--batch-size", "2", "--format", "json"]
    torchrun = Path(sys.executable).with_name("torchrun")
    two = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "uisbench", *common,
                          "--workdir", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "uisbench", *common, "--workdir", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    r1, r2 = (json.loads((tmp_path / w / "results.json").read_text()) for w in ("one", "two"))
    assert r2["run"]["world_size"] == 2 and r1["run"]["world_size"] == 1
    values = _values(r1)
    assert len(values) == 6 * 3 and all(status == "ok" for status, _ in values.values())
    assert values == _values(r2)
    intervals = {(c["backbone"], c["masker"]): c["pseudo_masks"]["metrics"]["coco"]["ci"] for c in r1["cells"]}
    assert intervals == {(c["backbone"], c["masker"]): c["pseudo_masks"]["metrics"]["coco"]["ci"] for c in r2["cells"]}
    assert r1["ranking"]["rows"] == r2["ranking"]["rows"]


def test_a_new_stage_is_one_class(tmp_path):
    """The stage contract in use: a per-image stage counting each image's pseudo-masks gets keys,
    caching, resume and --force from the runner without a line of engine code."""
    from uisbench.bench._run import open_pipeline
    from uisbench.bench._stage import Stage

    class MaskCounts(Stage):
        name = "pseudo-masks"  # reuses a --force name; a real stage adds its own to STAGES
        per_image = True

        def __init__(self, pipeline, backbone, masker):
            super().__init__(pipeline.ctx, f"{backbone} / {masker} mask counts", "val")
            self.pipeline, self.masks = pipeline, pipeline.pseudo_masks(backbone, masker, "val")

        address = property(lambda self: ("mask-counts", self.masks.address))

        def identity(self):
            return {"counts": 1}

        def inputs(self):
            return [self.masks]

        def image_ids(self):
            return self.pipeline.data.usable("val")

        def compute(self, key, chunks):
            predictions = self.pipeline.run(self.masks).summary["predictions"]
            for image_id in [i for chunk in chunks for i in chunk]:
                self.ctx.cache.write(self.item_path(key, image_id), {"count": len(predictions[str(image_id)])})
            return sum(len(c) for c in chunks)

        def finish(self, key, reports):
            counts = {i: self.ctx.cache.read(self.item_path(key, i))["count"] for i in self.image_ids()}
            return {"key": key, "items": self.item_sizes(key, self.image_ids()), "computed": sum(reports), "counts": counts}

    def run(**options):
        host, reg = _setup(tmp_path)
        pipeline = open_pipeline(host, reg, BenchOptions(workdir=tmp_path / "w", backbones=["oracle"], students=[], **options))
        try:
            return pipeline.run(MaskCounts(pipeline, "oracle", "groups")).summary
        finally:
            pipeline.close()

    first = run()
    assert first["computed"] == 6 and sorted(first["counts"].values()) == [1, 1, 2, 2, 3, 3]  # 1-3 squares per image
    assert run() == first  # cached: nothing recomputed
    assert run(force=frozenset({"pseudo-masks"}))["computed"] == 6


def test_label_efficiency_curves_and_labels_saved(tmp_path):
    """The few-label stage with the fakes: the fine-tuned fake needs 4 labels from scratch, 2 from
    the pseudo-mask student; curves, nested recorded subsets and labels saved follow."""
    registry = {"finetune": {"fk": {"budgets": [0, 2, 4], "selection": ["random", "uncertain"], "student": {"finetuned": True}}}}
    out = _bench(tmp_path, registry=registry, backbones=["pixels"], finetune="fk")
    cell = _cell(out, "pixels")
    part = cell["finetune"]
    assert part["status"] == "ok" and part["budgets"] == [0, 2, 4] and part["candidates"] == 6
    random_points = {(p["init"], p["k"]): p for p in part["points"] if p["selection"] == "random"}
    assert set(random_points) == {("pseudo", 0), ("pseudo", 2), ("pseudo", 4), ("baseline", 2), ("baseline", 4)}
    small, large = random_points[("baseline", 2)]["subsets"][0], random_points[("baseline", 4)]["subsets"][0]
    assert large[:2] == small and len(set(large)) == 4  # nested, recorded
    efficiency = out["label_efficiency"]
    assert (efficiency["metric"], efficiency["value"]) == ("coco", "AP50mask")
    row = next(r for r in efficiency["rows"] if r["selection"] == "random")
    pseudo = {p["k"]: p["mean"] for p in row["pseudo"]}
    baseline = {p["k"]: p["mean"] for p in row["baseline"]}
    assert pseudo[2] == pseudo[4] == baseline[4] == 1.0 and baseline[2] < 1.0 and pseudo[0] < 1.0
    assert row["labels_saved_text"] == "<=2"  # the baseline's 2 labels already reach the zero-shot student
    # each point of the pseudo curve in baseline labels: 2 labels on top of pseudo-masks are worth the baseline's 4
    assert [(p["k"], p["baseline_k_text"]) for p in row["pseudo"]] == [(0, "<=2"), (2, "4.0"), (4, "4.0")]
    assert out["run"]["computed"]["finetune"] == 8  # random baseline shared by both inits' maskers; 2 x 2 x 2
    assert validate_results(out) == []
    again = _bench(tmp_path, registry=registry, backbones=["pixels"], finetune="fk")
    assert again["run"]["computed"]["finetune"] == 0 and again["label_efficiency"] == efficiency
