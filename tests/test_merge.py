"""``platform leaderboard --merge``: runs from several machines become one leaderboard; runs that measured
something else are kept apart with the difference named, never ranked; the newer of two copies of a cell
wins with both recorded; a ``≈`` mark survives only where its paired test was made."""

from __future__ import annotations

import copy
import json
import shutil

import pytest

from uisbench.bench import validate_results
from uisbench.bench.report.merge import merge_runs, write_merged
from uisbench.cli import main


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two real runs, as two machines give them: A scores pixels, B (later) pixels-16 and pixels."""
    root = tmp_path_factory.mktemp("runs")
    (root / "extra.yaml").write_text("version: 1\nbackbones:\n  pixels-16: {plugin: pixels, size: 128, patch_size: 16}\n")
    common = ["bench", "--registry", str(root / "extra.yaml"), "--maskers", "ncut", "--students", "none", "--finetune", "none", "--limit", "4",
              "--device", "cpu", "--no-report", "--format", "csv"]
    assert main([*common, "--backbones", "pixels", "--workdir", str(root / "a")]) == 0
    assert main([*common, "--backbones", "pixels-16,pixels", "--workdir", str(root / "b")]) == 0
    runs = {name: json.loads((root / name / "results.json").read_text()) for name in ("a", "b")}
    assert runs["a"]["created"] <= runs["b"]["created"]
    return root, runs


def _write(tmp_path, name, results):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(results))
    return path


def test_comparable_runs_merge_and_the_newer_cell_wins(two_runs, tmp_path, capsys):
    root, runs = two_runs
    merged, record = write_merged([root / "a", root / "b"], tmp_path / "out")
    assert validate_results(merged) == []
    ids = sorted(c["backbone"] for c in merged["cells"])
    assert ids == ["pixels", "pixels-16"] and record["apart"] == []
    assert all(r["comparable"] and r["differences"] == [] for r in record["runs"])
    pixels = record["cells"]["pixels/ncut/-"]
    assert pixels["run"].endswith("b/results.json") and [r["run"][-14:] for r in pixels["replaced"]] == ["a/results.json"]
    assert "note" not in pixels  # same code, data and parameters: the same cache key on both machines
    # ranked together, best first by the primary metric, each row with its own run's interval
    ranking = merged["ranking"]
    values = [r["value"] for r in ranking["rows"] + ranking["calibration"]]
    source = {e["id"]: e for group in ("rows", "calibration") for e in runs["b"]["ranking"][group]}
    for entry in ranking["rows"] + ranking["calibration"]:
        assert entry["value"] == source[entry["id"]]["value"] and entry["ci"] == source[entry["id"]]["ci"]
    assert len(values) == 2 and values[0] >= values[1]  # AP50mask: higher is better
    for name in ("results.json", "merge.json", "leaderboard.md", "leaderboard.csv", "leaderboard.json", "report.html"):
        assert (tmp_path / "out" / name).is_file(), name
    html = (tmp_path / "out" / "report.html").read_text()
    assert "pixels-16" in html and "pixels" in html
    assert "Merged from 2 runs (2 comparable)" in (tmp_path / "out" / "leaderboard.md").read_text()
    # the CLI prints the same leaderboard
    assert main(["leaderboard", "--merge", str(root / "a"), str(root / "b"), "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert "pixels" in out and "pixels-16" in out


EDITS = {
    "bootstrap": (lambda r: r["ranking"].update(bootstrap=r["ranking"]["bootstrap"] + 1), "bootstrap differs"),
    "seeds": (lambda r: r["ranking"].update(seeds=3), "seeds differs"),
    "bench seed": (lambda r: r["run"].update(seed=7), "bench seed differs"),
    "images": (lambda r: r["dataset"]["splits"]["val"].update(fingerprint="0" * 16), "dataset splits (fingerprint, images) differ"),
    "dataset": (lambda r: r["dataset"]["params"].update(size=256), "dataset parameters differ (size: 128 vs 256)"),
    "metric": (lambda r: r["metrics"]["coco"]["params"].update(max_dets=300), "metric entries differ (coco: "),
    "metric code": (lambda r: r["metrics"]["coco"].update(version="99"), "metric entries differ (coco: "),
    "major version": (lambda r: r["provenance"].update(uisbench="1.0.0"), 'uisbench major version differs ("0" vs "1")'),
    "registry": (lambda r: r["provenance"]["registry"]["files"][0].update(sha256="f" * 64), "shipped registry (sha256) differs"),
}


@pytest.mark.parametrize("edit", EDITS)
def test_an_incomparable_run_is_kept_apart_naming_the_difference(two_runs, tmp_path, edit):
    root, runs = two_runs
    other = copy.deepcopy(runs["b"])
    change, words = EDITS[edit]
    change(other)
    merged, record = merge_runs([root / "a", _write(tmp_path, "b", other)])
    assert [c["backbone"] for c in merged["cells"]] == ["pixels"]  # only the reference's cells ranked
    assert merged["cells"][0] == runs["a"]["cells"][0]
    assert {a["id"] for a in record["apart"]} == {"pixels/ncut/-", "pixels-16/ncut/-"}
    assert all(words in a["reason"] for a in record["apart"]), record["apart"][0]["reason"]
    assert record["runs"][1]["comparable"] is False and len(record["runs"][1]["differences"]) == 1


def test_kept_apart_rows_are_listed_with_their_reason(two_runs, tmp_path, capsys):
    root, runs = two_runs
    other = copy.deepcopy(runs["b"])
    other["ranking"]["bootstrap"] = 17
    assert main(["leaderboard", "--merge", str(root / "a"), str(_write(tmp_path, "b", other)), "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "not ranked: pixels-16/ncut/-" in err and "bootstrap differs (200 vs 17)" in err
    md = (tmp_path / "o" / "leaderboard.md").read_text()
    assert "Not comparable with the reference run" in md and "| pixels-16/ncut/- |" in md


def test_within_noise_marks_survive_only_where_the_paired_test_was_made(two_runs, tmp_path):
    """Run B ranked its two rows and marked the second ≈; merged with a run C (newer) that holds
    a third row between them, the mark of pixels has no paired test any more and is left undecided."""
    root, runs = two_runs
    b = copy.deepcopy(runs["b"])
    assert len(b["ranking"]["rows"]) == 2
    first, second = b["ranking"]["rows"]
    second["within_noise_of_previous"] = True
    merged, _ = merge_runs([_write(tmp_path, "b", b), root / "a"])
    assert [r["id"] for r in merged["ranking"]["rows"]] == [first["id"], second["id"]]
    assert merged["ranking"]["rows"][1]["within_noise_of_previous"] is True  # the same neighbour as in its run
    c = copy.deepcopy(b)
    c["created"] = "2999-01-01T00:00:00+00:00"
    middle = copy.deepcopy(next(cell for cell in c["cells"] if cell["backbone"] == "pixels"))
    middle["masker"] = "ncut-copy"
    value = (first["value"] + second["value"]) / 2 if first["value"] != second["value"] else first["value"]
    middle["pseudo_masks"]["metrics"]["coco"]["values"]["AP50mask"] = value
    c["cells"] = [middle]
    c["ranking"]["rows"] = [{"id": "pixels/ncut-copy/-", "value": value, "ci": None, "within_noise_of_previous": None}]
    merged, _ = merge_runs([_write(tmp_path, "b", b), _write(tmp_path, "c", c)])
    order = [r["id"] for r in merged["ranking"]["rows"]]
    assert order.index("pixels/ncut-copy/-") < order.index(second["id"])
    assert merged["ranking"]["rows"][order.index(second["id"])]["within_noise_of_previous"] is None


def test_fewer_than_two_runs_is_a_usage_error(two_runs, capsys):
    root, _ = two_runs
    assert main(["leaderboard", "--merge", str(root / "a")]) == 2
    assert "at least two" in capsys.readouterr().err


@pytest.fixture(scope="module")
def split_runs(tmp_path_factory):
    """Three calibration rows of distinct quality: the reference bench scores all three in one run;
    machine X scores oracle-instance and position, machine Y (later) oracle-semantic, which lands between."""
    root = tmp_path_factory.mktemp("split")
    common = ["bench", "--maskers", "ncut", "--students", "none", "--finetune", "none", "--limit", "4",
              "--device", "cpu", "--no-report", "--format", "csv"]
    for name, backbones in (("reference", "oracle-instance,oracle-semantic,position"), ("x", "oracle-instance,position"),
                            ("y", "oracle-semantic")):
        assert main([*common, "--backbones", backbones, "--workdir", str(root / name)]) == 0
    runs = {name: json.loads((root / name / "results.json").read_text()) for name in ("reference", "x", "y")}
    return root, runs


def _marks(ranking, group="calibration"):
    return [(r["id"], r["within_noise_of_previous"]) for r in ranking[group]]


def test_a_merge_of_one_run_recomputes_exactly_its_own_marks_and_intervals(split_runs, tmp_path):
    """The same run twice (its work directory and a copy from another machine): every mark is decided
    again from the recomputed per-draw values by the single-run rule, and equals the run's own."""
    root, runs = split_runs
    run = "x"
    copy_dir = tmp_path / "elsewhere"
    shutil.copytree(root / run, copy_dir)
    merged, record = merge_runs([root / run, copy_dir])
    assert _marks(merged["ranking"]) == _marks(runs[run]["ranking"]) and merged["ranking"]["rows"] == runs[run]["ranking"]["rows"] == []
    assert [r["ci"] for r in merged["ranking"]["calibration"]] == [r["ci"] for r in runs[run]["ranking"]["calibration"]]
    assert [m["how"] for m in record["marks"]] == ["recomputed"] * (len(runs[run]["ranking"]["calibration"]) - 1)
    assert record["runs"][1]["recomputed"] == len(runs[run]["cells"]) and record["runs"][1]["not_recomputed"] == []
    assert _marks(merged["ranking"])[1] == ("position/ncut/-", False)  # clearly below oracle-instance: decided


