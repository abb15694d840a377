"""``run_bench``: walk the matrix cell by cell, then write results.json, the leaderboard and the report."""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from typing import Any

from ._cost import combine
from ._engine import BenchOptions, Engine, StageError

__all__ = ["run_bench", "BenchOutcome"]


class BenchOutcome(dict):
    """The results dict, plus ``exit_code`` (1 when a cell or a backbone's own metrics failed, else 0)."""

    @property
    def exit_code(self) -> int:
        parts = [*self["cells"], *self.get("backbones", {}).values()]
        return 1 if any(p["status"] == "failed" for p in parts) else 0


def _say(engine: Engine, text: str) -> None:
    if engine.shard.main:
        print(text, file=sys.stderr, flush=True)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def _summary_line(cell: dict[str, Any]) -> str:
    parts = [f"[{cell['status']}]", " / ".join(x for x in (cell["backbone"], cell["masker"], cell["student"]) if x)]
    pm = (cell.get("pseudo_masks") or {}).get("metrics", {}).get("coco", {}).get("values", {})
    st = ((cell.get("student_stage") or {}).get("metrics") or {}).get("coco", {}).get("values", {})
    if pm:
        parts.append(f"pseudo-mask AP50mask={_fmt(pm.get('AP50mask'))}")
    if st:
        parts.append(f"student AP50mask={_fmt(st.get('AP50mask'))}")
    if cell.get("reason"):
        parts.append(f"({cell['reason'].strip().splitlines()[0]})")
    parts.append(f"[{cell['seconds']:.1f}s]")
    return " ".join(parts)


def _features_cost(engine: Engine, b: str, splits: list[str]) -> dict[str, Any] | None:
    records = []
    for split in splits:
        summary = engine._memo.get(("features", b, split))
        if summary is None:
            path = engine.cache.summary_file("features", engine.features_key(b, split), split, engine.ids(split))
            summary = engine.cache.read(path)
        if summary and summary.get("cost"):
            records.append(summary["cost"])
    return combine("features", records)


def _features_provenance(engine: Engine, b: str) -> dict[str, Any] | None:
    lazy = engine.backbones[b]
    if lazy.obj is not None:
        return engine._provenance(lazy.obj)
    for split in ("val", "train"):
        summary = engine._memo.get(("features", b, split))
        if summary is None and split in engine._ids:
            summary = engine.cache.read(engine.cache.summary_file("features", engine.features_key(b, split), split, engine.ids(split)))
        if summary and summary.get("provenance") is not None:
            return summary["provenance"]
    return None


def _masks_cost(engine: Engine, b: str, m: str, splits: list[str]) -> dict[str, Any] | None:
    """Cost of the pseudo-mask stage over ``splits``, read from the cache (computes nothing)."""
    records = []
    for split in splits:
        key = engine.masks_key(b, m, split)
        data = engine._memo.get(("masks-content", key, split))
        if data is None:
            data = engine.cache.read(engine.cache.summary_file("pseudo-masks", key, split, engine.ids(split)))
            if data is not None:
                engine._memo[("masks-content", key, split)] = data
        if data and data.get("cost"):
            records.append(data["cost"])
    return combine("pseudo-masks", records)


