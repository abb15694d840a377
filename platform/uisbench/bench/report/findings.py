"""The report's opening: one sentence per finding the data supports, from results.json alone.

Each finding is ``(kind, html)``: ``kind`` is ``result`` (what the numbers show), ``caution`` (what
limits them: training on the evaluation images, calibration-only numbers, failed cells, few images)
or ``note``. A sentence is written only when its numbers exist; a lead is called *beyond noise* only
on the paired bootstrap test of ``ranking`` (adjacent rows) or non-overlapping 95 % intervals.
"""

from __future__ import annotations

import html
from typing import Any

from .._sources import is_ensemble_row, masks_label, row_key
from .data import Ranked, View, fmt, fmt_ci, interval, label, number

Finding = tuple[str, str]


def _b(text: str) -> str:
    return f"<b>{html.escape(text)}</b>"


def _val(v: float | None, ci: list[float] | None = None) -> str:
    return f"{fmt(v)}{(' ' + fmt_ci(ci)) if ci else ''}"


def _separation(view: View, first: Ranked, second: Ranked) -> tuple[str, str]:
    """How sure ``first`` is ahead of ``second`` (``sure``, ``tie`` or ``unknown``, and the words):
    the ranking's paired test when they are adjacent rows, else whether their intervals overlap."""
    rows = view.calibration if first.calibration else view.contenders
    i, j = rows.index(first), rows.index(second)
    if j == i + 1 and second.within_noise is not None:
        return ("tie", "<span class=tie>within noise</span> (paired bootstrap over images)") if second.within_noise \
            else ("sure", "<span class=sure>beyond noise</span> (paired bootstrap over images)")
    if first.ci and second.ci:
        apart = first.ci[0] > second.ci[1] if view.higher_is_better else first.ci[1] < second.ci[0]
        return ("sure", "<span class=sure>beyond noise</span> (95% intervals do not overlap)") if apart \
            else ("tie", "<span class=tie>not established</span> (95% intervals overlap)")
    return "unknown", "of unknown significance (no intervals: run with bootstrap)"


def _what(view: View) -> str:
    return f"{'student' if view.stage == 'student' else 'pseudo-mask'} {html.escape(view.value)}"


def _where(r: Ranked) -> str:
    """`` with masker [+ student]`` (an ensemble's masks by their source); nothing for an ensemble's
    own row, whose name already says where its masks came from."""
    c = r.cell
    if is_ensemble_row(c):
        return ""
    return " with " + html.escape(masks_label(c) + (f" + {c['student']}" if c.get("student") else ""))


def _who(r: Ranked) -> str:
    """The backbone of a row, or for an ensemble's own row the ensemble and its members; a backbone
    without pretraining says so (a random-init network is no "best contender" without the word)."""
    marked = " (not pretrained: random init or no learned weights)" if r.cell.get("pretrained") is False else ""
    return _b(("ensemble " if is_ensemble_row(r.cell) else "") + row_key(r.cell)) + marked


def best_overall(view: View) -> list[Finding]:
    scored = [r for r in view.contenders if r.value is not None]
    if not scored:
        return []
    top = scored[0]
    text = f"Best contender: {_who(top)}{_where(top)}, {_what(view)} {_val(top.value, top.ci)}"
    if len(scored) > 1:
        nxt = scored[1]
        text += (f"; its lead over {_who(nxt)}{_where(nxt)} ({fmt(nxt.value)}) is "
                 f"{_separation(view, top, nxt)[1]}.")
    else:
        text += " (the only scored contender)."
    ceiling = next((r for r in view.calibration if r.value is not None), None)
    if ceiling is not None:
        text += f" Calibration ceiling: {html.escape(label(ceiling.cell))} at {fmt(ceiling.value)}."
    else:  # calibration rows skipped at the student stage: compare the pseudo-masks
        pm = [(v, r) for r in view.calibration if (v := number(r.cell, "pseudo-masks", view.metric, view.value)) is not None]
        own = number(top.cell, "pseudo-masks", view.metric, view.value)
        if pm and own is not None and view.stage == "student":
            best_v, best_r = (max if view.higher_is_better else min)(pm, key=lambda x: x[0])
            text += (f" Calibration ceiling at the pseudo-mask stage: {html.escape(label(best_r.cell, student=False))} at "
                     f"{fmt(best_v)} (the best contender's pseudo-masks: {fmt(own)}).")
    return [("result", text)]