def test_rows_adjacent_only_after_merging_get_the_mark_one_run_of_both_gives(split_runs):
    """oracle-semantic (run Y) lands between X's rows: neither of its pairs was tested by a run, and
    the recomputed marks equal those of the reference bench that scored all three rows together
    (the same seed and images give the same bootstrap draws)."""
    root, runs = split_runs
    merged, record = merge_runs([root / "x", root / "y"])
    reference = runs["reference"]["ranking"]
    assert [r["id"] for r in merged["ranking"]["calibration"]] == ["oracle-instance/ncut/-", "oracle-semantic/ncut/-", "position/ncut/-"]
    assert _marks(merged["ranking"]) == _marks(reference)
    assert [m for _, m in _marks(merged["ranking"])] == [None, True, True]  # decided, not left undecided
    assert [r["ci"] for r in merged["ranking"]["calibration"]] == [r["ci"] for r in reference["calibration"]]
    assert [(m["id"], m["above"], m["how"]) for m in record["marks"]] == [
        ("oracle-semantic/ncut/-", "oracle-instance/ncut/-", "recomputed"), ("position/ncut/-", "oracle-semantic/ncut/-", "recomputed")]
    # X alone marked position False against oracle-instance: a mark belongs to its neighbour, so X's is not reused
    assert _marks(runs["x"]["ranking"])[1] == ("position/ncut/-", False)


