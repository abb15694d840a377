"""``uisbench.evaluate`` from a notebook: entry names as the CLI reads them, and ``Results.ranked``
agreeing with the leaderboard table."""

from __future__ import annotations

import json

import pytest

import uisbench
from uisbench.api import Results


@pytest.fixture
def captured(monkeypatch):
    """evaluate() up to run_bench: the options it would run with, nothing computed."""
    import uisbench.bench

    seen = {}

    class Outcome(dict):
        exit_code, report_path = 0, None

    def fake(host, registry, options):
        seen["options"] = options
        return Outcome(cells=[])

    monkeypatch.setattr(uisbench.bench, "run_bench", fake)
    return seen


def test_evaluate_reads_a_string_as_the_cli_does(captured, tmp_path):
    uisbench.evaluate(backbones="pixels", maskers="kmeans, ncut", students="none", metrics="coco", workdir=tmp_path)
    options = captured["options"]
    assert options.backbones == ["pixels"] and options.maskers == ["kmeans", "ncut"]
    assert options.students == [] and options.metrics == ["coco"]
    uisbench.evaluate(backbones=["pixels"], students=[], workdir=tmp_path)
    assert captured["options"].backbones == ["pixels"] and captured["options"].students == []
    uisbench.evaluate(workdir=tmp_path)
    assert captured["options"].backbones is None  # the registry's default
    uisbench.evaluate(backbones="all", workdir=tmp_path)
    assert "pixels" in captured["options"].backbones and "oracle-instance" in captured["options"].backbones
    with pytest.raises(uisbench.ConfigError, match=r"evaluate\(backbones=...\): entry names are strings"):
        uisbench.evaluate(backbones=[3], workdir=tmp_path)
    with pytest.raises(uisbench.ConfigError, match=r"list of entry names or a comma-separated string"):
        uisbench.evaluate(students=5, workdir=tmp_path)


def _cell(backbone, masker, value, calibration=False, pretrained=True):
    return {"backbone": backbone, "masker": masker, "student": None, "calibration": calibration, "pretrained": pretrained,
            "status": "ok", "reason": None, "timings": {}, "student_stage": None,
            "pseudo_masks": {"status": "ok", "reason": None, "metrics": {"coco": {
                "status": "ok", "reason": None, "values": {"AP50mask": value}, "higher_is_better": {"AP50mask": True},
                "headline": ["AP50mask"], "ci": {"AP50mask": None if value is None else [value - 0.1, value + 0.1]}}}}}


def test_ranked_rows_are_the_tables_rows():
    from uisbench.bench import render_leaderboard

    cells = [_cell("a", "kmeans", 0.5), _cell("b", "kmeans", None), _cell("c", "kmeans", 0.2, pretrained=False),
             _cell("oracle", "kmeans", 0.9, calibration=True)]
    ranking = {"stage": "pseudo-masks", "metric": "coco", "value": "AP50mask", "higher_is_better": True, "bootstrap": 10, "seeds": 1,
               "rows": [{"id": "a/kmeans/-", "value": 0.5, "ci": [0.4, 0.6], "within_noise_of_previous": None},
                        {"id": "c/kmeans/-", "value": 0.2, "ci": [0.1, 0.3], "within_noise_of_previous": True},
                        {"id": "b/kmeans/-", "value": None, "ci": None, "within_noise_of_previous": None}],
               "calibration": [{"id": "oracle/kmeans/-", "value": 0.9, "ci": [0.8, 1.0], "within_noise_of_previous": None}]}
    data = {"cells": cells, "ranking": ranking, "primary_metric": {"stage": "pseudo-masks", "metric": "coco", "value": "AP50mask"}}
    results = Results(data)
    rows = results.ranked()
    assert [(r["rank"], r["backbone"], r["value"], r["ci_low"]) for r in rows] == [(1, "a", 0.5, 0.4), (2, "c", 0.2, 0.1), (None, "b", None, None)]
    assert rows[1]["within_noise"] is True and rows[1]["pretrained"] is False and rows[0]["stage"] == "pseudo-masks"
    assert results.ranked(calibration=True)[0]["calibration"] is True and results.ranked(calibration=True)[0]["rank"] == 1
    # the same ranks as the leaderboard table ("-" where ranked() says None)
    board = json.loads(render_leaderboard(data, "json"))
    table = [(r["rank"].split()[0], r["backbone"].rstrip("*")) for r in board["rows"]]
    assert table == [("1" if r["rank"] == 1 else "2" if r["rank"] == 2 else "-", r["backbone"]) for r in rows]