def best_per_masker(view: View) -> list[Finding]:
    """The best backbone under each masker (and student), when the run has more than one masker."""
    groups: dict[tuple[str, str | None], list[Ranked]] = {}
    for r in view.contenders:  # an ensemble's own row has no backbone to compare under its masker
        if r.value is not None and not is_ensemble_row(r.cell):
            groups.setdefault((masks_label(r.cell), r.cell.get("student")), []).append(r)
    if len(groups) < 2 or len({r.cell["backbone"] for rows in groups.values() for r in rows}) < 2:
        return []
    parts = []
    for (masker, student), rows in groups.items():
        where = html.escape(masker + (f" + {student}" if student else ""))
        text = f"with {where}: {_b(rows[0].cell['backbone'])} ({_val(rows[0].value)}"
        if len(rows) > 1:
            text += f"; over {html.escape(rows[1].cell['backbone'])} {fmt(rows[1].value)}, {_separation(view, rows[0], rows[1])[1]})"
        else:
            text += ", the only backbone scored)"
        parts.append(text)
    return [("result", "Best backbone per masker: " + "; ".join(parts) + ".")]


def masker_per_backbone(view: View) -> list[Finding]:
    """Which masker gives each backbone its best value (calibration backbones included, marked)."""
    if len(view.maskers) < 2:
        return []
    by_backbone: dict[str, list[Ranked]] = {}
    for r in view.ranked:
        if r.value is not None and not is_ensemble_row(r.cell):
            by_backbone.setdefault(r.cell["backbone"], []).append(r)
    wins: dict[str, list[str]] = {}
    for backbone, rows in by_backbone.items():
        best: dict[str, Ranked] = {}
        for r in rows:  # rows are in ranking order: the first per masker is that masker's best
            best.setdefault(r.cell["masker"], r)
        if len(best) < 2:
            continue
        ordered = list(best.values())
        first, second = ordered[0], ordered[1]
        same_group = first.calibration == second.calibration
        tie = " ≈" if same_group and _separation(view, first, second)[0] == "tie" else ""
        note = " [calib.]" if first.calibration else ""
        wins.setdefault(first.cell["masker"], []).append(
            f"{html.escape(backbone)}{note} ({fmt(first.value)} vs {html.escape(second.cell['masker'])} {fmt(second.value)}{tie})")
    if not wins:
        return []
    parts = [f"{_b(m)} suits {', '.join(items)}" for m, items in wins.items()]
    if len(wins) == 1:
        only = next(iter(wins))
        lead = f"{_b(only)} is the better masker for every backbone scored with more than one masker: "
        return [("result", lead + ", ".join(wins[only]) + ". (≈: within noise.)")]
    return [("result", "No masker wins everywhere: " + "; ".join(parts) + ". (≈: within noise.)")]


