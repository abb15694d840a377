"""What the leaderboard ranks by, and the ranking itself: rows in order, each value's confidence
interval, and which rows are within noise of the row above (``uncertainty.rank_rows``).

The ranking value is the registry's ``bench: rank_by:`` (``--rank-by``): ``METRIC.VALUE`` or
``STAGE.METRIC.VALUE``, e.g. ``coco.AP50mask`` or ``pseudo-masks.count-error.count_mae``; any metric
entry of the run, a team's own included. Without a stage it is the student stage when some student
was scored, else the pseudo-masks. Without ``rank_by``: the first headline value of the first metric
entry of the run that reports one at that stage, passing over descriptive metrics (``label-free``).
"""

from __future__ import annotations

from typing import Any

from ...errors import ConfigError
from .._cells import cell_id, draws_key
from .uncertainty import rank_rows

__all__ = ["parse_rank_by", "resolve_rank_by", "build_ranking"]

_PARTS = {"pseudo-masks": "pseudo_masks", "student": "student_stage"}


def _result(cell: dict[str, Any], stage: str, metric: str) -> dict[str, Any]:
    return ((cell.get(_PARTS[stage]) or {}).get("metrics") or {}).get(metric) or {}


def parse_rank_by(text: str | None, metrics: list[str]) -> tuple[str | None, str | None, str | None]:
    """``(stage or None, metric, value)`` of ``METRIC.VALUE`` or ``STAGE.METRIC.VALUE``, checked against
    the run's metric entries (all ``None`` without ``text``)."""
    if not text:
        return None, None, None
    parts = text.split(".")
    if len(parts) not in (2, 3):
        raise ConfigError(f"--rank-by {text!r}: use METRIC.VALUE or STAGE.METRIC.VALUE, e.g. coco.AP50mask.")
    stage, metric, value = parts if len(parts) == 3 else (None, *parts)
    if stage not in (None, *_PARTS):
        raise ConfigError(f"--rank-by {text!r}: the stage is pseudo-masks or student, not {stage!r}.")
    if metric not in metrics:
        raise ConfigError(f"--rank-by {text!r}: metric entry {metric!r} is not in this run ({', '.join(metrics)}).")
    return stage, metric, value


def resolve_rank_by(text: str | None, metrics: list[str], cells: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"stage", "metric", "value"}`` of the ranking value (``metric``/``value`` ``None`` when no
    metric reports a headline value)."""
    stage, metric, value = parse_rank_by(text, metrics)
    if stage is None:
        student_ran = any((c.get("student_stage") or {}).get("status") == "ok" for c in cells)
        stage = "student" if student_ran else "pseudo-masks"
    if metric is None:
        for name in metrics:
            # a descriptive metric (label-free) is ranked by only when --rank-by names it
            headline = next((_result(c, stage, name).get("headline") for c in cells
                             if _result(c, stage, name).get("headline") and not _result(c, stage, name).get("descriptive")), None)
            if headline:
                metric, value = name, headline[0]
                break
    return {"stage": stage, "metric": metric, "value": value}


def build_ranking(cells: list[dict[str, Any]], draws: dict[tuple[str, str, str], dict[str, list[Any]]],
                  rank_by: dict[str, Any], bootstrap: int, seeds: int) -> dict[str, Any]:
    """results.json's ``ranking``: contenders and calibration rows ranked apart (see module docstring)."""
    stage, metric, value = rank_by["stage"], rank_by["metric"], rank_by["value"]
    higher_is_better = True
    for cell in cells:
        known = _result(cell, stage, metric or "").get("higher_is_better") or {}
        if value in known:
            higher_is_better = bool(known[value])
            break

    def row(cell: dict[str, Any]) -> dict[str, Any]:
        result = _result(cell, stage, metric or "")
        number = (result.get("values") or {}).get(value) if result.get("status") == "ok" else None
        per_draw = (draws.get((draws_key(cell, stage), stage, metric or "")) or {}).get(value)
        return {"id": cell_id(cell), "value": number, "draws": per_draw or [], "tiebreak": cell_id(cell)}

    return {
        **rank_by,
        "higher_is_better": higher_is_better,
        "bootstrap": int(bootstrap),
        "seeds": int(seeds),
        "rows": rank_rows([row(c) for c in cells if not c.get("calibration")], higher_is_better),
        "calibration": rank_rows([row(c) for c in cells if c.get("calibration")], higher_is_better),
    }
