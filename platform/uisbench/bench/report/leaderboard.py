"""Leaderboard tables (table, markdown, csv, json) from results.json.

Tables follow lm-eval's ``make_table``: one row per cell, arrows from ``higher_is_better``, a status
column. Calibration backbones (oracles that read ground truth, controls such as ``position``) are listed in their own table.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from .._context import TERMINAL_WIDTH, fit_to_terminal, shorten
from .._sources import ENSEMBLE_ROW, backbone_label, masks_label

FORMATS = ("table", "markdown", "json", "csv")

_STAGES = {"pseudo-masks": ("pseudo_masks", "pm"), "student": ("student_stage", "st")}


def _stage_block(cell: dict[str, Any], stage: str) -> dict[str, Any]:
    return (cell.get(_STAGES[stage][0]) or {}).get("metrics") or {}


def _result(cell: dict[str, Any], stage: str, metric: str) -> dict[str, Any]:
    return _stage_block(cell, stage).get(metric) or {}


def _lookup(cell: dict[str, Any], stage: str, metric: str, value: str) -> tuple[float | None, bool | None, str]:
    """(value, higher_is_better, value name) of one number of a cell."""
    result = _result(cell, stage, metric)
    return (result.get("values") or {}).get(value), (result.get("higher_is_better") or {}).get(value), value


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


def _cell_id(cell: dict[str, Any]) -> str:
    return f"{cell['backbone'] or ENSEMBLE_ROW}/{cell['masker']}/{cell.get('student') or '-'}"


def headline_columns(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """``(title, stage, metric, value)`` of every headline value a metric of the run reported, per
    stage (pseudo-masks, then student), in the run's metric order: a renamed entry or a team's own
    metric shows up like the built-ins."""
    cells = results.get("cells", [])
    found: list[tuple[str, str, str]] = []
    for stage in _STAGES:
        for metric in results.get("metrics", {}):
            headline = next((_result(c, stage, metric).get("headline") for c in cells if _result(c, stage, metric).get("headline")), [])
            found += [(stage, metric, value) for value in headline]
    names = [value for _, _, value in found]
    columns = []
    for stage, metric, value in found:
        clash = sum(1 for s, _, v in found if v == value and s == stage) > 1 or names.count(value) > 2
        title = f"{_STAGES[stage][1]} {metric + '.' if clash else ''}{value}"
        columns.append((title, stage, metric, value))
    return columns


def leaderboard(results: dict[str, Any]) -> dict[str, Any]:
    """Rows of the leaderboard: ``{"columns", "rows", "calibration", "primary", "header", ...}`` in the
    order of ``results["ranking"]``; ``rank`` marks a row within noise of the one above with ``≈``."""
    cells = results.get("cells", [])
    ranking = results.get("ranking") or {}
    primary = results.get("primary_metric") or {}
    any_student = any(c.get("student") for c in cells)
    number_cols = headline_columns(results)
    rank_title = next((t for t, st, me, va in number_cols if (st, me, va) == (primary.get("stage"), primary.get("metric"), primary.get("value"))), None)
    columns = ["rank", "backbone", "masker"] + (["student"] if any_student else [])
    columns += [t for t, *_ in number_cols] + ["features img/s", "stage seconds", "status"]
    arrows = {"features img/s": " ↑", "stage seconds": " ↓"}
    for title, stage, metric, value in number_cols:
        hib = next((h for c in cells if (h := _lookup(c, stage, metric, value)[1]) is not None), None)
        arrows[title] = "" if hib is None else (" ↑" if hib else " ↓")
    by_id = {_cell_id(c): c for c in cells}
    groups: dict[str, list[dict[str, Any]]] = {"rows": [], "calibration": []}
    for group, ranked in (("rows", ranking.get("rows") or []), ("calibration", ranking.get("calibration") or [])):
        for position, entry in enumerate(ranked, start=1):
            cell = by_id[entry["id"]]
            rank = "-" if entry.get("value") is None else f"{position}{' ≈' if entry.get('within_noise_of_previous') else ''}"
            # an ensemble's masks show as their source (``vote = a/kmeans + b/kmeans``): its own row
            # has no backbone, a student row on them names the features' backbone and the masks
            row: dict[str, Any] = {"rank": rank, "backbone": backbone_label(cell), "masker": masks_label(cell)}
            if any_student:
                row["student"] = cell.get("student") or "-"
            for title, stage, metric, value in number_cols:
                result = _result(cell, stage, metric)
                row[title] = (result.get("values") or {}).get(value)
                row[f"_ci {title}"] = (result.get("ci") or {}).get(value)
                row[f"_std {title}"] = ((result.get("seeds") or {}).get("std") or {}).get(value)
            row.update(_cost_cells(cell))
            row["status"] = status_text(cell)
            row["_status"], row["_reason"], row["_id"] = cell["status"], cell.get("reason"), entry["id"]
            row["_pretrained"] = cell.get("pretrained")
            row["_within_noise"] = entry.get("within_noise_of_previous")
            groups[group].append(row)
    return {
        "columns": columns,
        "arrows": arrows,
        "rows": groups["rows"],
        "calibration": groups["calibration"],
        "primary": primary,
        "rank_column": rank_title,
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
        (f"sorted by {pm.get('stage')} {pm.get('metric')}.{pm.get('value')} ({_uncertainty_note(results)}); "
         if pm.get("metric") else "not ranked (no metric that ranks reported a value); ") +
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


def _uncertainty_note(results: dict[str, Any]) -> str:
    ranking = results.get("ranking") or {}
    seeds = int(ranking.get("seeds") or 1)
    parts = []
    if ranking.get("bootstrap"):
        parts.append(f"[95% bootstrap interval over images, {ranking['bootstrap']} draws]; ≈: within noise of the row above")
    if seeds > 1:
        parts.append(f"mean ± std over {seeds} seeds")
    return "; ".join(parts) or "no intervals"


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    return "-" if value is None else value


def _fmt_cell(row: dict[str, Any], column: str, board: dict[str, Any]) -> Any:
    """A number with its spread over seeds (``±``) and, in the ranking column, its interval."""
    text = _fmt(row.get(column))
    if row.get(column) is None:
        return text
    std = row.get(f"_std {column}")
    if std is not None:
        text += f"±{std:.3f}"
    ci = row.get(f"_ci {column}")
    if column == board.get("rank_column") and ci:
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return text


#: beside a backbone whose features come from no pretraining (random init, or no learned weights at all)
NOT_PRETRAINED = "*"
NOT_PRETRAINED_NOTE = f"{NOT_PRETRAINED} not pretrained: random initialisation or no learned weights (results.json pretrained: false)"


def rows_for_table(board: dict[str, Any], rows: list[dict[str, Any]], width: int | None) -> list[list[Any]]:
    out = []
    for r in rows:
        line = [_fmt_cell(r, c, board) + (f" {NOT_PRETRAINED}" if c == "backbone" and r.get("_pretrained") is False else "")
                for c in board["columns"]]
        if width is not None:
            line[-1] = line[-1] if len(line[-1]) <= width else line[-1][: width - 3] + "..."
        out.append(line)
    return out


def render(results: dict[str, Any], fmt: str = "table", columns: str | list[str] | None = None) -> str:
    """The leaderboard as text in ``fmt`` (table, markdown, json, csv).

    ``columns`` (table only): ``None``, a compact table within :data:`TERMINAL_WIDTH` columns (the
    ranking value with its interval first, then as many headline values as fit, the status word; the
    reasons of rows that did not run listed once below); ``"all"``; or a list of column names.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    board = leaderboard(results)
    if fmt == "json":
        return _render_json(board)
    if fmt == "csv":
        return _render_csv(board)
    if fmt == "markdown":
        return _render_markdown(board)
    return _render_terminal(board, columns)