def instance_awareness(view: View) -> list[Finding]:
    """Recall on instances that share their class with another instance vs instances alone."""
    metric = "instance-awareness"
    pairs = []
    seen: set[tuple[str, str]] = set()
    for r in view.ranked:  # one pair per backbone x masker: every student of it shares the pseudo-masks
        c = r.cell
        single, multi = number(c, "pseudo-masks", metric, "recall_single"), number(c, "pseudo-masks", metric, "recall_multi")
        if single is not None and multi is not None and (c["backbone"], c["masker"]) not in seen:
            seen.add((c["backbone"], c["masker"]))
            pairs.append((c, single, multi, r.calibration))
    if not pairs:
        return []
    lower = [p for p in pairs if p[2] < p[1]]
    sure = []
    for c, _single, _multi, _ in lower:
        ci_s, ci_m = interval(c, "pseudo-masks", metric, "recall_single"), interval(c, "pseudo-masks", metric, "recall_multi")
        if ci_s and ci_m and ci_m[1] < ci_s[0]:
            sure.append(c)
    text = (f"Instance awareness: recall on instances that share their class with another instance in the image is below "
            f"recall on instances alone of their class in {len(lower)} of {len(pairs)} backbone × masker pairs")
    if lower:
        worst = min(lower, key=lambda p: p[2] - p[1])
        text += (f" (largest gap: {html.escape(label(worst[0], student=False))}, {fmt(worst[2])} vs {fmt(worst[1])}"
                 f"{'; beyond noise for ' + str(len(sure)) if sure else ''})")
    contenders = [p for p in pairs if not p[3]]
    if contenders:
        best = max(contenders, key=lambda p: p[2])
        text += f". Best on same-class siblings among contenders: {_b(label(best[0], student=False))} (recall {fmt(best[2])})"
    widths = [ci[1] - ci[0] for p in pairs if (ci := interval(p[0], "pseudo-masks", metric, "recall_single"))]
    text += "."
    if widths and max(widths) >= 0.5:
        text += (f" Few instances are alone of their class here: recall_single intervals are up to {max(widths):.2f} wide, "
                 "so read these gaps as indicative.")
    return [("result", text)]


def student_vs_pseudo(view: View) -> list[Finding]:
    both = []
    for c in view.cells:
        pm = number(c, "pseudo-masks", view.metric, view.value)
        st = number(c, "student", view.metric, view.value)
        if pm is not None and st is not None:
            both.append((c, pm, st))
    if not both:
        return []
    def gain(b: tuple[Any, float, float]) -> float:
        return (b[2] - b[1]) * (1 if view.higher_is_better else -1)

    gains = [b for b in both if fmt(b[2]) != fmt(b[1]) and gain(b) > 0]  # a change the table shows
    what = f"{html.escape(view.metric)}.{html.escape(view.value)}"
    if gains:
        best = max(gains, key=gain)
        return [("result", f"The student improves on its own pseudo-masks ({what}) in {len(gains)} of {len(both)} cells; "
                           f"most for {_b(label(best[0]))} ({fmt(best[1])} → {fmt(best[2])}).")]
    worst = min(both, key=gain)
    return [("result", f"The student does not improve on its own pseudo-masks ({what}) in any of {len(both)} cells "
                       f"({_b(label(worst[0]))}: {fmt(worst[1])} → {fmt(worst[2])}); more training iterations or images may be needed.")]


def label_efficiency(results: dict[str, Any]) -> list[Finding]:
    """Labels saved: the labelled images the baseline needs to reach what the pseudo-mask student
    reaches at its smallest budget (``labels_saved_text``: ``12.5``, ``<=8``, ``>64`` or ``-``)."""
    le = results.get("label_efficiency") or {}
    value = html.escape(str(le.get("value", "")))
    out = []
    for row in le.get("rows") or []:
        text = str(row.get("labels_saved_text") or "-")
        first = next((p for p in sorted(row.get("pseudo") or [], key=lambda p: p["k"]) if p.get("mean") is not None), None)
        if text == "-" or first is None:
            continue
        at = "with no labels" if first["k"] == 0 else f"with {first['k']} labels"
        # ``masks``: the masker, or an ensemble's source (results.json before schema 3: the masker)
        who = _b(" / ".join(str(row.get(k)) for k in ("backbone", "masks" if row.get("masks") else "masker", "student") if row.get(k)))
        reach = f"what pseudo-mask training reaches {at} ({value} {fmt(first['mean'])})"
        if text.startswith(">"):
            said = f"the baseline does not reach {reach} within {html.escape(text[1:])} labelled images"
        elif text.startswith("<="):
            said = f"the baseline reaches {reach} already at {html.escape(text[2:])} labelled images: no labels saved at these budgets"
        else:
            said = f"the baseline needs {html.escape(text)} labelled images to reach {reach}"
        selection = f", {html.escape(str(row['selection']))} selection" if row.get("selection") else ""
        out.append(("result", f"Label efficiency ({who}{selection}): {said}."))
    return out


