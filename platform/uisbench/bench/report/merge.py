"""One leaderboard from several runs: `platform leaderboard --merge RUN... --out DIR`.

(In report/: presentation, outside every code fingerprint; it reads finished results, and asks
``bench/_rescore`` for the per-draw values it recomputes from saved predictions, see below.)

A keeper who runs the matrix on several machines gets several results.json files. Their cells are
ranked together only when the runs measured the same thing, as results.json records it (the
*basis*): the dataset (plugin, parameters, split fingerprints and image counts: the images and
annotations themselves), the primary metric, each metric entry (plugin, version, parameters,
distribution version), the bench seed, seeds and bootstrap draws, uisbench's major version and the
shipped registry file (masker and student entries are not in results.json: the registry that
defines them is compared instead). The first run given is the reference: a run whose basis differs
is kept apart, each of its cells listed with the difference, never ranked.

The same cell in two comparable runs: the newer run (``created``) wins and both are recorded in
merge.json.

Intervals and ``≈`` marks. Comparable runs share their bootstrap draws (the same seed, count and
images give the same resamples), but results.json does not hold the per-draw values the paired test
needs. A run given as its work directory holds them in another form: its saved predictions, from
which ``bench/_rescore.recompute_run`` recomputes each row's ranking metric on every draw with the
keeper's installed dataset and metric plugins, exactly as the bench did. Where both rows of a pair
(a row and the row above it in the merged order) have recomputed per-draw values, drawn from the
same resamples, the mark is decided by the single-run rule itself (``stats.uncertainty.rank_rows``),
so a merge of one run's rows gives that run's marks; such a row's interval is recomputed too.
Elsewhere (a run given as results.json alone, or whose cache or dataset cannot be read here, or a
ranking metric that reads more than predictions and ground truth) the interval is the row's own
run's, and the mark is kept only where the row above in the merged order is the row above in its
own run, where its paired test was made, else left undecided (``null``), never guessed. merge.json
says for each mark which of the three it is (``marks``), and for each run whether its per-draw
values were recomputed (``runs[].recomputed``) or why not.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from ..stats.ranking import _result
from ..stats.uncertainty import rank_rows
from .leaderboard import _cell_id, render

__all__ = ["basis", "compare", "merge_runs", "write_merged"]


def _major(version: str | None) -> str | None:
    return None if not version else str(version).split(".")[0]


def basis(results: dict[str, Any]) -> dict[str, Any]:
    """What must agree for two runs' cells to be ranked together, by name (see the module docstring)."""
    dataset = results.get("dataset") or {}
    ranking = results.get("ranking") or {}
    provenance = results.get("provenance") or {}
    files = ((provenance.get("registry") or {}).get("files") or [{}])
    return {
        "dataset plugin": dataset.get("plugin"),
        "dataset parameters": dataset.get("params"),
        "dataset splits (fingerprint, images)": {
            split: [info.get("fingerprint"), info.get("images")] for split, info in sorted((dataset.get("splits") or {}).items())
        },
        "primary metric": results.get("primary_metric"),
        "metric entries": {
            name: {k: m.get(k) for k in ("plugin", "version", "params", "distribution_version")}
            for name, m in sorted((results.get("metrics") or {}).items())
        },
        "bench seed": (results.get("run") or {}).get("seed"),
        "seeds": ranking.get("seeds"),
        "bootstrap": ranking.get("bootstrap"),
        "uisbench major version": _major(provenance.get("uisbench")),
        "shipped registry (sha256)": files[0].get("sha256") if files else None,
    }


def compare(reference: dict[str, Any], other: dict[str, Any]) -> list[str]:
    """The differences of ``other``'s basis from ``reference``'s, one line each (empty: comparable)."""
    a, b = basis(reference), basis(other)
    out = []
    for key in a:
        if a[key] == b[key]:
            continue
        if isinstance(a[key], dict) and isinstance(b[key], dict):
            names = sorted(set(a[key]) | set(b[key]), key=str)
            parts = [f"{n}: {json.dumps(a[key].get(n), sort_keys=True)} vs {json.dumps(b[key].get(n), sort_keys=True)}"
                     for n in names if a[key].get(n) != b[key].get(n)]
            out.append(f"{key} differ ({'; '.join(parts)})")
        else:
            out.append(f"{key} differs ({json.dumps(a[key], sort_keys=True)} vs {json.dumps(b[key], sort_keys=True)})")
    return out


def _load(path: str | Path) -> tuple[str, dict[str, Any]]:
    from .. import load_results

    p = Path(path)
    return str(p / "results.json" if p.is_dir() else p), load_results(p)


def _rank_value(cell: dict[str, Any], ranking: dict[str, Any]) -> float | None:
    result = _result(cell, ranking["stage"], ranking.get("metric") or "")
    return (result.get("values") or {}).get(ranking.get("value")) if result.get("status") == "ok" else None