def _cells(engine: Engine) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    students: list[str | None] = list(engine.student_names) or [None]
    splits = ["train", "val"] if engine.student_names else ["val"]
    cells: list[dict[str, Any]] = []
    backbones: dict[str, dict[str, Any]] = {}
    for b in engine.backbone_names:
        item = engine.items[("backbones", b)]
        row_started = time.perf_counter()
        binfo: dict[str, Any] = {
            **item.describe(),
            "calibration": bool(getattr(item.spec, "calibration", False)),
            "status": "ok",
            "reason": None,
            "metrics": {},
        }
        backbones[b] = binfo
        unavailable: str | None = None
        for m in engine.masker_names:
            pm_part: dict[str, Any] | None = None
            cell_started = time.perf_counter()
            if unavailable is None:
                try:
                    pm = engine.pseudo_masks(b, m, "val")
                    fkey = engine.features_key(b, "val")
                    pm_metrics = engine.evaluate(
                        f"{b} / {m}",
                        "pseudo-masks",
                        pm["key"],
                        fkey,
                        lambda b=b, m=m: engine.read_masks(b, m, "val")["predictions"],
                        lambda b=b, m=m: [c for c in (_features_cost(engine, b, ["val"]), _masks_cost(engine, b, m, ["val"])) if c],
                        ensure_features=lambda b=b: engine.features(b, "val"),
                    )
                    pm_part = {"status": "ok", "reason": None, "key": pm["key"], "metrics": pm_metrics}
                except StageError as err:
                    if err.status == "unavailable":
                        unavailable = err.reason
                    else:
                        pm_part = {"status": err.status, "reason": err.reason, "metrics": {}}
            pm_seconds = time.perf_counter() - cell_started
            for s in students:
                started = time.perf_counter()
                cell: dict[str, Any] = {
                    "backbone": b,
                    "masker": m,
                    "student": s,
                    "calibration": binfo["calibration"],
                    "pretrained": None,
                    "status": "ok",
                    "reason": None,
                    "pseudo_masks": pm_part,
                    "student_stage": None,
                    "timings": {},
                }
                if unavailable is not None:
                    cell["status"], cell["reason"] = "unavailable", unavailable
                elif pm_part is not None and pm_part["status"] != "ok":
                    cell["status"], cell["reason"] = pm_part["status"], pm_part["reason"]
                else:
                    failed = [f"metric {n}: {r['reason']}" for n, r in pm_part["metrics"].items() if r.get("status") == "failed"]  # type: ignore[index]
                    if failed:
                        cell["status"], cell["reason"] = "failed", "; ".join(failed)
                    if s is not None:
                        cell["student_stage"] = _student_stage(engine, b, m, s, splits)
                        sp = cell["student_stage"]
                        if sp["status"] != "ok" and cell["status"] == "ok":
                            cell["status"], cell["reason"] = sp["status"], sp["reason"]
                        elif sp["status"] == "failed":
                            cell["status"], cell["reason"] = "failed", sp["reason"]
                cell["timings"] = _timings(engine, b, m, s, splits, cell)
                cell["seconds"] = round(time.perf_counter() - started + (pm_seconds if s == students[0] else 0.0), 3)
                cells.append(cell)
                if unavailable is None:
                    _say(engine, _summary_line(cell))
        if unavailable is None and engine.metrics_for("features"):
            # Metrics of the features alone (e.g. cost), per backbone, once its features exist.
            try:
                fkey = engine.features_key(b, "val")
                binfo["metrics"] = engine.evaluate(
                    b,
                    "features",
                    fkey,
                    fkey,
                    None,
                    lambda b=b: [c for c in [_features_cost(engine, b, ["val"])] if c],
                    ensure_features=lambda b=b: engine.features(b, "val"),
                )
                failed = [f"metric {n}: {r['reason']}" for n, r in binfo["metrics"].items() if r.get("status") == "failed"]
                if failed:
                    binfo["status"], binfo["reason"] = "failed", "; ".join(failed)
            except StageError as err:
                if err.status == "unavailable":
                    unavailable = err.reason
                else:
                    binfo["status"], binfo["reason"] = err.status, err.reason
        if unavailable is not None:
            _say(engine, f"[unavailable] {b}: {unavailable.strip()}")
            binfo["status"], binfo["reason"] = "unavailable", unavailable
            for cell in cells:
                if cell["backbone"] == b:
                    cell["status"], cell["reason"] = "unavailable", unavailable
                    cell["pseudo_masks"], cell["student_stage"] = None, None
        prov = None if unavailable else _features_provenance(engine, b)
        binfo["provenance"] = prov
        binfo["pretrained"] = None if not prov or "pretrained" not in prov else bool(prov["pretrained"])
        binfo["features"] = {"train": _features_cost(engine, b, ["train"]) if "train" in splits else None, "val": _features_cost(engine, b, ["val"])} if not unavailable else None
        binfo["seconds"] = round(time.perf_counter() - row_started, 3)
        for cell in cells:
            if cell["backbone"] == b:
                cell["pretrained"] = binfo["pretrained"]
        engine.backbones[b].release()
    return cells, backbones