def _tabulate(board: dict[str, Any], rows: list[dict[str, Any]], columns: list[str], tablefmt: str, width: int | None) -> str:
    from tabulate import tabulate

    view = {**board, "columns": columns}
    headers = [c + board["arrows"].get(c, "") for c in columns]
    return tabulate(rows_for_table(view, rows, width), headers=headers, tablefmt=tablefmt, disable_numparse=True)


def _render_json(board: dict[str, Any]) -> str:
    def clean(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k.lstrip("_") if k.startswith("_ci ") else k: v for k, v in r.items() if not k.startswith("_") or k.startswith("_ci ")}
                for r in rows]

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


def _render_csv(board: dict[str, Any]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    rank = board.get("rank_column")
    interval = [f"{rank} ci low", f"{rank} ci high"] if rank else []
    writer.writerow(board["columns"] + interval + ["calibration", "pretrained"])
    for group, calib in ((board["rows"], False), (board["calibration"], True)):
        for r in group:
            ci = (r.get(f"_ci {rank}") or ["", ""]) if rank else []
            writer.writerow(["" if r.get(c) is None else r.get(c) for c in board["columns"]] + list(ci)
                            + [calib, "" if r["_pretrained"] is None else r["_pretrained"]])
    return buf.getvalue()


def _render_markdown(board: dict[str, Any]) -> str:
    parts = ["# uisbench leaderboard\n", *(f"- {line}" for line in board["header"]), ""]
    parts.append(_tabulate(board, board["rows"], board["columns"], "github", None) if board["rows"] else "(no backbone rows)")
    if board["calibration"]:
        parts += ["", "## Calibration backbones (ground-truth oracles and controls: references, not contenders)\n"]
        parts.append(_tabulate(board, board["calibration"], board["columns"], "github", None))
    if any(r.get("_pretrained") is False for r in board["rows"] + board["calibration"]):
        parts += ["", NOT_PRETRAINED_NOTE.replace("*", "\\*", 1)]
    return "\n".join(parts) + "\n"


def _choose_columns(board: dict[str, Any], requested: str | list[str] | None) -> list[str]:
    from ...errors import UnknownNameError

    ids = ["rank", "backbone", "masker"] + (["student"] if "student" in board["columns"] else [])
    if requested == "all":
        return list(board["columns"])
    if requested:
        for name in requested:
            if name not in board["columns"]:
                raise UnknownNameError("leaderboard column", name, board["columns"], hint="`--columns all` shows every column.")
        return ids + [c for c in requested if c not in ids]
    rank = board.get("rank_column")
    chosen = ids + ([rank] if rank else [])
    numbers = [c for c in board["columns"] if c not in (*ids, rank, "status", "features img/s", "stage seconds")]
    for column in numbers:
        candidate = [*chosen, column, "status"]
        if _width(board, candidate) <= TERMINAL_WIDTH:
            chosen.append(column)
    return [*chosen, "status"]


def _width(board: dict[str, Any], columns: list[str]) -> int:
    rows = [{**r, "status": r["_status"]} for r in board["rows"] + board["calibration"]]
    return max((len(line) for line in _tabulate(board, rows, columns, "simple", None).splitlines()), default=0)


def _render_terminal(board: dict[str, Any], requested: str | list[str] | None) -> str:
    columns = _choose_columns(board, requested)
    compact = requested is None

    def rows(group: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**r, "status": r["_status"]} for r in group] if compact else group

    parts = [line for text in board["header"] for line in fit_to_terminal(text)] + [""]
    parts.append(_tabulate(board, rows(board["rows"]), columns, "simple", None if compact else 60) if board["rows"] else "(no backbone rows)")
    if board["calibration"]:
        parts += ["", "Calibration backbones (ground-truth oracles and controls: references, not contenders):"]
        parts.append(_tabulate(board, rows(board["calibration"]), columns, "simple", None if compact else 60))
    if any(r.get("_pretrained") is False for r in board["rows"] + board["calibration"]):
        parts += ["", NOT_PRETRAINED_NOTE]
    if compact:
        parts += _not_scored(board["rows"] + board["calibration"])
    return "\n".join(parts) + "\n"


