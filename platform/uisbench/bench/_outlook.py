"""The plan of a run before any work: how many cells, what the cache already holds, what must be
downloaded (and how big), and how long the rest should take. ``platform bench`` prints it first;
``platform bench --dry-run`` prints it and stops.

The time estimate comes from earlier runs in the same work directory: a stage summary names its
entry (``backbone``, ``masker``; ``student`` with its backbone) and holds its measured images/s (a
student: its seconds), so an uncached stage of the same entry is estimated from it; stages never run
before are counted as "unknown", not guessed.
"""

from __future__ import annotations

from ._pipeline import Pipeline

__all__ = ["outlook"]


def _measured_speeds(pipeline: Pipeline) -> dict[tuple[str, str], float]:
    """``(stage, entry name) -> images/s`` from every finished summary in the work directory."""
    speeds: dict[tuple[str, str], list[float]] = {}
    root = pipeline.ctx.cache.root
    for stage, field in (("features", "backbone"), ("pseudo-masks", "masker")):
        for path in sorted((root / stage).glob("*/summary-*.json")) if (root / stage).is_dir() else []:
            summary = pipeline.ctx.cache.read(path)
            if not isinstance(summary, dict):
                continue
            ips = (summary.get("cost") or {}).get("images_per_s")
            if isinstance(summary.get(field), str) and isinstance(ips, (int, float)) and ips > 0:
                speeds.setdefault((stage, summary[field]), []).append(float(ips))
    return {k: sum(v) / len(v) for k, v in speeds.items()}


def _measured_trainings(pipeline: Pipeline) -> dict[tuple[str, str], float]:
    """``(student entry, backbone entry) -> seconds`` of one training and prediction, from the student
    summaries in the work directory (the time hardly depends on which pseudo-masks it learns)."""
    runs: dict[tuple[str, str], list[float]] = {}
    root = pipeline.ctx.cache.root / "student"
    for path in sorted(root.glob("*/summary.json")) if root.is_dir() else []:
        summary = pipeline.ctx.cache.read(path)
        if not isinstance(summary, dict) or not isinstance(summary.get("student"), str):
            continue
        cost = summary.get("cost") or {}
        seconds = [(cost.get(part) or {}).get("seconds") for part in ("train", "predict")]
        if all(isinstance(x, (int, float)) and x >= 0 for x in seconds):
            runs.setdefault((summary["student"], str(summary.get("backbone"))), []).append(float(sum(seconds)))
    return {k: sum(v) / len(v) for k, v in runs.items()}


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def outlook(pipeline: Pipeline) -> list[str]:
    """Lines describing what the run will do (computes nothing; may read dataset annotations)."""
    ctx, plan, data = pipeline.ctx, pipeline.plan, pipeline.data
    splits = ["train", "val"] if plan.students else ["val"]
    sizes = {split: len(data.ids(split)) for split in splits}
    ensembles = sum(1 for m in plan.maskers if plan.is_ensemble(m))
    # an ensemble's masks are a row of their own; without a student no backbone row crosses them
    crossed = len(plan.maskers) if plan.students else len(plan.maskers) - ensembles
    cells = len(plan.backbones) * crossed * max(1, len(plan.students)) + ensembles
    own_rows = f" + {ensembles} ensemble row(s)" if ensembles else ""
    lines = [
        f"plan: {len(plan.backbones)} backbone(s) x {crossed} masker(s) x "
        f"{f'{len(plan.students)} student(s)' if plan.students else 'no student'}{own_rows} = {cells} cell(s) on {plan.dataset} ({', '.join(f'{k} {v}' for k, v in sizes.items())} images); "
        f"device {ctx.device}; {ctx.seeds} seed(s); workdir {ctx.workdir}"
    ]
    speeds = _measured_speeds(pipeline)
    trainings = _measured_trainings(pipeline)
    counts = {"features": [0, 0], "pseudo-masks": [0, 0], "student": [0, 0]}
    seconds, unknown = 0.0, set()
    seen: set[str] = set()
    downloads = []
    for b in plan.backbones:
        spec, params = plan.entry("backbones", b).spec, plan.entry("backbones", b).params
        need = spec.downloads(params) if callable(getattr(spec, "downloads", None)) else None
        if need:
            downloads.append(f"{b}: {need}")
        for split in splits:
            cached = pipeline.peek(pipeline.features(b, split)) is not None
            counts["features"][0] += cached
            counts["features"][1] += 1
            if not cached:
                if ("features", b) in speeds:
                    seconds += sizes[split] / speeds[("features", b)]
                else:
                    unknown.add(f"features of {b}")
            for m in plan.maskers:
                stage = pipeline.pseudo_masks(b, m, split)
                if pipeline.runner.key(stage) in seen:  # an ensemble's masks: one result for every row
                    continue
                seen.add(pipeline.runner.key(stage))
                cached = pipeline.peek(stage) is not None
                counts["pseudo-masks"][0] += cached
                counts["pseudo-masks"][1] += 1
                if not cached:
                    if ("pseudo-masks", m) in speeds:
                        seconds += sizes[split] / speeds[("pseudo-masks", m)]
                    else:
                        unknown.add(f"{m} pseudo-masks")
        for m in plan.maskers:
            for s in plan.students:
                for repeat in range(ctx.seeds):
                    cached = pipeline.peek(pipeline.student(b, m, s, repeat)) is not None
                    counts["student"][0] += cached
                    counts["student"][1] += 1
                    if not cached:
                        if (s, b) in trainings:
                            seconds += trainings[(s, b)]
                        else:
                            unknown.add(f"student {s}")
    if plan.finetune is not None and plan.students:
        ft = plan.finetune
        runs = 2 * sum(1 for b in ft.budgets if b not in (0, "0", "0%")) * len(ft.selection) * ft.seeds
        lines.append(f"few labels: finetune entry {ft.name!r}, budgets {list(ft.budgets)}, selection {list(ft.selection)}, "
                     f"{ft.seeds} seed(s): up to {runs} fine-tuning runs per cell whose student trains")
    lines.append("cached: " + ", ".join(f"{stage} {done}/{total}" for stage, (done, total) in counts.items() if total))
    if downloads:
        lines.append("to download (online; offline these rows are unavailable): " + "; ".join(downloads))
    if not unknown and not seconds and all(done == total for done, total in counts.values()):
        estimate = "nothing to compute, every stage is cached"
    else:
        estimate = f"about {_duration(seconds)} for the stages measured before" if seconds else "nothing measured before"
    lines.append(f"time: {estimate}" + (f"; unknown for {', '.join(sorted(unknown))}" if unknown else ""))
    return lines
