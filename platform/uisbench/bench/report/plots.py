"""The report's four pictures, per backbone x masker, as inline SVG (``svg.Axes``):

1. instance awareness: recall on instances alone of their class vs with a same-class sibling, the
   diagonal drawn; beside it, per backbone, the feature separability AUROC at equal patch distance
   (``separability_auroc``, the headline) with the unmatched, proximity-confounded value marked faint;
2. quality against cost: the ranking value against images/s (one SVG per cost: features +
   pseudo-masks, features, student training), the Pareto front of the contenders marked;
3. pseudo-mask value next to the student's, per cell, in ranking order;
4. label efficiency (when the few-label stage ran): the metric against the number of labelled
   images, pseudo-mask pre-training vs the baseline.

Colour = backbone, shape = masker, hollow = calibration backbone, in every plot; whiskers are 95 %
bootstrap intervals (``ci``), else ± one standard deviation over seeds.
"""

from __future__ import annotations

import math
from typing import Any

from .._sources import row_key
from .data import View, fmt, fmt_ci, fmt_rate, images_per_s, interval, label, number
from .svg import PALETTE, SHAPES, Axes, empty, esc, marker, nice_ticks, text_width

#: cost axes of plot 2: (id, timings stages run one after the other, words)
COSTS = [
    ("pipeline", ("features", "pseudo-masks"), "features + pseudo-masks"),
    ("features", ("features",), "feature extraction"),
    ("student", ("student-train",), "student training"),
]


class Styles:
    """Colour per backbone, shape per masker: the same in every plot."""

    def __init__(self, view: View) -> None:
        backbones = list(dict.fromkeys(row_key(r.cell) for r in view.contenders + view.calibration))
        self.colour = {b: PALETTE[i % len(PALETTE)] for i, b in enumerate(backbones)}
        self.shape = {m: SHAPES[i % len(SHAPES)] for i, m in enumerate(view.maskers)}
        self.calibration = {row_key(r.cell) for r in view.calibration}

    def legend(self, backbones: list[str], maskers: list[str]) -> list[tuple[str, str, str, bool]]:
        out = [(b + (" (calib.)" if b in self.calibration else ""), self.colour.get(b, "#444"), "circle", b in self.calibration)
               for b in backbones]
        if len(maskers) > 1:
            out += [(f"masker {m}", "#555", self.shape.get(m, "circle"), False) for m in maskers]
        return out


def _span(values: list[float], *, floor0: bool = True, top1: bool = False) -> tuple[float, float]:
    """The value axis: from 0 (or the least value) to the first tick at or above every value, so no
    point or whisker is drawn outside the frame; at most 1.0 for shares (``top1``)."""
    lo = 0.0 if floor0 else min(values)
    hi = max(values) if values else 1.0
    if hi <= lo:
        return lo, (0.1 if top1 else lo + 1.0)
    ticks = nice_ticks(lo, hi * 1.08)
    top = ticks[-1] if ticks[-1] >= hi else ticks[-1] + (ticks[1] - ticks[0] if len(ticks) > 1 else hi - ticks[-1])
    if top1 and hi <= 1.0:
        return lo, max(0.1, min(1.0, top))
    return lo, top