def merge_runs(paths: list[str | Path], host: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(results, record)``: one results document (schema of results.json) holding the cells of every
    run comparable with the first, and ``record`` (merge.json): each run, its differences from the
    first, which run each cell comes from and what it replaced, the cells kept apart, and how each
    ``≈`` mark was decided. ``host``: the plugins that recompute per-draw values from work
    directories (default: the installed ones, loaded only when a run has a cache)."""
    from ...errors import ConfigError

    if len(paths) < 2:
        raise ConfigError("leaderboard --merge: give at least two work directories or results.json files.")
    runs = [_load(p) for p in paths]
    ref_path, reference = runs[0]
    record: dict[str, Any] = {"reference": ref_path, "runs": [], "cells": {}, "apart": []}
    merged = copy.deepcopy(reference)
    chosen: dict[str, tuple[dict[str, Any], str, dict[str, Any]]] = {}  # cell id -> (cell, run path, its results)
    for path, results in runs:
        differences = [] if results is reference else compare(reference, results)
        provenance = results.get("provenance") or {}
        record["runs"].append({
            "path": path, "created": results.get("created"), "uisbench": provenance.get("uisbench"),
            "git": provenance.get("git"), "hardware": (results.get("run") or {}).get("hardware"),
            "cells": len(results.get("cells") or []), "comparable": not differences, "differences": differences,
        })
        if differences:
            for cell in results.get("cells") or []:
                record["apart"].append({"id": _cell_id(cell), "run": path, "status": cell.get("status"),
                                        "value": _rank_value(cell, results.get("ranking") or {}), "reason": "; ".join(differences)})
            continue
        for cell in results.get("cells") or []:
            cid = _cell_id(cell)
            mine = {"run": path, "created": results.get("created"), "key": (cell.get("pseudo_masks") or {}).get("key")}
            if cid in chosen:
                old_cell, old_path, old_results = chosen[cid]
                older = {"run": old_path, "created": old_results.get("created"), "key": (old_cell.get("pseudo_masks") or {}).get("key")}
                # ISO-8601 UTC timestamps order as text; equal ones: the later argument wins
                if str(results.get("created") or "") >= str(old_results.get("created") or ""):
                    chosen[cid] = (cell, path, results)
                    record["cells"][cid] = {**mine, "replaced": record["cells"][cid].get("replaced", []) + [older]}
                else:
                    record["cells"][cid].setdefault("replaced", []).append(mine)
                entry = record["cells"][cid]
                keys = {entry["key"], *(r["key"] for r in entry["replaced"])}
                if len(keys) > 1:  # the same cell computed from other inputs or code: say so
                    entry["note"] = "the runs computed this cell differently (pseudo-mask cache keys differ)"
            else:
                chosen[cid] = (cell, path, results)
                record["cells"][cid] = {**mine, "replaced": []}
    merged["cells"] = [cell for cell, _, _ in chosen.values()]
    for cell, _, results in chosen.values():  # each row's backbone entry as its own run recorded it
        name = cell.get("backbone")
        if name and name in (results.get("backbones") or {}):
            merged.setdefault("backbones", {})[name] = results["backbones"][name]
    draws = _recomputed_draws(reference["ranking"], chosen, record, host)
    merged["ranking"], record["marks"] = _merged_ranking(reference["ranking"], chosen, draws)
    merged["label_free"] = {"agreement": []}  # pairs of rows from one run's images: not merged
    merged.pop("label_efficiency", None)
    return merged, record


def _recomputed_draws(ranking: dict[str, Any], chosen: dict[str, tuple[dict[str, Any], str, dict[str, Any]]],
                      record: dict[str, Any], host: Any) -> dict[str, list[float | None]]:
    """``{cell id: per-draw ranking values}`` recomputed from each chosen cell's own work directory;
    records in ``record["runs"]`` how many rows of each run were recomputed, or why not."""
    from .._rescore import recompute_run

    stage, metric, value = ranking.get("stage"), ranking.get("metric"), ranking.get("value")
    group_size = {False: 0, True: 0}  # contenders and calibration rows are ranked apart
    for cell, _, _ in chosen.values():
        group_size[bool(cell.get("calibration"))] += 1
    wanted: dict[str, set[tuple[str, str, str]]] = {}
    for cid, (cell, path, _) in chosen.items():
        if group_size[bool(cell.get("calibration"))] > 1:  # a row alone has no mark (and keeps its run's interval)
            wanted.setdefault(path, set()).add((cid, str(stage), str(metric)))
    out: dict[str, list[float | None]] = {}
    resamples = None  # the first recomputed run's; a run with others is not paired with it
    for run in record["runs"]:
        run["recomputed"], run["not_recomputed"] = 0, []
        only = wanted.pop(run["path"], None) if run["comparable"] else None  # pop: a run given twice is read once
        if not only or not metric:
            continue
        if not (Path(run["path"]).parent / "cache").is_dir():  # as recompute_run says, without loading plugins
            run["not_recomputed"].append("given as results.json alone (no cache/ beside it)")
            continue
        if host is None:
            from ..._manager import load_plugins

            host = load_plugins()
        again = recompute_run(run["path"], host, only=only)
        if again["reason"] or again["problems"] or again["skipped"]:
            run["not_recomputed"] += ([again["reason"]] if again["reason"] else []) + again["problems"]
            run["not_recomputed"] += [f"metric {n}: {why}" for n, why in sorted(again["skipped"].items())]
        if again["reason"]:
            continue
        if resamples is None:
            resamples = again["draws"]
        elif again["draws"] != resamples:
            run["not_recomputed"].append("its bootstrap resamples are not the other runs' (other images skipped)")
            continue
        for (cid, _, _), result in again["results"].items():
            per_draw = (result.get("bootstrap") or {}).get(value)
            if per_draw:
                out[cid] = per_draw
                run["recomputed"] += 1
    return out


def _merged_ranking(ref: dict[str, Any], chosen: dict[str, tuple[dict[str, Any], str, dict[str, Any]]],
                    draws: dict[str, list[float | None]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The reference's ranking settings over every chosen cell, and how each ``≈`` mark was decided:
    by :func:`rank_rows` where both rows have recomputed ``draws``, else from the rows' own runs."""
    out = {k: v for k, v in ref.items() if k not in ("rows", "calibration")}
    marks = []
    for group in ("rows", "calibration"):
        own: dict[str, dict[str, Any]] = {}  # cell id -> its entry and the row above in its own run
        rows = []
        for cid, (cell, _, results) in chosen.items():
            if bool(cell.get("calibration")) != (group == "calibration"):
                continue
            source = (results.get("ranking") or {}).get(group) or []
            position = next((i for i, e in enumerate(source) if e["id"] == cid), None)
            own[cid] = {"entry": source[position] if position is not None else {},
                        "above": source[position - 1]["id"] if position else None}
            rows.append({"id": cid, "value": _rank_value(cell, results.get("ranking") or ref),
                         "draws": draws.get(cid) or [], "tiebreak": cid})
        # one rule for the order and the paired test: the single run's (rows without draws get no mark here)
        ranked = rank_rows(rows, bool(ref.get("higher_is_better", True)))
        for i, entry in enumerate(ranked):
            cid = entry["id"]
            if cid not in draws:
                entry["ci"] = own[cid]["entry"].get("ci")
            if not i:
                continue
            above = ranked[i - 1]["id"]
            mark = {"id": cid, "above": above}
            if cid in draws and above in draws:
                how = "recomputed" if entry["within_noise_of_previous"] is not None else "undecided"
                why = "paired test of the recomputed per-draw values" if how == "recomputed" else \
                    "no paired test: a value, or too many of its draws, undefined"
            elif own[cid]["above"] == above:
                entry["within_noise_of_previous"] = own[cid]["entry"].get("within_noise_of_previous")
                how, why = "kept from its run", "the row above is the one its own run compared it with"
            else:
                entry["within_noise_of_previous"] = None
                how, why = "undecided", "the row above comes from another run and per-draw values were not recomputed for both"
            marks.append({**mark, "group": group, "within_noise_of_previous": entry["within_noise_of_previous"],
                          "how": how, "why": why})
        out[group] = ranked
    return out, marks


def _apart_markdown(record: dict[str, Any]) -> str:
    if not record["apart"]:
        return ""
    lines = ["", "## Not comparable with the reference run (not ranked)", "",
             f"Reference: `{record['reference']}`.", "", "| cell | run | value | why |", "|---|---|---|---|"]
    for a in record["apart"]:
        value = "-" if a["value"] is None else f"{a['value']:.3f}"
        lines.append(f"| {a['id']} | `{a['run']}` | {value} | {a['reason'].replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def write_merged(paths: list[str | Path], out: str | Path, host: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Merge ``paths`` into ``out``: results.json (merged, comparable cells), merge.json (the record),
    leaderboard.md (with the cells kept apart and why), leaderboard.csv, leaderboard.json, report.html."""
    from ...io import atomic_write_json, atomic_write_text
    from .._results import validate

    merged, record = merge_runs(paths, host)
    problems = validate(merged)
    if problems:  # a bug of the merge, not of the runs (each was validated when read)
        raise RuntimeError(f"merged results do not match results.schema.json: {problems[:3]}")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "results.json", merged)
    atomic_write_json(folder / "merge.json", record)
    header = f"Merged from {len(record['runs'])} runs ({sum(r['comparable'] for r in record['runs'])} comparable); see merge.json.\n\n"
    atomic_write_text(folder / "leaderboard.md", header + render(merged, "markdown") + _apart_markdown(record))
    atomic_write_text(folder / "leaderboard.csv", render(merged, "csv"))
    board = json.loads(render(merged, "json"))
    atomic_write_text(folder / "leaderboard.json", json.dumps({**board, "merge": record}, indent=2, default=str) + "\n")
    atomic_write_text(folder / "report.html", _report_page(merged))
    return merged, record


def _report_page(merged: dict[str, Any]) -> str:
    """report.html of the merged results: findings, leaderboard and plots; no gallery (the images
    were on the machines that ran, not here)."""
    from .findings import findings
    from .page import page
    from .plots import all_plots

    return page(merged, findings(merged), all_plots(merged), None, private=False)