def test_a_run_given_as_results_json_alone_keeps_the_run_rule_and_says_so(split_runs, tmp_path):
    root, runs = split_runs
    x = _write(tmp_path, "x", runs["x"])  # no cache/ beside it: no per-draw values
    merged, record = merge_runs([x, root / "y"])
    assert _marks(merged["ranking"]) == [("oracle-instance/ncut/-", None), ("oracle-semantic/ncut/-", None), ("position/ncut/-", None)]
    assert [m["how"] for m in record["marks"]] == ["undecided", "undecided"]
    assert record["runs"][0]["recomputed"] == 0 and "results.json alone" in record["runs"][0]["not_recomputed"][0]
    assert record["runs"][1]["recomputed"] == 1  # Y's row was recomputed, but its neighbours were not
    # the interval of a row that was not recomputed is its own run's
    assert merged["ranking"]["calibration"][0]["ci"] == runs["x"]["ranking"]["calibration"][0]["ci"]
    merged, record = merge_runs([x, _write(tmp_path, "x2", runs["x"])])  # one run's own pair: kept from it
    assert _marks(merged["ranking"]) == _marks(runs["x"]["ranking"]) and [m["how"] for m in record["marks"]] == ["kept from its run"]


def test_rescore_decides_a_runs_marks_again_and_catches_a_hand_edited_one(split_runs, tmp_path):
    """``--rescore`` checks ``≈`` marks with the same recomputed per-draw values: X's honest marks are
    accepted; position marked within noise of oracle-instance by hand (True for False) is named."""
    import uisbench
    from uisbench.bench._rescore import rescore_run

    root, runs = split_runs
    host = uisbench.host.load_plugins()
    honest = rescore_run(root / "x", host)
    assert honest["status"] == "accepted" and not any("≈" in n for n in honest["not_checked"]), honest
    edited = tmp_path / "x"
    shutil.copytree(root / "x", edited)
    results = copy.deepcopy(runs["x"])
    results["ranking"]["calibration"][1]["within_noise_of_previous"] = True
    (edited / "results.json").write_text(json.dumps(results))
    found = rescore_run(edited, host)
    assert found["status"] == "differs" and [(d["where"], d["submitted"], d["recomputed"]) for d in found["differences"]] == [
        ("position/ncut/- ranking", True, False)]
    assert found["differences"][0]["value"].startswith("≈ mark")
