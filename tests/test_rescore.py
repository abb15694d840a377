"""``platform leaderboard --rescore``: a submitted run's values are recomputed from its saved
predictions with the keeper's dataset and metric plugins; a hand-edited value is caught (cell,
metric, submitted vs recomputed, exit 1), an honest run copied to another machine's path is
accepted unchanged, a run without its cache or with hostile cache files cannot be rescored."""

from __future__ import annotations

import json
import shutil

import pytest

import bench_fakes as fakes
import uisbench
from uisbench.bench import BenchOptions, run_bench
from uisbench.bench._rescore import rescore_run, same
from uisbench.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One real run (synth dataset, instance oracle + ncut, 4 images): non-zero AP with an interval."""
    root = tmp_path_factory.mktemp("rescore")
    assert main(["bench", "--backbones", "oracle-instance", "--maskers", "ncut", "--students", "none", "--finetune", "none",
                 "--limit", "4", "--device", "cpu", "--no-report", "--format", "csv", "--workdir", str(root / "a")]) == 0
    results = json.loads((root / "a" / "results.json").read_text())
    coco = results["cells"][0]["pseudo_masks"]["metrics"]["coco"]
    assert 0 < coco["values"]["AP50mask"] < 1 and coco["ci"]["AP50mask"][0] < coco["ci"]["AP50mask"][1]  # a real subject
    return root / "a"


def _copy(run_dir, tmp_path, name="elsewhere/machine-b/run"):
    """The work directory as another machine hands it over: the same files under another path."""
    target = tmp_path / name
    shutil.copytree(run_dir, target)
    return target


def _edit(workdir, change):
    path = workdir / "results.json"
    results = json.loads(path.read_text())
    change(results)
    path.write_text(json.dumps(results))
    return results


def test_same_is_a_fixed_tolerance_not_a_rounding():
    assert same(None, None) and not same(None, 0.0) and not same(0.0, None)
    assert same(0.41584158, 0.41584158 + 1e-12)  # summation-order noise
    assert not same(0.4158, 0.4168)  # a hand edit at the third decimal
    assert same(0.5, 0.5 + 9e-7) and not same(0.5, 0.5 + 2e-6)  # absolute 1e-6 below 1 ...
    assert same(1000.0, 1000.0 + 9e-4) and not same(1000.0, 1000.0 + 2e-3)  # ... relative above
    assert not same("0.5", 0.5) and not same(True, 1.0) and not same(float("nan"), float("nan"))


def test_an_honest_run_from_another_machine_is_accepted_unchanged(run_dir, tmp_path, capsys):
    other = _copy(run_dir, tmp_path)
    before = (other / "results.json").read_bytes()
    found = rescore_run(other, uisbench.host.load_plugins())
    assert found["status"] == "accepted" and found["differences"] == [] and found["problems"] == [], found
    assert found["checked"] >= 20  # coco, count-error, label-free values and intervals, and the ranking's copy
    assert any("instance-awareness" in n and "features" in n for n in found["not_checked"])  # said, not hidden
    out = tmp_path / "merged"
    assert main(["leaderboard", "--merge", str(run_dir), str(other), "--rescore", "--out", str(out), "--format", "csv"]) == 0
    err = capsys.readouterr().err
    assert err.count(": accepted (") == 2, err
    assert f"rescore {other}: not checked: metric cost: reads cost" in err  # what was not recomputed is said
    assert [r["status"] for r in json.loads((out / "rescore.json").read_text())["runs"]] == ["accepted", "accepted"]
    assert (other / "results.json").read_bytes() == before  # rescoring writes nothing into a submitted run


def test_a_hand_edited_value_is_caught_naming_cell_metric_and_both_values(run_dir, tmp_path, capsys):
    other = _copy(run_dir, tmp_path)
    honest = json.loads((run_dir / "results.json").read_text())
    true_value = honest["cells"][0]["pseudo_masks"]["metrics"]["coco"]["values"]["AP50mask"]

    def cheat(results):  # +0.001 wherever the value shows, the cached metric result too
        results["cells"][0]["pseudo_masks"]["metrics"]["coco"]["values"]["AP50mask"] += 0.001
        results["ranking"]["calibration"][0]["value"] += 0.001

    _edit(other, cheat)
    for path in (other / "cache" / "metrics").glob("*.json"):  # a careful cheat: the metric cache agrees
        cached = json.loads(path.read_text())
        if "AP50mask" in cached.get("values", {}):
            cached["values"]["AP50mask"] += 0.001
            path.write_text(json.dumps(cached))
    found = rescore_run(other, uisbench.host.load_plugins())
    assert found["status"] == "differs"
    assert [(d["where"], d["metric"], d["value"]) for d in found["differences"]] == [
        ("oracle-instance/ncut/- pseudo-masks", "coco", "AP50mask"), ("oracle-instance/ncut/- ranking", "coco", "AP50mask")]
    assert all(d["submitted"] == pytest.approx(true_value + 0.001) and d["recomputed"] == true_value for d in found["differences"])
    assert main(["leaderboard", "--merge", str(run_dir), str(other), "--rescore"]) == 1
    err = capsys.readouterr().err
    assert f"DIFFERS oracle-instance/ncut/- pseudo-masks metric coco AP50mask: submitted {true_value + 0.001!r}, recomputed {true_value!r}" in err
    assert f"rescore {run_dir}: accepted" in err  # the honest reference is still accepted


def test_an_edited_interval_is_caught(run_dir, tmp_path):
    other = _copy(run_dir, tmp_path)
    _edit(other, lambda r: r["cells"][0]["pseudo_masks"]["metrics"]["count-error"]["ci"]["count_mae"].__setitem__(1, 9.0))
    found = rescore_run(other, uisbench.host.load_plugins())
    assert [(d["metric"], d["value"], d["submitted"][1]) for d in found["differences"]] == [("count-error", "count_mae interval", 9.0)]


def test_results_json_alone_cannot_be_rescored(run_dir, tmp_path, capsys):
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(run_dir / "results.json", alone / "results.json")
    assert main(["leaderboard", "--workdir", str(alone / "results.json"), "--rescore", "--format", "csv"]) == 1
    err = capsys.readouterr().err
    assert "cannot rescore: no saved predictions" in err and "cache/ included" in err


HOSTILE = {
    "key outside": (lambda w, r: r["cells"][0]["pseudo_masks"].update(key="../../../../etc/passwd"), "is not 24 hex digits"),
    "dataset": (lambda w, r: r["dataset"]["params"].update(seed=1), "the keeper's val split is not the run's: fingerprint"),
    "metric version": (lambda w, r: r["metrics"]["coco"].update(version="99"), "metric 'coco' plugin 'coco' is version 2, the run used 99"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_a_run_that_cannot_be_checked_says_why(run_dir, tmp_path, case):
    other = _copy(run_dir, tmp_path)
    change, words = HOSTILE[case]
    _edit(other, lambda r: change(other, r))
    found = rescore_run(other, uisbench.host.load_plugins())
    assert found["status"] == "cannot rescore" and words in found["reason"], found["reason"]


def _summary(workdir):
    return next((workdir / "cache" / "pseudo-masks").glob("*/summary-*.json"))


def test_cache_files_are_untrusted_input(run_dir, tmp_path, monkeypatch):
    host = uisbench.host.load_plugins()
    # a summary that is a symbolic link out of the work directory
    other = _copy(run_dir, tmp_path, "link")
    summary = _summary(other)
    outside = tmp_path / "outside.json"
    shutil.copy(summary, outside)
    summary.unlink()
    summary.symlink_to(outside)
    assert "points outside the work directory" in rescore_run(other, host)["reason"]
    # a malformed prediction, predictions of other images, a file over the size bound
    other = _copy(run_dir, tmp_path, "bad")
    data = json.loads(_summary(other).read_text())
    first = next(k for k, v in data["predictions"].items() if v)
    good = data["predictions"][first][0]
    data["predictions"][first] = [{"image_id": int(first), "score": 1.0}]
    _summary(other).write_text(json.dumps(data))
    assert "is malformed (ValueError: not a COCO result" in rescore_run(other, host)["reason"]
    huge = {**good, "segmentation": {**good["segmentation"], "size": [100000, 100000]}}  # decoded: 10 GB
    data["predictions"][first] = [huge]
    _summary(other).write_text(json.dumps(data))
    assert "not a compressed RLE of the image's size [128, 128] (size [100000, 100000])" in rescore_run(other, host)["reason"]
    data["predictions"]["999"] = data["predictions"].pop(first)
    _summary(other).write_text(json.dumps(data))
    assert "other images than the keeper's split (not in the split: ['999']" in rescore_run(other, host)["reason"]
    monkeypatch.setattr("uisbench.bench._rescore.MAX_FILE_BYTES", 64)
    assert "over the 64-byte limit" in rescore_run(_copy(run_dir, tmp_path, "big"), host)["reason"]


def test_student_predictions_over_seeds_are_rescored(tmp_path):
    """The student stage (its own summary.json), two seeds combined as the bench combines them; a row
    that names another row's saved predictions (and copies its values) is refused."""
    host = uisbench.host.load_plugins(plugins=[("fakes", fakes)], load_entry_points=False, strict=True)
    registry = uisbench.host.load_registry([fakes.write_registry(tmp_path / "registry.yaml")], host, include_default=False)
    run_bench(host, registry, BenchOptions(workdir=tmp_path / "w", backbones=["oracle", "pixels"], seeds=2, bootstrap=20, report=False))
    borrowed = _copy(tmp_path / "w", tmp_path, "borrowed")

    def borrow(results):
        oracle, pixels = (next(c for c in results["cells"] if c["backbone"] == b) for b in ("oracle", "pixels"))
        pixels["pseudo_masks"] = oracle["pseudo_masks"]

    _edit(borrowed, borrow)
    found = rescore_run(borrowed, host)
    assert found["status"] == "cannot rescore" and found["differences"] == []  # the values do follow from the predictions
    assert "is named by cells of different backbones (oracle/groups/student, pixels/groups/student)" in found["reason"]
    other = _copy(tmp_path / "w", tmp_path)
    found = rescore_run(other, host)
    assert found["status"] == "accepted", found
    results = _edit(other, lambda r: r["cells"][0]["student_stage"]["metrics"]["coco"]["values"].__setitem__("APmask", 0.123))
    assert len(results["cells"][0]["student_stage"]["keys"]) == 2
    found = rescore_run(other, host)
    assert [(d["where"], d["metric"], d["value"], d["submitted"]) for d in found["differences"]] == [
        ("oracle/groups/student student", "coco", "APmask", 0.123)]
