#!/usr/bin/env python3
"""Compare the numbers of two results.json files, timings and provenance aside.

    python scripts/compare_results.py runs/before/results.json runs/after/results.json [--rtol 0]

Compared: every cell's status and every metric value of every stage (pseudo-masks, student, the
backbone-level metrics, and each few-label point of the finetune stage), except the ``cost`` metric's (wall times). Prints the differences and exits 1
when any value differs by more than ``--rtol`` (relative) or a cell/metric exists in one file only.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

TIMING_METRICS = {"cost"}


def _values(results: dict[str, Any]) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    for cell in results["cells"]:
        where = (cell["backbone"] or "*", cell["masker"], str(cell.get("student")))  # "*": an ensemble's own row
        out[(*where, "status")] = cell["status"]
        for stage in ("pseudo_masks", "student_stage"):
            for metric, result in ((cell.get(stage) or {}).get("metrics") or {}).items():
                if metric in TIMING_METRICS:
                    continue
                out[(*where, stage, metric, "status")] = result.get("status")
                for name, value in (result.get("values") or {}).items():
                    out[(*where, stage, metric, name)] = value
        # the few-label points: one student-stage result per (selection, init, k)
        finetune = cell.get("finetune") or {}
        if finetune:
            out[(*where, "finetune", "status")] = finetune.get("status")
        for point in finetune.get("points") or []:
            at = (*where, "finetune", str(point.get("selection")), str(point.get("init")), f"k={point.get('k')}")
            for metric, result in (point.get("metrics") or {}).items():
                if metric in TIMING_METRICS:
                    continue
                for name, value in (result.get("values") or {}).items():
                    out[(*at, metric, name)] = value
    for backbone, row in results.get("backbones", {}).items():
        out[(backbone, "status")] = row["status"]
        for metric, result in (row.get("metrics") or {}).items():
            if metric not in TIMING_METRICS:
                for name, value in (result.get("values") or {}).items():
                    out[(backbone, "features", metric, name)] = value
    return out


def _same(a: Any, b: Any, rtol: float) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or math.isclose(a, b, rel_tol=rtol, abs_tol=0.0)
    return a == b


def compare(before: dict[str, Any], after: dict[str, Any], rtol: float = 0.0) -> list[str]:
    """One line per difference (empty: the same numbers)."""
    a, b = _values(before), _values(after)
    lines = []
    for key in sorted(set(a) | set(b), key=str):
        if key not in a:
            lines.append(f"only in the second file: {' / '.join(key)} = {b[key]!r}")
        elif key not in b:
            lines.append(f"only in the first file: {' / '.join(key)} = {a[key]!r}")
        elif not _same(a[key], b[key], rtol):
            lines.append(f"differs: {' / '.join(key)}: {a[key]!r} -> {b[key]!r}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--rtol", type=float, default=0.0, help="relative tolerance for numbers (default: exact)")
    args = parser.parse_args(argv)
    before, after = (json.loads(p.read_text(encoding="utf-8")) for p in (args.first, args.second))
    lines = compare(before, after, args.rtol)
    n = len(_values(before))
    for line in lines:
        print(line)
    print(f"{n} values compared, {len(lines)} difference(s)")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