def _first_sentence(text: str, limit: int = 90) -> str:
    """The reason's first sentence, cut at a word (with an ellipsis) when longer than ``limit``."""
    import re

    flat = " ".join(text.split())
    flat = re.sub(r"^Backbone '[^']*': ", "", flat)
    sentence = re.split(r"(?<=[.;])\s", flat, maxsplit=1)[0].rstrip(".;")
    return shorten(sentence, limit)


def _cells_named(ids: list[str]) -> str:
    """``a/b/c`` for one cell; ``a, b / c, d / e (n cells)`` (the values of each part) for several."""
    if len(ids) == 1:
        return ids[0]
    split = [i.split("/") for i in ids]
    parts = [list(dict.fromkeys(p[k] for p in split if k < len(p))) for k in range(max(map(len, split)))]
    return " / ".join(", ".join(p) for p in parts) + f" ({len(ids)} cells)"


def _not_scored(rows: list[dict[str, Any]]) -> list[str]:
    """Below the compact table: one short line per reason a row did not run (the cells that share it
    named together; per backbone when a whole row is unavailable), and the full how-to of the
    unavailable ones once."""
    lines: list[str] = []
    unavailable: dict[str, str] = {}
    grouped: dict[tuple[str, str], list[str]] = {}

    def line(status: str, name: str, reason: str) -> str:
        head = f"  {status:<11} {name}: "
        if TERMINAL_WIDTH - len(head) < 40:  # long names: the reason on its own indented line
            return head.rstrip() + "\n" + line_reason(reason)
        return head + _first_sentence(reason, TERMINAL_WIDTH - len(head))

    def line_reason(reason: str) -> str:
        return " " * 14 + _first_sentence(reason, TERMINAL_WIDTH - 14)

    for r in rows:
        if r["_status"] == "unavailable":
            # a whole row (its backbone), or one ensemble masker in every row (a member's backbone)
            ensemble = (r["_reason"] or "").startswith("a member of ensemble")
            unavailable.setdefault(f"masker {r['masker']}" if ensemble else r["backbone"], r["_reason"] or "")
        elif r["_status"] != "ok" and r["_reason"]:
            grouped.setdefault((r["_status"], r["_reason"]), []).append(r["_id"])
    lines += [line(status, _cells_named(ids), reason) for (status, reason), ids in grouped.items()]
    lines += [line("unavailable", backbone, reason) for backbone, reason in unavailable.items()]
    if not lines:
        return []
    out = ["", "Not scored here:", *lines]
    backbones = {name: reason for name, reason in unavailable.items() if not name.startswith("masker ")}
    if backbones:
        first, reason = next(iter(backbones.items()))
        out += ["", f"How to score the unavailable backbones ({first}; the others alike):"]
        out += [line for paragraph in reason.split("\n") if paragraph.strip() for line in fit_to_terminal(paragraph)]
    return out