def _student_stage(engine: Engine, b: str, m: str, s: str, splits: list[str]) -> dict[str, Any]:
    try:
        info = engine.student(b, m, s)
        data = engine.read_student(b, m, s)

        def costs() -> list[dict[str, Any]]:
            out = [c for c in (_features_cost(engine, b, splits), _masks_cost(engine, b, m, splits)) if c]
            student_cost = combine("student", [data["cost"].get("train"), data["cost"].get("predict")])
            if student_cost:
                out.append(student_cost)
            return out

        metrics = engine.evaluate(f"{b} / {m} / {s}", "student", info["key"], None, lambda: data["predictions"], costs)
        part = {"status": "ok", "reason": None, "key": info["key"], "provenance": data.get("provenance", {}), "metrics": metrics}
        failed = [f"metric {n}: {r['reason']}" for n, r in metrics.items() if r.get("status") == "failed"]
        if failed:
            part["status"], part["reason"] = "failed", "; ".join(failed)
        return part
    except StageError as err:
        return {"status": err.status, "reason": err.reason, "metrics": {}}


def _timings(engine: Engine, b: str, m: str, s: str | None, splits: list[str], cell: dict[str, Any]) -> dict[str, Any]:
    if cell["status"] == "unavailable":
        return {}
    out: dict[str, Any] = {}
    try:
        out["features"] = _features_cost(engine, b, splits)
        if cell.get("pseudo_masks") and cell["pseudo_masks"].get("status") == "ok":
            out["pseudo-masks"] = _masks_cost(engine, b, m, splits if s else ["val"])
        sp = cell.get("student_stage")
        if s is not None and sp and sp.get("status") == "ok":
            data = engine.read_student(b, m, s)
            out["student-train"] = data["cost"].get("train")
            out["student-predict"] = data["cost"].get("predict")
    except Exception:  # timings are informative; never fail a cell over them
        pass
    return {k: v for k, v in out.items() if v}


def run_bench(host: Any, registry: Any, options: BenchOptions) -> BenchOutcome:
    """Run the bench matrix of ``options``; write results.json, leaderboard.{md,csv} and report.html
    into ``options.workdir`` (rank 0), and return the results with an ``exit_code``."""
    from ._report import write_outputs
    from ._results import build_results

    started_wall = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    engine = Engine(host, registry, options)
    try:
        engine.workdir.mkdir(parents=True, exist_ok=True)
        _say(engine, f"uisbench bench: {len(engine.backbone_names)} backbone(s) x {len(engine.masker_names)} masker(s) x "
             f"{max(1, len(engine.student_names))} student(s) on {engine.dataset_name} ({engine.device}, workdir {engine.workdir})")
        for failure in host.failures:
            _say(engine, f"warning: plugin {failure.name} ({failure.distribution} {failure.version}) failed to load: {failure.error}")
        cells, backbones = _cells(engine)
        computed = engine.shard.gather(dict(engine.computed))
        total = {k: sum(c[k] for c in computed) for k in engine.computed}
        results = build_results(engine, cells, backbones, total, started_wall, time.perf_counter() - t0)
        outcome = BenchOutcome(results)
        if engine.shard.main:
            write_outputs(engine, outcome, report=options.report)
        engine.shard.barrier()
        return outcome
    finally:
        engine.shard.close()

