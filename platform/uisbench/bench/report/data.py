"""What the report reads from results.json: cells by id in ranking order, a cell's numbers and
intervals at a stage, throughput, the cells that could not run, and number formatting.

Pure functions of the results dict (no pipeline, no torch): the findings, the plots and the page
share them, so each says the same thing about the same cell.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from .._sources import ENSEMBLE_ROW, cell_label

#: results.json's part of a cell per stage name
PARTS = {"pseudo-masks": "pseudo_masks", "student": "student_stage"}
#: short stage names for column titles
SHORT = {"pseudo-masks": "pm", "student": "st"}


def cell_id(cell: dict[str, Any]) -> str:
    return f"{cell['backbone'] or ENSEMBLE_ROW}/{cell['masker']}/{cell.get('student') or '-'}"


def label(cell: dict[str, Any], *, student: bool = True) -> str:
    """``backbone / masker`` (``/ student`` when it has one); an ensemble's masks by their source."""
    return cell_label(cell, student=student)


def result(cell: dict[str, Any], stage: str, metric: str) -> dict[str, Any]:
    part = cell.get(PARTS[stage]) or {}
    found = (part.get("metrics") or {}).get(metric) or {}
    return found if found.get("status", "ok") == "ok" else {}


def number(cell: dict[str, Any], stage: str, metric: str, value: str) -> float | None:
    v = (result(cell, stage, metric).get("values") or {}).get(value)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(float(v)) else None


def interval(cell: dict[str, Any], stage: str, metric: str, value: str) -> list[float] | None:
    ci = (result(cell, stage, metric).get("ci") or {}).get(value)
    return [float(ci[0]), float(ci[1])] if ci and None not in ci else None


def spread(cell: dict[str, Any], stage: str, metric: str, value: str) -> float | None:
    """Standard deviation over seeds (``--seeds N``), when there were several."""
    return ((result(cell, stage, metric).get("seeds") or {}).get("std") or {}).get(value)


@dataclass(frozen=True)
class Ranked:
    """One row of ``results["ranking"]`` with its cell."""

    cell: dict[str, Any]
    position: int
    value: float | None
    ci: list[float] | None
    within_noise: bool | None
    calibration: bool


class View:
    """results.json as the report reads it."""

    def __init__(self, results: dict[str, Any]) -> None:
        self.results = results
        self.cells: list[dict[str, Any]] = list(results.get("cells") or [])
        self.by_id = {cell_id(c): c for c in self.cells}
        ranking = results.get("ranking") or {}
        self.primary: dict[str, Any] = dict(results.get("primary_metric") or {})
        self.stage = self.primary.get("stage") or "pseudo-masks"
        self.metric = self.primary.get("metric") or ""
        self.value = self.primary.get("value") or ""
        self.higher_is_better = bool(ranking.get("higher_is_better", True))
        self.bootstrap = int(ranking.get("bootstrap") or 0)
        self.seeds = int(ranking.get("seeds") or 1)
        self.ranked: list[Ranked] = []
        for group, calib in (("rows", False), ("calibration", True)):
            for position, entry in enumerate(ranking.get(group) or [], start=1):
                cell = self.by_id.get(entry["id"])
                if cell is None or cell["status"] == "unavailable":
                    continue
                v = entry.get("value")
                v = float(v) if isinstance(v, (int, float)) and math.isfinite(float(v)) else None
                self.ranked.append(Ranked(cell, position, v, entry.get("ci"), entry.get("within_noise_of_previous"), calib))
        ranked_ids = {cell_id(r.cell) for r in self.ranked}
        for c in self.cells:  # cells the ranking does not list (an older results.json): at the end
            if cell_id(c) not in ranked_ids and c["status"] != "unavailable":
                self.ranked.append(Ranked(c, len(self.ranked) + 1, None, None, None, bool(c.get("calibration"))))

    # -- groups ---------------------------------------------------------------------------------

    @property
    def contenders(self) -> list[Ranked]:
        return [r for r in self.ranked if not r.calibration]

    @property
    def calibration(self) -> list[Ranked]:
        return [r for r in self.ranked if r.calibration]

    @property
    def maskers(self) -> list[str]:
        return list(dict.fromkeys(c["masker"] for c in self.cells))

    @property
    def students(self) -> list[str]:
        return list(dict.fromkeys(c["student"] for c in self.cells if c.get("student")))

    def unavailable(self) -> dict[str, str]:
        """Backbone -> reason, for the rows that could not run here."""
        out: dict[str, str] = {}
        for name, info in (self.results.get("backbones") or {}).items():
            if info.get("status") == "unavailable":
                out[name] = info.get("reason") or ""
        for c in self.cells:
            if c["status"] == "unavailable":
                out.setdefault(c["backbone"], c.get("reason") or "")
        return out

    def better(self, a: float, b: float) -> bool:
        return a > b if self.higher_is_better else a < b

    # -- one cell's numbers ---------------------------------------------------------------------

    def quality(self, cell: dict[str, Any]) -> tuple[float | None, list[float] | None, str]:
        """The ranking value of a cell: at the student stage when the student was scored, else at
        the pseudo-masks; with its interval and the stage it came from."""
        for stage in dict.fromkeys([self.stage, "student", "pseudo-masks"]):
            v = number(cell, stage, self.metric, self.value)
            if v is not None:
                return v, interval(cell, stage, self.metric, self.value), stage
        return None, None, self.stage

    def n_images(self) -> int | None:
        return ((self.results.get("dataset") or {}).get("splits") or {}).get("val", {}).get("images")


def images_per_s(cell: dict[str, Any], stages: tuple[str, ...]) -> float | None:
    """Throughput of ``stages`` run one after the other (``1 / sum(1 / rate)``), from the cell's
    ``timings``; ``None`` when a stage has no timing."""
    timings = cell.get("timings") or {}
    per_image = 0.0
    for stage in stages:
        rate = (timings.get(stage) or {}).get("images_per_s")
        if not rate:
            return None
        per_image += 1.0 / float(rate)
    return 1.0 / per_image if per_image > 0 else None


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        v = float(value)
        if not math.isfinite(v):
            return "nan"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.1f}"
        return f"{v:.{digits}f}"
    return str(value)


def fmt_rate(value: float | None) -> str:
    """A throughput with 3 significant digits."""
    if value is None:
        return "–"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def fmt_ci(ci: list[float] | None) -> str:
    return "" if not ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


_IMAGE_PATH = re.compile(r"(?:[A-Za-z]:\\|/|~/|\./|\.\./)?[^\s'\"<>:]*?\.(?:jpe?g|png|bmp|tiff?|webp|gif|ppm)\b", re.IGNORECASE)


class Scrubber:
    """Private reports: every text shown goes through here; image file names and the dataset's
    folders (its path parameters, skipped images' files) become ``[path]``."""

    def __init__(self, results: dict[str, Any], private: bool) -> None:
        self.private = private
        dataset = results.get("dataset") or {}
        found = {str(v) for v in (dataset.get("params") or {}).values() if isinstance(v, str) and ("/" in v or "\\" in v)}
        found |= {str(s.get("file")) for s in dataset.get("skipped_images") or [] if s.get("file")}
        self.paths = sorted((p for p in found if len(p) > 1), key=len, reverse=True)

    def __call__(self, text: Any) -> str:
        text = "" if text is None else str(text)
        if not self.private:
            return text
        for path in self.paths:
            text = text.replace(path, "[path]")
        return _IMAGE_PATH.sub("[path]", text)
