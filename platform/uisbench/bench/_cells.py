"""Walking the matrix: every cell (backbone x masker x student) through its stages and metrics, each
stochastic part repeated per seed (``--seeds``) and its metric results combined (``uncertainty``).

The walk yields the ``cells`` and ``backbones`` parts of results.json, plus each metric result's
bootstrap draws (kept out of results.json; the ranking pairs them across cells).
"""

from __future__ import annotations

import time
from typing import Any

from ._context import TERMINAL_WIDTH, shorten
from ._cost import combine_parts, with_member_time
from ._pipeline import Pipeline
from ._sources import ENSEMBLE_ROW, cell_label, masks_from
from ._stage import StageError
from .stages.evaluate import MetricEvaluator, Scoring
from .stages.features import backbone_provenance
from .stats.label_efficiency import finetune_part
from .stats.uncertainty import combine_repeats

__all__ = ["CellWalker", "cell_id", "draws_key"]


def cell_id(cell: dict[str, Any]) -> str:
    """How results.json names a cell: ``backbone/masker/student`` (``-`` without a student; ``*`` in
    the backbone place for an ensemble's own row, which has no backbone)."""
    return f"{cell['backbone'] or ENSEMBLE_ROW}/{cell['masker']}/{cell.get('student') or '-'}"


def draws_key(cell: dict[str, Any], stage: str) -> str:
    """Whose draws a cell's stage has: the pseudo-masks belong to backbone x masker (every student of
    the row shares them), the student stage to the cell."""
    return f"{cell['backbone'] or ENSEMBLE_ROW}/{cell['masker']}" if stage == "pseudo-masks" else cell_id(cell)


def _failed_metrics(metrics: dict[str, Any]) -> str | None:
    failed = [f"metric {n}: {r['reason']}" for n, r in metrics.items() if r.get("status") == "failed"]
    return "; ".join(failed) or None


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def _shown_value(part: dict[str, Any] | None, stage: str, rank_by: tuple[str | None, ...]) -> str | None:
    """What a progress line shows of one stage: the ``--rank-by`` value where this stage reports it,
    else the first headline value of the stage's first metric that has one (the ranking's own default)."""
    metrics = (part or {}).get("metrics") or {}
    want_stage, metric, value = rank_by
    chosen = metrics.get(metric or "") or {}
    if want_stage in (None, stage) and value in (chosen.get("values") or {}):
        return f"{metric}.{value}={_fmt(chosen['values'][value])}"
    for name, result in metrics.items():
        if result.get("status") == "ok" and result.get("headline"):
            first = result["headline"][0]
            return f"{name}.{first}={_fmt((result.get('values') or {}).get(first))}"
    return None


def _summary_line(cell: dict[str, Any], rank_by: tuple[str | None, ...] = (None, None, None)) -> str:
    parts = [f"[{cell['status']}]", cell_label(cell)]
    for stage, key in (("pseudo-masks", "pseudo_masks"), ("student", "student_stage")):
        shown = _shown_value(cell.get(key), stage, rank_by)
        if shown:
            parts.append(f"{stage} {shown}")
    seconds = f"[{cell['seconds']:.1f}s]"
    if cell.get("reason"):
        reason = cell["reason"].strip().splitlines()[0]
        if cell["status"] != "failed":  # expected outcomes fit the line; results.json keeps the whole reason
            reason = shorten(reason, max(30, TERMINAL_WIDTH - len(" ".join(parts)) - len(seconds) - 4))
        parts.append(f"({reason})")
    parts.append(seconds)
    return " ".join(parts)


