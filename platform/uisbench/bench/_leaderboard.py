"""Leaderboard tables (table, markdown, csv, json) from results.json.

Tables follow lm-eval's ``make_table``: one row per cell, arrows from ``higher_is_better``, a status
column. Calibration backbones (oracles that read ground truth) are listed in their own table.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

FORMATS = ("table", "markdown", "json", "csv")

#: (column title, stage, metric, value) of the key numbers, in display order; ``*`` matches digits.
_COLUMNS: tuple[tuple[str, str, str, str], ...] = (
    ("pm AP50mask", "pseudo-masks", "coco", "AP50mask"),
    ("pm APmask", "pseudo-masks", "coco", "APmask"),
    ("pm AR@mask", "pseudo-masks", "coco", "AR*mask"),
    ("st AP50mask", "student", "coco", "AP50mask"),
    ("st APmask", "student", "coco", "APmask"),
    ("st AP50box", "student", "coco", "AP50box"),
    ("st AR@mask", "student", "coco", "AR*mask"),
    ("multi-inst recall", "pseudo-masks", "instance-awareness", "recall_multi"),
    ("single-inst recall", "pseudo-masks", "instance-awareness", "recall_single"),
    ("recall ratio", "pseudo-masks", "instance-awareness", "recall_ratio"),
    ("separability AUROC", "pseudo-masks", "instance-awareness", "separability_auroc"),
    ("pm count MAE", "pseudo-masks", "count-error", "count_mae"),
)


def _stage_block(cell: dict[str, Any], stage: str) -> dict[str, Any]:
    block = cell.get("pseudo_masks") if stage == "pseudo-masks" else cell.get("student_stage")
    return (block or {}).get("metrics") or {}


def _lookup(cell: dict[str, Any], stage: str, metric: str, value: str) -> tuple[float | None, bool | None, str]:
    """(value, higher_is_better, actual value name) of one number of a cell."""
    result = _stage_block(cell, stage).get(metric) or {}
    values = result.get("values") or {}
    name = value
    if "*" in value:
        prefix, suffix = value.split("*")
        matches = [k for k in values if k.startswith(prefix) and k.endswith(suffix) and k[len(prefix) : -len(suffix) or None].isdigit()]
        if not matches:
            return None, None, value.replace("*", "")
        name = sorted(matches, key=lambda k: int(k[len(prefix) : -len(suffix)]))[0]
    hib = (result.get("higher_is_better") or {}).get(name)
    return values.get(name), hib, name


def _cost_cells(cell: dict[str, Any]) -> dict[str, Any]:
    timings = cell.get("timings") or {}
    feats = timings.get("features") or {}
    total = sum(float(t.get("seconds") or 0.0) for t in timings.values())
    return {"features img/s": feats.get("images_per_s"), "stage seconds": round(total, 2) if timings else None}


def status_text(cell: dict[str, Any], width: int | None = None) -> str:
    if cell["status"] == "ok" or not cell.get("reason"):
        return cell["status"]
    text = f"{cell['status']}: {' '.join(cell['reason'].split())}"
    return text if width is None or len(text) <= width else text[: width - 3] + "..."


def primary_value(results: dict[str, Any], cell: dict[str, Any]) -> float | None:
    pm = results.get("primary_metric") or {"stage": "pseudo-masks", "metric": "coco", "value": "AP50mask"}
    return _lookup(cell, pm["stage"], pm["metric"], pm["value"])[0]


def leaderboard(results: dict[str, Any]) -> dict[str, Any]:
    """Rows of the leaderboard: ``{"columns", "rows", "calibration", "primary", "header"}``."""
    cells = results.get("cells", [])
    any_student = any(c.get("student") for c in cells)
    columns = ["backbone", "masker"] + (["student"] if any_student else [])
    number_cols: list[tuple[str, str, str, str]] = []
    arrows: dict[str, str] = {}
    for title, stage, metric, value in _COLUMNS:
        found = [_lookup(c, stage, metric, value) for c in cells]
        present = [
            f for f, c in zip(found, cells, strict=True) if f[2] in ((_stage_block(c, stage).get(metric) or {}).get("values") or {})
        ]
        if not present:
            continue
        name = present[0][2]
        shown = title.replace("AR@", name[:-4] if name.endswith("mask") and name.startswith("AR") else "AR@") if "AR@" in title else title
        number_cols.append((shown, stage, metric, name))
        hib = next((f[1] for f in present if f[1] is not None), None)
        arrows[shown] = "" if hib is None else (" ↑" if hib else " ↓")
    columns += [t for t, *_ in number_cols] + ["features img/s", "stage seconds", "status"]
    rows, calibration = [], []
    for cell in cells:
        row: dict[str, Any] = {"backbone": cell["backbone"], "masker": cell["masker"]}
        if any_student:
            row["student"] = cell.get("student") or "-"
        for title, stage, metric, name in number_cols:
            row[title] = _lookup(cell, stage, metric, name)[0]
        row.update(_cost_cells(cell))
        row["status"] = status_text(cell)
        row["_primary"] = primary_value(results, cell)
        row["_secondary"] = _lookup(cell, "pseudo-masks", "coco", "AP50mask")[0]
        row["_pretrained"] = cell.get("pretrained")
        (calibration if cell.get("calibration") else rows).append(row)
    for group in (rows, calibration):
        group.sort(
            key=lambda r: (
                r["_primary"] is None,
                -(r["_primary"] or 0.0),
                r["_secondary"] is None,
                -(r["_secondary"] or 0.0),
                r["backbone"],
                r["masker"],
                str(r.get("student")),
            )
        )
    primary = results.get("primary_metric") or {}
    return {
        "columns": columns,
        "arrows": {**arrows, "features img/s": " ↑", "stage seconds": " ↓"},
        "rows": rows,
        "calibration": calibration,
        "primary": primary,
        "header": _header_lines(results),
    }


def _header_lines(results: dict[str, Any]) -> list[str]:
    ds = results.get("dataset", {})
    run = results.get("run", {})
    prov = results.get("provenance", {})
    pm = results.get("primary_metric", {})
    splits = ds.get("splits", {})
    sizes = ", ".join(f"{k} {v.get('images')}" for k, v in splits.items())
    git = prov.get("git") or {}
    lines = [
        f"uisbench {prov.get('uisbench', '?')} leaderboard - dataset {ds.get('name', '?')} ({sizes}); "
        f"device {run.get('device', '?')} ({run.get('hardware', '?')}); seed {run.get('seed')}",
        f"sorted by {pm.get('stage', '?')} {pm.get('metric', '?')} {pm.get('value', '?')}; "
        f"torch {prov.get('torch')}; git {str(git.get('commit', 'n/a'))[:12]}{' (dirty)' if git.get('dirty') else ''}; "
        f"registry sha256 {str((prov.get('registry') or {}).get('sha256', ''))[:12]}",
    ]
    if ds.get("transductive"):
        lines.append(
            "transductive: the students trained on the evaluation images (the dataset's train split holds "
            "val images); student numbers are not held-out numbers"
        )
    for failure in prov.get("plugin_failures", []):
        lines.append(f"plugin load failure: {failure['name']} ({failure['distribution']} {failure['version']}): {failure['error']}")
    return lines


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    return "-" if value is None else value


def rows_for_table(board: dict[str, Any], rows: list[dict[str, Any]], width: int | None) -> list[list[Any]]:
    out = []
    for r in rows:
        line = [_fmt(r.get(c)) for c in board["columns"]]
        if width is not None:
            line[-1] = line[-1] if len(line[-1]) <= width else line[-1][: width - 3] + "..."
        out.append(line)
    return out


def render(results: dict[str, Any], fmt: str = "table") -> str:
    """The leaderboard as text in ``fmt`` (table, markdown, json, csv)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    board = leaderboard(results)
    headers = [c + board["arrows"].get(c, "") for c in board["columns"]]
    if fmt == "json":
        def clean(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]

        return json.dumps(
            {
                "primary_metric": board["primary"],
                "columns": board["columns"],
                "rows": clean(board["rows"]),
                "calibration": clean(board["calibration"]),
                "header": board["header"],
            },
            indent=2,
        )
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(board["columns"] + ["calibration", "pretrained"])
        for group, calib in ((board["rows"], False), (board["calibration"], True)):
            for r in group:
                writer.writerow(["" if r.get(c) is None else r.get(c) for c in board["columns"]] + [calib, "" if r["_pretrained"] is None else r["_pretrained"]])
        return buf.getvalue()
    from tabulate import tabulate

    markdown = fmt == "markdown"
    tablefmt = "github" if markdown else "simple"
    width = None if markdown else 60
    parts = []
    if markdown:
        parts.append("# uisbench leaderboard\n")
        parts.extend(f"- {line}" for line in board["header"])
        parts.append("")
    else:
        parts.extend(board["header"])
        parts.append("")
    parts.append(tabulate(rows_for_table(board, board["rows"], width), headers=headers, tablefmt=tablefmt, disable_numparse=True) if board["rows"] else "(no backbone rows)")
    if board["calibration"]:
        title = "Calibration backbones (read ground truth: upper bounds, not contenders)"
        parts.append("")
        parts.append(f"## {title}\n" if markdown else title + ":")
        parts.append(tabulate(rows_for_table(board, board["calibration"], width), headers=headers, tablefmt=tablefmt, disable_numparse=True))
    return "\n".join(parts) + "\n"