#: the values of a label-free metric entry, in the order the summary names them
_LABEL_FREE = (("masks_per_image", "masks per image"), ("coverage", "image coverage"), ("mask_score", "mask score"))

#: the registry lines of the labelling route (README "Datasets": your own images, a few of them labelled)
_ROUTE = """datasets:
  {name}-labelled:
    plugin: coco
    root: {root}
    images: .                             # val: the labelled images held out ...
    annotations: val-labels.json          # ... that this COCO file names
    train_images: .
    train_annotations: train-labels.json  # labelled images the few-label stage may draw from
    train_unlabelled: true                # + every other photo, pseudo-labelled only"""


def label_free_entries(results: dict[str, Any]) -> list[str]:
    """The run's metric entries of the ``label-free`` plugin."""
    return [n for n, e in (results.get("metrics") or {}).items() if (e or {}).get("plugin") == "label-free"]


def label_free(view: View) -> list[Finding]:
    """What was measured without labels (per row: masks, coverage, scores; agreement between rows)
    and, on a dataset without ground truth, the route to a real answer: the lines to write."""
    results = view.results
    out: list[Finding] = []
    entries = label_free_entries(results)
    rows = [c for c in view.cells if any(number(c, "pseudo-masks", e, "masks_per_image") is not None for e in entries)]
    seen: set[tuple[Any, str]] = set()
    rows = [c for c in rows if not ((c["backbone"], c["masker"]) in seen or seen.add((c["backbone"], c["masker"])))]
    if rows:
        entry = entries[0]
        parts = []
        for value, words in _LABEL_FREE:
            scored = [(v, c) for c in rows if (v := number(c, "pseudo-masks", entry, value)) is not None]
            if not scored:
                continue
            lo, hi = min(scored, key=lambda x: x[0]), max(scored, key=lambda x: x[0])
            if len(scored) == 1 or lo[0] == hi[0]:
                parts.append(f"{words} {fmt(lo[0])}")
            else:
                parts.append(f"{words} from {fmt(lo[0])} ({html.escape(label(lo[1], student=False))}) to "
                             f"{fmt(hi[0])} ({html.escape(label(hi[1], student=False))})")
        text = (f"Without labels ({html.escape(entry)}, {len(rows)} backbone × masker row{'s' if len(rows) > 1 else ''}): "
                + "; ".join(parts) + ".")
        pairs = [p for p in (results.get("label_free") or {}).get("agreement") or [] if p.get("value") is not None]
        for between in ("backbones", "maskers"):
            group = sorted((p for p in pairs if p["between"] == between), key=lambda p: -p["value"])
            if group:
                top = group[0]
                text += (f" Agreement between {between} (matched mask IoU): highest {html.escape(top['a'])} vs "
                         f"{html.escape(top['b'])} {_val(top['value'], top.get('ci'))}")
                text += f", lowest {html.escape(group[-1]['a'])} vs {html.escape(group[-1]['b'])} {fmt(group[-1]['value'])}." \
                    if len(group) > 1 else "."
        steady = [e for e in (results.get("label_free") or {}).get("stability") or [] if e.get("flip") is not None]
        if steady:
            parts = [f"{html.escape(e['row'])} flip {_val(e['flip'], (e.get('ci') or {}).get('flip'))}, rescale "
                     f"{_val(e.get('rescale'), (e.get('ci') or {}).get('rescale'))}" for e in steady[:6]]
            text += (" Stability (matched mask IoU with the masks of the flipped and of the rescaled image, mapped back): "
                     + "; ".join(parts) + (" …" if len(steady) > 6 else "") + ".")
        text += (" These describe the masks (how many, how much of the image, how sure the masker is, whether two "
                 "rows find the same objects, whether they survive a flip or a rescale); they do not say which masks are right.")
        out.append(("result", text))
    dataset = results.get("dataset") or {}
    if dataset.get("has_ground_truth") is False:
        root = (dataset.get("params") or {}).get("root")
        root = root if isinstance(root, str) and root and root != "<private>" else "/path/to/your/photos"
        name = str(dataset.get("name") or "photos")
        route = html.escape(_ROUTE.format(name=name, root=root))
        out.append(("note", "<b>No ground truth, so no ranking.</b> For a real answer, label a handful of these images "
                            "(say 10 to 20) in any tool that exports COCO json (CVAT, Label Studio, ...), "
                            "split them into <code>val-labels.json</code> and <code>train-labels.json</code>, put these "
                            f"lines in a registry file (e.g. <code>mine.yaml</code>):<pre>{route}</pre>and rerun with "
                            f"<code>platform bench --registry mine.yaml --dataset {html.escape(name)}-labelled</code> "
                            "(README: “How many labels do I need?”)."))
    return out