def _combine_parts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One stage part (status, metrics) from its repetitions over seeds."""
    if len(parts) == 1:
        return parts[0]
    bad = next((p for p in parts if p["status"] != "ok"), None)
    if bad is not None:
        return bad
    out = {**parts[0], "keys": [p["key"] for p in parts]}
    metrics = {}
    for name in parts[0]["metrics"]:
        results = [p["metrics"].get(name) or {} for p in parts]
        failed = next((r for r in results if r.get("status") != "ok"), None)
        metrics[name] = failed if failed is not None else combine_repeats(results)
    out["metrics"] = metrics
    return out


class CellWalker:
    """Runs every cell of the plan and collects the ``cells`` and ``backbones`` parts of results.json."""

    def __init__(self, pipeline: Pipeline, rank_by: tuple[str | None, ...] = (None, None, None)) -> None:
        self.pipeline = pipeline
        #: ``(stage, metric, value)`` of ``--rank-by`` (``ranking.parse_rank_by``): what progress lines show
        self.rank_by = rank_by
        self.ctx = pipeline.ctx
        self.plan = pipeline.plan
        self.evaluator = MetricEvaluator(pipeline)
        self.splits = ["train", "val"] if self.plan.students else ["val"]
        #: (backbone, masker, student) -> the student part of every seed repeat
        self.student_repeats: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        #: (cell id, stage, metric) -> {value: per-draw values}: the bootstrap draws, out of results.json
        self.draws: dict[tuple[str, str, str], dict[str, list[float | None]]] = {}

    def _keep_draws(self, where: str, stage: str, part: dict[str, Any] | None) -> None:
        """Move the bootstrap draws of ``part``'s metric results into :attr:`draws`."""
        for name, result in ((part or {}).get("metrics") or {}).items():
            draws = result.pop("bootstrap", None)
            if draws is not None:
                self.draws[(where, stage, name)] = draws

    # -- costs and provenance, read from finished stages (never computing) ---------------------

    def features_cost(self, b: str, splits: list[str]) -> dict[str, Any] | None:
        outputs = [self.pipeline.peek(self.pipeline.features(b, split)) for split in splits]
        return combine_parts("features", [o.cost for o in outputs if o])

    def masks_cost(self, b: str, m: str, splits: list[str], repeat: int = 0) -> dict[str, Any] | None:
        outputs = [self.pipeline.peek(self.pipeline.pseudo_masks(b, m, split, repeat)) for split in splits]
        cost = combine_parts("pseudo-masks", [o.cost for o in outputs if o])
        if cost is not None and self.plan.is_ensemble(m):
            # an ensemble costs its members' features and masks too: their time, its images
            members = [self.features_cost(mb, splits) for mb, _ in self.plan.members[m]]
            members += [self.masks_cost(mb, mm, splits) for mb, mm in self.plan.members[m]]
            cost = with_member_time(cost, [c for c in members if c])
        return cost

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

    def release_members(self, m: str, keep: str) -> None:
        """Free the models of ensemble ``m``'s member backbones (all but the row's ``keep``)."""
        for mb, _ in self.plan.members[m]:
            if mb != keep:
                self.pipeline.backbones[mb].release()

    # -- parts of a cell ----------------------------------------------------------------------

    def pseudo_mask_part(self, b: str | None, m: str) -> dict[str, Any]:
        """Pseudo-masks and their metrics; per seed when the masker is stochastic (has a ``seed``).
        ``b`` is ``None`` for an ensemble's masks: no backbone's features made them."""
        stochastic = self.plan.entry("maskers", m).spec.param("seed") is not None
        repeats = range(self.ctx.seeds) if stochastic else range(1)
        return _combine_parts([self._pseudo_mask_part(b, m, r) for r in repeats])

    def _pseudo_mask_part(self, b: str | None, m: str, repeat: int) -> dict[str, Any]:
        row = b or ENSEMBLE_ROW
        output = self.pipeline.run(self.pipeline.pseudo_masks(row, m, "val", repeat))
        scoring = Scoring(
            what=f"{b} / {m}" if b else f"ensemble {m}",
            stage="pseudo-masks",
            upstream_key=output.key,
            # an ensemble's masks are scored without features: no one backbone's features made them
            features=self.pipeline.features(b, "val") if b else None,
            predictions=lambda: output.summary["predictions"],
            costs=lambda: [c for c in (self.features_cost(b, ["val"]) if b else None, self.masks_cost(row, m, ["val"])) if c],
        )
        return {"status": "ok", "reason": None, "key": output.key, "metrics": self.evaluator.evaluate(scoring)}

    def student_part(self, b: str, m: str, s: str) -> dict[str, Any]:
        """The student trained and scored once per seed (training is stochastic)."""
        params = self.plan.entry("students", s).params
        wanted = getattr(self.pipeline.data.dataset("val"), "max_dets", 100)
        if params.get("max_detections", wanted) < wanted:  # a student capped below the protocol
            reason = (f"student entry {s!r} predicts {params['max_detections']} detections per image, dataset "
                      f"{self.pipeline.data.name!r} is evaluated with {wanted}; use a student entry with "
                      f"max_detections: {wanted} (e.g. maskrcnn-gpu-lvis)")
            return {"status": "skipped", "reason": reason, "metrics": {}}
        parts = [self._student_part(b, m, s, r) for r in range(self.ctx.seeds)]
        self.student_repeats[(b, m, s)] = parts  # the few-label stage starts from each repeat
        return _combine_parts(parts)

    def _student_part(self, b: str, m: str, s: str, repeat: int) -> dict[str, Any]:
        try:
            output = self.pipeline.run(self.pipeline.student(b, m, s, repeat))

            def costs() -> list[dict[str, Any]]:
                parts = (self.features_cost(b, self.splits), self.masks_cost(b, m, self.splits, repeat), *output.cost.values())
                return [c for c in parts if c]

            what = f"{b} / {m} / {s}" + (f" seed +{repeat}" if repeat else "")
            scoring = Scoring(what, "student", output.key, None, lambda: output.summary["predictions"], costs)
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
        # an ensemble's masks first, once: every backbone row's student on them reads that one result
        ensembles = {m: self.ensemble_row(m) for m in self.plan.maskers if self.plan.is_ensemble(m)}
        for b in self.plan.backbones:
            backbones[b] = self.row(b, cells, ensembles)
            self.pipeline.backbones[b].release()
        cells.extend(ensembles.values())
        return cells, backbones

    def ensemble_row(self, m: str) -> dict[str, Any]:
        """The one row of ensemble masker ``m``'s pseudo-masks: its members made them, no backbone did,
        so no backbone row carries their values. A calibration row when a member reads ground truth."""
        started = time.perf_counter()
        members = self.plan.members[m]
        calibration = any(self.pipeline.backbones[mb].calibration for mb, _ in members)
        try:
            part = self.pseudo_mask_part(None, m)
        except StageError as err:
            reason = f"a member of ensemble {m!r}: {err.reason}" if err.status == "unavailable" else err.reason
            part = {"status": err.status, "reason": reason, "metrics": {}}
        self.release_members(m, keep="")
        cell = self.cell(None, m, None, calibration, part, None)
        if part["status"] == "ok":
            cost = self.masks_cost(ENSEMBLE_ROW, m, ["val"])
            cell["timings"] = {"pseudo-masks": cost} if cost else {}
        cell["seconds"] = round(time.perf_counter() - started, 3)
        self._keep_draws(draws_key(cell, "pseudo-masks"), "pseudo-masks", cell.get("pseudo_masks"))
        self.ctx.say(_summary_line(cell, self.rank_by))
        return cell

    @staticmethod
    def _ensemble_masks(ensemble: dict[str, Any]) -> dict[str, Any]:
        """A backbone row's pseudo-mask part for an ensemble's masks: their status, none of their
        values (those are reported once, in the ensemble's own row, ``reported_in``)."""
        part = ensemble["pseudo_masks"] or {}
        return {"status": part.get("status", ensemble["status"]), "reason": part.get("reason", ensemble["reason"]),
                **({"key": part["key"]} if "key" in part else {}), "metrics": {}, "reported_in": cell_id(ensemble)}

    def row(self, b: str, cells: list[dict[str, Any]], ensembles: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Backbone ``b``'s cells (into ``cells``) and its ``backbones`` entry; ``ensembles``: every
        ensemble masker's own row (:meth:`ensemble_row`), which its student cells point at."""
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
            ensemble = self.plan.is_ensemble(m)
            if ensemble and students == [None]:
                continue  # without a student, the ensemble's masks are its own row's alone
            if unavailable is None:
                if ensemble:
                    pm_part = self._ensemble_masks(ensembles[m])
                else:
                    try:
                        pm_part = self.pseudo_mask_part(b, m)
                    except StageError as err:
                        if err.status != "unavailable":
                            pm_part = {"status": err.status, "reason": err.reason, "metrics": {}}
                        else:
                            unavailable = err.reason
            pm_seconds = time.perf_counter() - cell_started
            # masks built from ground-truth-reading members are calibration results too
            cell_calibration = calibration or (ensemble and any(self.pipeline.backbones[mb].calibration for mb, _ in self.plan.members[m]))
            for s in students:
                cell_start = time.perf_counter()
                cell = self.cell(b, m, s, cell_calibration, pm_part, unavailable)
                cell["timings"] = self.timings(b, m, s, cell)
                cell["seconds"] = round(time.perf_counter() - cell_start + (pm_seconds if s == students[0] else 0.0), 3)
                row_cells.append(cell)
                self._keep_draws(draws_key(cell, "pseudo-masks"), "pseudo-masks", cell.get("pseudo_masks"))
                self._keep_draws(draws_key(cell, "student"), "student", cell.get("student_stage"))
                if unavailable is None:
                    self.ctx.say(_summary_line(cell, self.rank_by))
            if ensemble and unavailable is None:  # its students loaded the members for the train split
                self.release_members(m, keep=b)
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

    def cell(self, b: str | None, m: str, s: str | None, calibration: bool, pm_part: dict[str, Any] | None, unavailable: str | None) -> dict[str, Any]:
        cell: dict[str, Any] = {
            "backbone": b,
            "masker": m,
            "student": s,
            "masks_from": masks_from(m, b, self.plan.members.get(m)),
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
            if s is not None and b is not None:
                part = cell["student_stage"] = self.student_part(b, m, s)
                if part["status"] != "ok" and cell["status"] == "ok":
                    cell["status"], cell["reason"] = part["status"], part["reason"]
                elif part["status"] == "failed":
                    cell["status"], cell["reason"] = "failed", part["reason"]
                if part["status"] == "ok" and self.plan.finetune is not None:
                    cell["finetune"] = finetune_part(self, b, m, s, self.student_repeats[(b, m, s)])
                    if cell["finetune"]["status"] == "failed":
                        cell["status"], cell["reason"] = "failed", cell["finetune"]["reason"]
        return cell
