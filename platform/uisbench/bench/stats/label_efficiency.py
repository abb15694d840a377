"""The few-label part of a cell and the label-efficiency section of results.json.

For a cell with a student, each selection rule, each init (``pseudo``, ``baseline``), each budget ``k``
and each seed repeat, the ``finetune`` stage's val predictions are scored with the student stage's
metrics; ``k = 0`` of the ``pseudo`` curve is the student itself (the baseline has no ``k = 0``: an
untrained detector). Results per point are combined over seeds (mean, std, interval of the seed
means). ``label_efficiency`` then reads the ranking value off every curve and computes *labels saved*.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._sources import masks_label
from .._stage import StageError
from ..stages.evaluate import Scoring
from ..stages.finetune import INITS, FinetuneStage, labels_saved, resolve_budgets
from .uncertainty import combine_repeats

if TYPE_CHECKING:
    from .._cells import CellWalker

__all__ = ["finetune_part", "label_efficiency"]


def _point_metrics(walker: CellWalker, stage: FinetuneStage) -> dict[str, Any]:
    output = walker.pipeline.run(stage)
    cost = output.cost or {}
    scoring = Scoring(stage.label, "student", output.key, None, lambda: output.summary["predictions"],
                      lambda: [c for c in cost.values() if c])
    return walker.evaluator.evaluate(scoring)


def _foreign_overrides(overrides: dict[str, Any], spec: Any) -> list[str]:
    """The overrides of a finetune entry that a student plugin does not declare (sorted)."""
    declared = {p.name for p in getattr(spec, "params", ())}
    return sorted(k for k in overrides if k not in declared)


def finetune_part(walker: CellWalker, b: str, m: str, s: str, student_parts: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"status", "reason", "settings", "budgets", "candidates", "points": [...]}`` of one cell."""
    settings = walker.plan.finetune
    train = walker.pipeline.data.dataset("train")
    if not getattr(train, "has_ground_truth", False):
        reason = f"dataset {walker.pipeline.data.name!r} has no ground truth in its train split: nothing to label"
        return {"status": "skipped", "reason": reason, "settings": settings.name, "points": []}
    foreign = _foreign_overrides(settings.student, walker.plan.entry("students", s).spec)
    if foreign:  # the entry's overrides are written for another student plugin (the shipped ones: maskrcnn)
        reason = (f"finetune entry {settings.name!r} sets {', '.join(map(repr, foreign))}, which student plugin "
                  f"{walker.plan.entry('students', s).plugin!r} does not declare; use a finetune entry written for it "
                  "(its own 'student:' overrides) or --finetune none")
        return {"status": "skipped", "reason": reason, "settings": settings.name, "points": []}
    probe = walker.pipeline.finetune(b, m, s, settings, 0, "random", "baseline")
    candidates = probe.candidates()
    budgets = resolve_budgets(settings.budgets, len(candidates))
    points = []
    try:
        for selection in settings.selection:
            for init in INITS:
                for k in budgets:
                    if k == 0 and init == "baseline":
                        continue
                    per_seed = []
                    for repeat in range(settings.seeds):
                        if k == 0:  # the student as trained on pseudo-masks
                            part = student_parts[min(repeat, len(student_parts) - 1)]
                            per_seed.append((part.get("metrics") or {}, []))
                            continue
                        stage = walker.pipeline.finetune(b, m, s, settings, k, selection, init, repeat)
                        per_seed.append((_point_metrics(walker, stage), stage.subset()))
                    metrics = {}
                    for name in per_seed[0][0]:
                        results = [p[0].get(name) or {} for p in per_seed]
                        ok = all(r.get("status") == "ok" for r in results)
                        combined = combine_repeats(results) if ok else next(r for r in results if r.get("status") != "ok")
                        metrics[name] = {k: v for k, v in combined.items() if k != "bootstrap"}  # draws stay out of results.json
                    points.append({"selection": selection, "init": init, "k": k, "subsets": [p[1] for p in per_seed], "metrics": metrics})
    except StageError as err:
        return {"status": err.status, "reason": err.reason, "settings": settings.name, "points": points}
    return {"status": "ok", "reason": None, "settings": settings.name, "budgets": budgets, "candidates": len(candidates),
            "seeds": settings.seeds, "points": points}


def _curve(points: list[dict[str, Any]], selection: str, init: str, metric: str, value: str) -> list[dict[str, Any]]:
    out = []
    for p in points:
        if p["selection"] == selection and p["init"] == init:
            result = p["metrics"].get(metric) or {}
            number = (result.get("values") or {}).get(value) if result.get("status") == "ok" else None
            std = ((result.get("seeds") or {}).get("std") or {}).get(value)
            out.append({"k": p["k"], "mean": number, "std": std, "ci": (result.get("ci") or {}).get(value)})
    return out


def label_efficiency(cells: list[dict[str, Any]], ranking: dict[str, Any]) -> dict[str, Any] | None:
    """results.json's ``label_efficiency``: per cell and selection, both curves of the ranking's metric
    value (its student-stage value), and labels saved; ``None`` when the stage did not run."""
    metric, value = ranking.get("metric"), ranking.get("value")
    rows = []
    for cell in cells:
        part = cell.get("finetune") or {}
        if part.get("status") != "ok" or not metric:
            continue
        for selection in dict.fromkeys(p["selection"] for p in part["points"]):
            pseudo = _curve(part["points"], selection, "pseudo", metric, value)
            baseline = _curve(part["points"], selection, "baseline", metric, value)
            base = [(p["k"], p["mean"]) for p in baseline]
            saved, text = labels_saved([(p["k"], p["mean"]) for p in pseudo], base)
            for point in pseudo:  # what each point of the pseudo curve is worth in baseline labels
                point["baseline_k"], point["baseline_k_text"] = labels_saved([(point["k"], point["mean"])], base)
            rows.append({"backbone": cell["backbone"], "masker": cell["masker"], "masks": masks_label(cell), "student": cell["student"],
                         "selection": selection, "budgets": part["budgets"], "pseudo": pseudo, "baseline": baseline,
                         "labels_saved": saved, "labels_saved_text": text})
    if not rows:
        return None
    return {"metric": metric, "value": value, "rows": rows}