def cautions(view: View) -> list[Finding]:
    results = view.results
    out: list[Finding] = []
    dataset = results.get("dataset") or {}
    if dataset.get("transductive"):
        out.append(("caution", "<b>Transductive:</b> the students trained on the evaluation images (the train split holds the "
                               "val images), so student numbers are not held-out numbers."))
    if not any(r.value is not None for r in view.contenders) and any(r.value is not None for r in view.calibration):
        out.append(("caution", "<b>Calibration only:</b> every number comes from calibration backbones, which read the ground "
                               "truth. They bound what the maskers and metrics can reach; they do not rank SSL backbones."))
    failed = [c for c in view.cells if c["status"] == "failed"]
    if failed:
        names = ", ".join(html.escape(label(c)) for c in failed[:4]) + (" …" if len(failed) > 4 else "")
        out.append(("caution", f"<b>{len(failed)} cell{'s' if len(failed) > 1 else ''} failed</b> ({names}): the reasons are in "
                               "the table's status column, tracebacks in the work directory's logs/bench.log."))
    broken = (results.get("provenance") or {}).get("plugin_failures") or []
    if broken:
        errors = list(dict.fromkeys(str(f.get("error")) for f in broken))
        out.append(("caution", f"<b>{len(broken)} plugin{'s' if len(broken) > 1 else ''} failed to load</b> "
                               f"({html.escape(', '.join(str(f.get('name')) for f in broken))}): {html.escape('; '.join(errors[:2]))}"
                               f"{' …' if len(errors) > 2 else ''}. Their entries are not in this run."))
    n = view.n_images()
    if n is not None and n < 100:
        out.append(("note", f"Only {n} validation image{'s' if n != 1 else ''}: intervals are wide and small differences "
                            "mean little; use the full split for conclusions."))
    return out


def findings(results: dict[str, Any]) -> list[Finding]:
    view = View(results)
    out = cautions(view)
    cautions_first = [f for f in out if f[0] == "caution"]
    rest = [f for f in out if f[0] != "caution"]
    found = best_overall(view) + best_per_masker(view) + masker_per_backbone(view)
    found += student_vs_pseudo(view) + instance_awareness(view) + label_efficiency(results)
    if not found and any(c["status"] == "ok" for c in view.cells):
        found = [("note", "No ranking value in this run: no metric that ranks reported a number"
                          + (" (the dataset has no ground truth)." if (results.get("dataset") or {}).get("has_ground_truth") is False
                             else ".") + " The table shows what was measured.")]
    elif not found:
        found = [("note", "No backbone produced a number in this run: see the statuses below.")]
    return cautions_first + found + label_free(view) + rest
