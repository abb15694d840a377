"""``run_bench``: walk the matrix cell by cell through the pipeline's stages, then write results.json,
the leaderboard and the report.

Stages of a cell (backbone x masker x student)::

    features (per backbone, train and val) -> pseudo-masks (per backbone x masker)
        -> masker metrics (val pseudo-masks vs ground truth)
        -> student (fit on train pseudo-masks, predict val) -> student metrics

Work is demand-driven: a stage runs only when something downstream is not cached, and plugin objects
(backbones above all) are built only when a stage must run. Failure isolation:
:class:`uisbench.BackboneUnavailable` makes the row ``unavailable``, :class:`uisbench.IncompatibleError`
from a student makes its part ``skipped``, any other exception makes the cell ``failed`` (traceback in
``<workdir>/logs``); the run goes on.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ._context import BenchContext, BenchOptions
from ._cost import combine_parts
from ._data import BenchData
from ._evaluate import MetricEvaluator, Scoring
from ._features import backbone_provenance
from ._pipeline import Pipeline
from ._plan import make_plan
from ._stage import StageError
from ._workdir import WorkdirLock, check_workdir, remove_stale_temporaries

__all__ = ["run_bench", "open_pipeline", "BenchOutcome"]


class BenchOutcome(dict):
    """The results dict, plus ``exit_code`` (1 when a cell or a backbone's own metrics failed, else 0)
    and ``report_path`` (report.html, or ``None`` when it was not written)."""

    report_path: Path | None = None

    @property
    def exit_code(self) -> int:
        parts = [*self["cells"], *self.get("backbones", {}).values()]
        return 1 if any(p["status"] == "failed" for p in parts) else 0


def _failed_metrics(metrics: dict[str, Any]) -> str | None:
    failed = [f"metric {n}: {r['reason']}" for n, r in metrics.items() if r.get("status") == "failed"]
    return "; ".join(failed) or None


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


class CellWalker:
    """Runs every cell of the plan and collects the ``cells`` and ``backbones`` parts of results.json."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.ctx = pipeline.ctx
        self.plan = pipeline.plan
        self.evaluator = MetricEvaluator(pipeline)
        self.splits = ["train", "val"] if self.plan.students else ["val"]

    # -- costs and provenance, read from finished stages (never computing) ---------------------

    def features_cost(self, b: str, splits: list[str]) -> dict[str, Any] | None:
        outputs = [self.pipeline.peek(self.pipeline.features(b, split)) for split in splits]
        return combine_parts("features", [o.cost for o in outputs if o])

    def masks_cost(self, b: str, m: str, splits: list[str]) -> dict[str, Any] | None:
        outputs = [self.pipeline.peek(self.pipeline.pseudo_masks(b, m, split)) for split in splits]
        return combine_parts("pseudo-masks", [o.cost for o in outputs if o])

    def features_provenance(self, b: str) -> dict[str, Any] | None:
        handle = self.pipeline.backbones[b]
        if handle.backbone is not None:
            return backbone_provenance(handle.backbone)
        for split in ("val", "train"):
            if self.pipeline.data.known_ids(split) is None:
                continue
            output = self.pipeline.peek(self.pipeline.features(b, split))
            if output and output.provenance is not None:
                return output.provenance
        return None

    # -- parts of a cell ----------------------------------------------------------------------

    def pseudo_mask_part(self, b: str, m: str) -> dict[str, Any]:
        output = self.pipeline.run(self.pipeline.pseudo_masks(b, m, "val"))
        scoring = Scoring(
            what=f"{b} / {m}",
            stage="pseudo-masks",
            upstream_key=output.key,
            features=self.pipeline.features(b, "val"),
            predictions=lambda: output.summary["predictions"],
            costs=lambda: [c for c in (self.features_cost(b, ["val"]), self.masks_cost(b, m, ["val"])) if c],
        )
        return {"status": "ok", "reason": None, "key": output.key, "metrics": self.evaluator.evaluate(scoring)}

    def student_part(self, b: str, m: str, s: str) -> dict[str, Any]:
        try:
            output = self.pipeline.run(self.pipeline.student(b, m, s))

            def costs() -> list[dict[str, Any]]:
                parts = (self.features_cost(b, self.splits), self.masks_cost(b, m, self.splits), *output.cost.values())
                return [c for c in parts if c]

            scoring = Scoring(f"{b} / {m} / {s}", "student", output.key, None, lambda: output.summary["predictions"], costs)
            metrics = self.evaluator.evaluate(scoring)
            part = {"status": "ok", "reason": None, "key": output.key, "provenance": output.summary.get("provenance", {}), "metrics": metrics}
            failed = _failed_metrics(metrics)
            if failed:
                part["status"], part["reason"] = "failed", failed
            return part
        except StageError as err:
            return {"status": err.status, "reason": err.reason, "metrics": {}}

    def timings(self, b: str, m: str, s: str | None, cell: dict[str, Any]) -> dict[str, Any]:
        if cell["status"] == "unavailable":
            return {}
        out: dict[str, Any] = {}
        try:
            out["features"] = self.features_cost(b, self.splits)
            if (cell.get("pseudo_masks") or {}).get("status") == "ok":
                out["pseudo-masks"] = self.masks_cost(b, m, self.splits if s else ["val"])
            if s is not None and (cell.get("student_stage") or {}).get("status") == "ok":
                cost = self.pipeline.run(self.pipeline.student(b, m, s)).cost or {}
                out["student-train"], out["student-predict"] = cost.get("train"), cost.get("predict")
        except Exception:  # timings are informative; never fail a cell over them
            pass
        return {k: v for k, v in out.items() if v}

    # -- the walk -----------------------------------------------------------------------------

    def walk(self) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        cells: list[dict[str, Any]] = []
        backbones: dict[str, dict[str, Any]] = {}
        for b in self.plan.backbones:
            backbones[b] = self.row(b, cells)
            self.pipeline.backbones[b].release()
        return cells, backbones

    def row(self, b: str, cells: list[dict[str, Any]]) -> dict[str, Any]:
        entry = self.plan.entry("backbones", b)
        started = time.perf_counter()
        calibration = bool(getattr(entry.spec, "calibration", False))
        info: dict[str, Any] = {**entry.describe(), "calibration": calibration, "status": "ok", "reason": None, "metrics": {}}
        students: list[str | None] = list(self.plan.students) or [None]
        row_cells: list[dict[str, Any]] = []
        unavailable: str | None = None
        for m in self.plan.maskers:
            pm_part: dict[str, Any] | None = None
            cell_started = time.perf_counter()
            if unavailable is None:
                try:
                    pm_part = self.pseudo_mask_part(b, m)
                except StageError as err:
                    if err.status == "unavailable":
                        unavailable = err.reason
                    else:
                        pm_part = {"status": err.status, "reason": err.reason, "metrics": {}}
            pm_seconds = time.perf_counter() - cell_started
            for s in students:
                cell_start = time.perf_counter()
                cell = self.cell(b, m, s, calibration, pm_part, unavailable)
                cell["timings"] = self.timings(b, m, s, cell)
                cell["seconds"] = round(time.perf_counter() - cell_start + (pm_seconds if s == students[0] else 0.0), 3)
                row_cells.append(cell)
                if unavailable is None:
                    self.ctx.say(_summary_line(cell))
        if unavailable is None and self.plan.metric_names_for("features"):
            # Metrics of the features alone (e.g. cost), per backbone, once its features exist.
            try:
                features = self.pipeline.features(b, "val")
                scoring = Scoring(b, "features", self.pipeline.runner.key(features), features, None,
                                  lambda: [c for c in [self.features_cost(b, ["val"])] if c])
                info["metrics"] = self.evaluator.evaluate(scoring)
                failed = _failed_metrics(info["metrics"])
                if failed:
                    info["status"], info["reason"] = "failed", failed
            except StageError as err:
                if err.status == "unavailable":
                    unavailable = err.reason
                else:
                    info["status"], info["reason"] = err.status, err.reason
        if unavailable is not None:
            self.ctx.say(f"[unavailable] {b}: {unavailable.strip()}")
            info["status"], info["reason"] = "unavailable", unavailable
            for cell in row_cells:
                cell.update(status="unavailable", reason=unavailable, pseudo_masks=None, student_stage=None)
        provenance = None if unavailable else self.features_provenance(b)
        info["provenance"] = provenance
        info["pretrained"] = None if not provenance or "pretrained" not in provenance else bool(provenance["pretrained"])
        if unavailable:
            info["features"] = None
        else:
            train = self.features_cost(b, ["train"]) if "train" in self.splits else None
            info["features"] = {"train": train, "val": self.features_cost(b, ["val"])}
        info["seconds"] = round(time.perf_counter() - started, 3)
        for cell in row_cells:
            cell["pretrained"] = info["pretrained"]
        cells.extend(row_cells)
        return info

    def cell(self, b: str, m: str, s: str | None, calibration: bool, pm_part: dict[str, Any] | None, unavailable: str | None) -> dict[str, Any]:
        cell: dict[str, Any] = {
            "backbone": b,
            "masker": m,
            "student": s,
            "calibration": calibration,
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
            failed = _failed_metrics(pm_part["metrics"])  # type: ignore[index]
            if failed:
                cell["status"], cell["reason"] = "failed", failed
            if s is not None:
                part = cell["student_stage"] = self.student_part(b, m, s)
                if part["status"] != "ok" and cell["status"] == "ok":
                    cell["status"], cell["reason"] = part["status"], part["reason"]
                elif part["status"] == "failed":
                    cell["status"], cell["reason"] = "failed", part["reason"]
        return cell


def open_pipeline(host: Any, registry: Any, options: BenchOptions) -> Pipeline:
    """The pipeline of ``options``' matrix, nothing computed yet: the work directory checked and
    locked, stale temporary files removed, the process group up under torchrun. Release all that
    with ``pipeline.close()``."""
    ctx = BenchContext(options, options.seed if options.seed is not None else registry.bench.seed)
    lock = WorkdirLock(ctx.workdir)
    try:
        problem = None
        if ctx.shard.main:
            try:
                check_workdir(ctx.workdir)
                lock.acquire(list(options.argv))
                removed = remove_stale_temporaries(ctx.workdir)
                if removed:
                    ctx.say(f"removed {removed} temporary file(s) an interrupted run left in {ctx.workdir}")
            except ConfigError as err:
                problem = str(err)
        problem = ctx.shard.broadcast(problem)
        if problem:
            raise ConfigError(problem)
        plan = make_plan(host, registry, options, ctx.cache.hash_memo())
        data = BenchData(plan.entry("datasets", plan.dataset), options.limit, options.skip_bad_images)
        return Pipeline(ctx, plan, data, lock)
    except BaseException:
        lock.release()
        ctx.shard.close()
        raise


def run_bench(host: Any, registry: Any, options: BenchOptions) -> BenchOutcome:
    """Run the bench matrix of ``options``; write results.json, leaderboard.{md,csv} and report.html
    into ``options.workdir`` (rank 0), and return the results with an ``exit_code``."""
    from ._report import write_outputs
    from ._results import build_results

    started_wall = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    pipeline = open_pipeline(host, registry, options)
    ctx, plan = pipeline.ctx, pipeline.plan
    try:
        ctx.say(f"uisbench bench: {len(plan.backbones)} backbone(s) x {len(plan.maskers)} masker(s) x "
                f"{max(1, len(plan.students))} student(s) on {plan.dataset} ({ctx.device}, workdir {ctx.workdir})")
        for failure in host.failures:
            ctx.say(f"warning: plugin {failure.name} ({failure.distribution} {failure.version}) failed to load: {failure.error}")
        cells, backbones = CellWalker(pipeline).walk()
        computed = ctx.shard.gather(dict(ctx.computed))
        total = {k: sum(c[k] for c in computed) for k in ctx.computed}
        results = build_results(pipeline, host, registry, cells, backbones, total, started_wall, time.perf_counter() - t0)
        outcome = BenchOutcome(results)
        if ctx.shard.main:
            outcome.report_path = write_outputs(pipeline, outcome, report=options.report)
        ctx.shard.barrier()
        return outcome
    finally:
        pipeline.close()