def instance_plot(view: View, st: Styles) -> str:
    title = "Instance awareness: recall alone vs with a same-class sibling"
    pts, seen = [], set()
    for r in view.ranked:
        c = r.cell
        single = number(c, "pseudo-masks", "instance-awareness", "recall_single")
        multi = number(c, "pseudo-masks", "instance-awareness", "recall_multi")
        if single is None or multi is None or (row_key(c), c["masker"]) in seen:
            continue
        seen.add((row_key(c), c["masker"]))
        pts.append((c, single, multi, r.calibration))
    if not pts:
        return empty(600, 80, title, "No instance-awareness values in this run (metric entry instance-awareness).", "instance")
    ax = Axes(600, 420, x=(-0.03, 1.03), y=(-0.03, 1.03), margin=(34, 200, 56, 64), title=title)
    ax.err_opacity = 0.3
    ticks = [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    ax.frame("recall, instances alone of their class (IoU ≥ 0.5)", "recall, instances with a same-class sibling",
             xticks=ticks, yticks=ticks)
    ax.line([(0, 0), (1, 1)], "#999", dash="4 4", width=1)
    ax.text(0.98, 0.04, "below the diagonal: same-class instances", anchor="end", cls="faint")
    ax.text(0.98, 0.04, "merged or missed", anchor="end", dy=-14, cls="faint")
    for c, single, multi, calib in pts:
        colour = st.colour.get(row_key(c), "#444")
        ci_s = interval(c, "pseudo-masks", "instance-awareness", "recall_single")
        ci_m = interval(c, "pseudo-masks", "instance-awareness", "recall_multi")
        ax.errorbar(single, multi, xerr=ci_s, yerr=ci_m, colour=colour)
        tip = (f"{label(c, student=False)}: recall alone {fmt(single)} {fmt_ci(ci_s)}, with a sibling {fmt(multi)} {fmt_ci(ci_m)}"
               + (" (calibration)" if calib else ""))
        ax.point(single, multi, colour=colour, shape=st.shape.get(c["masker"], "circle"), hollow=calib, tip=tip)
    backbones = list(dict.fromkeys(row_key(p[0]) for p in pts))
    maskers = list(dict.fromkeys(p[0]["masker"] for p in pts))
    return ax.render(st.legend(backbones, maskers), legend_title="backbone", plot_id="instance")


def separability_plot(view: View, st: Styles) -> str | None:
    """Plot 1, second panel: per backbone, ``separability_auroc`` (same vs other instance at equal
    patch distance) with its interval, and the unmatched value it was before matching (faint), so a
    backbone whose score came from position is seen to drop to 0.5. ``None`` when no cell has one."""
    metric = "instance-awareness"
    title = "Instance separability of the features, at equal patch distance"
    rows, seen = [], set()
    for r in view.ranked:  # the features decide it: one row per backbone (every masker has the same value)
        c = r.cell
        matched = number(c, "pseudo-masks", metric, "separability_auroc")
        if matched is None or c["backbone"] in seen:
            continue
        seen.add(c["backbone"])
        rows.append((r, matched, number(c, "pseudo-masks", metric, "separability_auroc_unmatched"),
                     interval(c, "pseudo-masks", metric, "separability_auroc")))
    if not rows:
        return None
    rows.sort(key=lambda t: (t[0].calibration, -t[1]))  # contenders first, each group best first
    step = 22
    names = [r.cell["backbone"] + (" (calib.)" if r.calibration else "") for r, *_ in rows]
    left = int(min(260, max(text_width(n, 11) for n in names) + 14))
    values = [v for _, m, u, ci in rows for v in (m, u, *(ci or [])) if v is not None] + [0.5]
    x0 = min(0.4, math.floor(min(values) * 10) / 10)
    ax = Axes(max(600, left + 360 + 190), 34 + 52 + len(rows) * step + 8, x=(x0, 1.02), y=(0, 1),
              margin=(34, 190, 52, left), title=title)  # 1.02: a perfect score is drawn inside the frame
    ticks = [round(x0 + 0.1 * k, 1) for k in range(int(round((1.0 - x0) * 10)) + 1)]
    ax.frame("AUROC, same vs other instance of a class (0.5: cannot tell)", "", xticks=ticks, yticks=[])
    ax.add(f"<line x1='{ax.sx(0.5):.1f}' x2='{ax.sx(0.5):.1f}' y1='{ax.top}' y2='{ax.top + ax.ph:.1f}' stroke='#999' "
           "stroke-dasharray='4 4'/>")
    for k, (r, matched, unmatched, ci) in enumerate(rows):
        c = r.cell
        y = ax.top + step * (k + 0.5)
        colour = st.colour.get(c["backbone"], "#444")
        ax.add(f"<text x='{ax.left - 6}' y='{y + 4:.1f}' text-anchor='end' class='tick'>{esc(names[k])}</text>")
        if unmatched is not None:
            ax.add(f"<line x1='{ax.sx(unmatched):.1f}' x2='{ax.sx(matched):.1f}' y1='{y:.1f}' y2='{y:.1f}' stroke='#bbb'/>")
            ax.add(marker(ax.sx(unmatched), y, colour="#999", shape="diamond", hollow=True, size=4,
                          tip=f"{c['backbone']}: unmatched {fmt(unmatched)} (every pair, whatever its distance: proximity-confounded)"))
        if ci:
            a, b = ax.sx(ci[0]), ax.sx(ci[1])
            ax.add(f"<path d='M{a:.1f},{y:.1f}H{b:.1f}M{a:.1f},{y - 3:.1f}v6M{b:.1f},{y - 3:.1f}v6' stroke='{colour}' "
                   f"stroke-width='1' opacity='{ax.err_opacity}' fill='none'/>")
        tip = (f"{c['backbone']}: separability_auroc {fmt(matched)} {fmt_ci(ci)} at equal patch distance"
               + (f"; unmatched {fmt(unmatched)}" if unmatched is not None else "") + (" (calibration)" if r.calibration else ""))
        ax.add(marker(ax.sx(matched), y, colour=colour, hollow=r.calibration, tip=tip))
    legend = [("equal distance (headline)", "#444", "circle", False), ("all pairs (confounded)", "#999", "diamond", True)]
    return ax.render(legend, legend_title="separability_auroc", plot_id="instance-separability")


def _pareto(points: list[tuple[float, float]], higher_is_better: bool) -> list[int]:
    """Indices of the points no other point beats on both speed (x, higher) and quality (y)."""
    sign = 1.0 if higher_is_better else -1.0
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (x2 >= x and sign * y2 >= sign * y) and (x2 > x or sign * y2 > sign * y) for j, (x2, y2) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def cost_plot(view: View, st: Styles, cost: tuple[str, tuple[str, ...], str]) -> str | None:
    """Plot 2 for one cost axis; ``None`` when no cell has that timing."""
    key, stages, words = cost
    title = f"Quality against cost ({words})"
    pts = []
    for r in view.ranked:
        q, ci, stage = view.quality(r.cell)
        rate = images_per_s(r.cell, stages)
        if q is not None and rate:
            pts.append((r.cell, rate, q, ci, stage, r.calibration))
    if not pts:
        return None
    rates = [p[1] for p in pts]
    lo, hi = min(rates) / 1.6, max(rates) * 1.6
    ys = [p[2] for p in pts] + [v for p in pts if p[3] for v in p[3]]
    y0, y1 = _span(ys, top1=all(0 <= v <= 1 for v in ys))
    stages_used = sorted({p[4] for p in pts})
    which = " (student where trained, else pseudo-masks)" if len(stages_used) > 1 else f" ({stages_used[0]})"
    ax = Axes(600, 420, x=(lo, hi), y=(y0, y1), xlog=True, margin=(34, 200, 56, 64), title=title)
    unit = "training samples / s" if key == "student" else "images / s"
    hardware = next((t.get("hardware") for p in pts for t in (p[0].get("timings") or {}).values() if t.get("hardware")), None)
    ax.frame(f"{unit}, {words}, log scale" + (f" ({hardware})" if hardware else ""), f"{view.value}{which}"[:60])
    contenders = [i for i, p in enumerate(pts) if not p[5]]
    front = [contenders[i] for i in _pareto([(pts[i][1], pts[i][2]) for i in contenders], view.higher_is_better)]
    if len(front) > 1:
        ax.line([(pts[i][1], pts[i][2]) for i in front], "#111", dash="3 3", width=1.2, tip="Pareto front of the contenders")
    for i, (c, rate, q, ci, stage, calib) in enumerate(pts):
        colour = st.colour.get(row_key(c), "#444")
        ax.errorbar(rate, q, yerr=ci, colour=colour)
        tip = (f"{label(c)}: {view.value} {fmt(q)} {fmt_ci(ci)} ({stage}); {fmt_rate(rate)} {unit}"
               + (" (calibration)" if calib else "") + (" - on the Pareto front" if i in front else ""))
        ax.point(rate, q, colour=colour, shape=st.shape.get(c["masker"], "circle"), hollow=calib, tip=tip, ring=i in front)
        if i in front:  # label the front, alternately above and below so neighbours do not collide
            k = front.index(i)
            low = ax.sy(q) > ax.top + 0.85 * ax.ph  # near the x axis: always above
            ax.text(rate, q, label(c, student=False), dx=9, dy=-9 - (12 if low and k % 2 else 0) if low or k % 2 == 0 else 17)
    backbones = list(dict.fromkeys(row_key(p[0]) for p in pts))
    maskers = list(dict.fromkeys(p[0]["masker"] for p in pts))
    legend = st.legend(backbones, maskers) + [("Pareto front (ringed)", "#111", "line-dashed", False)]
    return ax.render(legend, legend_title="backbone", plot_id=f"cost-{key}")


def stages_plot(view: View, st: Styles) -> str:
    """Plot 3: pseudo-mask value and student value side by side, per cell, in ranking order."""
    title = f"Pseudo-mask {view.value} next to student {view.value}" + (f" ({view.students[0]})" if len(view.students) == 1 else "")
    rows = []
    for r in view.ranked:
        c = r.cell
        pm = number(c, "pseudo-masks", view.metric, view.value)
        stv = number(c, "student", view.metric, view.value)
        if pm is None and stv is None:
            continue
        rows.append((r, pm, stv))
    if not rows:
        return empty(600, 80, title, f"No cell has a {view.value} value.", "stages")
    any_student = any(s is not None for _, _, s in rows)
    bar, gap = 9, 9
    step = (2 * bar if any_student else bar + 2) + gap
    names = [label(r.cell, student=len(view.students) > 1) for r, _, _ in rows]
    left = int(min(260, max(text_width(n, 11) for n in names) + 14))
    n_calib = sum(1 for r, _, _ in rows if r.calibration)
    extra = 22 if n_calib and n_calib < len(rows) else 0
    height = 34 + 52 + len(rows) * step + extra + 8
    values = [v for _, a, b in rows for v in (a, b) if v is not None]
    values += [x for r, _, _ in rows for s in ("pseudo-masks", "student") for x in (interval(r.cell, s, view.metric, view.value) or [])]
    x0, x1 = _span(values, top1=all(0 <= v <= 1 for v in values))
    ax = Axes(max(600, left + 360 + 150), height, x=(x0, x1), y=(0, 1), margin=(34, 150, 52, left), title=title)
    ax.frame(f"{view.metric}.{view.value} ({'higher' if view.higher_is_better else 'lower'} is better)", "", yticks=[])
    colours = {"pseudo-masks": "#4c78a8", "student": "#f58518"}
    y = ax.top + gap / 2
    for k, (r, pm, stv) in enumerate(rows):
        if extra and r.calibration and not rows[k - 1][0].calibration:
            ax.add(f"<line x1='4' x2='{ax.left + ax.pw:.1f}' y1='{y + 4:.1f}' y2='{y + 4:.1f}' stroke='#bbb' stroke-dasharray='4 3'/>")
            ax.add(f"<text x='{ax.left + 4}' y='{y + 16:.1f}' class='faint'>calibration backbones (references, not contenders)</text>")
            y += extra
        name = names[k]
        ax.add(f"<text x='{ax.left - 6}' y='{y + (step - gap) / 2 + 4:.1f}' text-anchor='end' class='tick'>{esc(name)}</text>")
        for j, (stage, v) in enumerate((("pseudo-masks", pm), ("student", stv)) if any_student else (("pseudo-masks", pm),)):
            top = y + j * bar
            if v is None:
                continue
            ci = interval(r.cell, stage, view.metric, view.value)
            x_start = ax.sx(x0)
            w = max(0.0, ax.sx(v) - x_start)
            opacity = "0.45" if r.calibration else "0.95"
            ax.add(f"<rect x='{x_start:.1f}' y='{top:.1f}' width='{w:.1f}' height='{bar - 1}' fill='{colours[stage]}' "
                   f"opacity='{opacity}'><title>{esc(name)}: {stage} {fmt(v)} {fmt_ci(ci)}</title></rect>")
            if ci:
                a, b = ax.sx(ci[0]), ax.sx(ci[1])
                mid = top + (bar - 1) / 2
                ax.add(f"<path d='M{a:.1f},{mid:.1f}H{b:.1f}M{a:.1f},{mid - 3:.1f}v6M{b:.1f},{mid - 3:.1f}v6' stroke='#222' "
                       "stroke-width='1' fill='none'/>")
            end = max(ax.sx(v), ax.sx(ci[1]) if ci else 0)
            ax.add(f"<text x='{end + 4:.1f}' y='{top + bar - 1:.1f}' class='note'>{fmt(v)}</text>")
        y += step
    legend = [("pseudo-masks", colours["pseudo-masks"], "bar", False)]
    legend += [("student", colours["student"], "bar", False)] if any_student else [("(no student run)", "#ccc", "bar", False)]
    legend += [("faded: calibration", "#999", "bar", True)] if n_calib else []
    return ax.render(legend, legend_title="stage", plot_id="stages")


def _series_err(point: dict[str, Any]) -> list[float] | None:
    ci = point.get("ci")
    if ci and None not in ci:
        return [float(ci[0]), float(ci[1])]
    std, mean = point.get("std"), point.get("mean")
    return [mean - std, mean + std] if std is not None and mean is not None else None


def label_efficiency_plot(results: dict[str, Any], st: Styles) -> str | None:
    """Plot 4; ``None`` when the few-label stage did not run. ``k = 0`` (the pseudo-mask student before
    any label) sits left of the log axis, at its own tick "0"."""
    le = results.get("label_efficiency") or {}
    rows = [r for r in le.get("rows") or [] if r.get("pseudo") or r.get("baseline")]
    if not rows:
        return None
    value = le.get("value", "")
    points = [p for r in rows for s in ("pseudo", "baseline") for p in r.get(s) or [] if p.get("k") is not None and p.get("mean") is not None]
    ks = sorted({float(p["k"]) for p in points})
    ys = [v for p in points for v in [p["mean"], *(_series_err(p) or [])] if v is not None]
    if not ks or not ys:
        return None
    positive = [k for k in ks if k > 0]
    log = bool(positive) and max(positive) / min(positive) >= 8
    zero = min(positive) / 2.5 if log else 0.0  # where k = 0 is drawn

    def x(k: Any) -> float:
        return float(k) if float(k) > 0 or not log else zero

    xr = (min(x(k) for k in ks) / 1.3, max(ks) * 1.3) if log else (0.0, max(ks) * 1.05)
    y0, y1 = _span(ys, top1=all(0 <= v <= 1 for v in ys))
    ax = Axes(600, 420, x=xr, y=(y0, y1), xlog=log, margin=(34, 210, 56, 64), title=f"Label efficiency ({value})")
    ticks = [x(k) for k in ks] if len(ks) <= 9 else None
    ax.frame("labelled training images" + (" (log scale)" if log else ""), f"{value} after fine-tuning", xticks=ticks,
             xlabels={zero: "0"} if log and 0.0 in ks else None)
    legend: list[tuple[str, str, str, bool]] = []
    # One colour per (backbone, selection rule): its pseudo-mask curves solid, one marker shape per
    # masker, and its baseline dashed with hollow markers. The baseline does not depend on the masker,
    # so it is drawn once per colour and student.
    groups = list(dict.fromkeys((r.get("backbone"), r.get("selection")) for r in rows))
    by_backbone = len(groups) == len({g[0] for g in groups})
    maskers = list(dict.fromkeys(r.get("masker") for r in rows if r.get("masker")))
    drawn_baselines: set[tuple[Any, Any, Any]] = set()
    for r in rows:
        group = (r.get("backbone"), r.get("selection"))
        baseline_id = (*group, r.get("student"))
        colour = st.colour.get(group[0], PALETTE[0]) if by_backbone else PALETTE[groups.index(group) % len(PALETTE)]
        who = str(group[0]) + (f", {group[1]}" if len({g[1] for g in groups}) > 1 else "")
        for series in ("pseudo", "baseline"):
            pts = sorted((p for p in r.get(series) or [] if p.get("k") is not None and p.get("mean") is not None), key=lambda p: p["k"])
            if not pts or (series == "baseline" and baseline_id in drawn_baselines):
                continue
            baseline = series == "baseline"
            if baseline:
                drawn_baselines.add(baseline_id)
            shape = "circle" if baseline else st.shape.get(r.get("masker"), "circle")
            name = f"{who} · " + ("baseline" if baseline else str(r.get("masks") or r.get("masker")))
            ax.line([(x(p["k"]), float(p["mean"])) for p in pts], colour, dash="5 3" if baseline else None, width=1.8)
            for p in pts:
                err = _series_err(p)
                ax.errorbar(x(p["k"]), float(p["mean"]), yerr=err, colour=colour)
                tip = f"{name}: {p['k']} labels, {value} {fmt(p['mean'])}" + (f" {fmt_ci(err)}" if err else "")
                ax.point(x(p["k"]), float(p["mean"]), colour=colour, shape=shape, hollow=baseline, size=4, tip=tip)
            legend.append((name if len(name) <= 32 else name[:31] + "…", colour, "line-dashed" if baseline else "line", False))
    if len(maskers) > 1:
        legend += [(f"masker {m}", "#555", st.shape.get(m, "circle"), False) for m in maskers]
    legend.append(("dashed: baseline, own init", "#555", "line-dashed", False))
    return ax.render(legend, legend_title="solid: pseudo-mask init", plot_id="label-efficiency")


def all_plots(results: dict[str, Any]) -> dict[str, Any]:
    """``{"instance": svg, "separability": svg | None, "costs": [(id, words, svg)], "stages": svg,
    "label_efficiency": svg | None}``."""
    view = View(results)
    st = Styles(view)
    costs = [(key, words, svg) for key, stages, words in COSTS if (svg := cost_plot(view, st, (key, stages, words)))]
    return {
        "instance": instance_plot(view, st),
        "separability": separability_plot(view, st),
        "costs": costs,
        "stages": stages_plot(view, st),
        "label_efficiency": label_efficiency_plot(results, st),
    }


__all__ = ["all_plots", "COSTS"]
