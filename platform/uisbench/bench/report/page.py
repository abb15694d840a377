"""report.html: one self-contained page (inline CSS, plain JavaScript, inline SVG, images as data
URIs; no network), top to bottom:

summary sentences -> notice of the backbones that could not run (collapsed) -> sortable, filterable
leaderboard (headline columns; the rest behind a toggle; calibration rows apart) -> the four plots ->
image gallery (two backbones side by side; absent in private reports) -> per-backbone details and the
run's provenance (collapsed).

The page's script (``report.js``) sorts, filters and switches; opened as ``report.html#selftest`` it
also exercises itself and records the outcome in ``<body data-selftest>`` (``scripts/report_check.py``).
"""

from __future__ import annotations

import html
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from .._sources import backbone_label, is_ensemble_row, masks_label, row_key
from .data import (
    PARTS,
    SHORT,
    Ranked,
    Scrubber,
    View,
    fmt,
    fmt_ci,
    fmt_rate,
    images_per_s,
    label,
    number,
    result,
    spread,
)
from .leaderboard import headline_columns, leaderboard

ASSETS = Path(__file__).parent
_e = html.escape


def _asset(name: str) -> str:
    return (ASSETS / name).read_text(encoding="utf-8")


def _columns(results: dict[str, Any], view: View) -> tuple[list[tuple[str, str, str, str]], list[tuple[str, str, str, str]]]:
    """(headline, extra) number columns, each ``(title, stage, metric, value)``."""
    headline = [(t, s, m, v) for t, s, m, v in headline_columns(results)]
    shown = {(s, m, v) for _, s, m, v in headline}
    extra = []
    for stage in PARTS:
        for metric in results.get("metrics") or {}:
            names: dict[str, None] = {}
            for c in view.cells:
                names.update(dict.fromkeys(result(c, stage, metric).get("values") or {}))
            for value in names:
                if (stage, metric, value) not in shown and any(number(c, stage, metric, value) is not None for c in view.cells):
                    extra.append((f"{SHORT[stage]} {metric}.{value}", stage, metric, value))
    return headline, extra


def _hib(view: View, stage: str, metric: str, value: str) -> bool | None:
    for c in view.cells:
        known = result(c, stage, metric).get("higher_is_better") or {}
        if value in known:
            return bool(known[value])
    return None


def _status(cell: dict[str, Any], scrub: Scrubber) -> str:
    status = cell["status"]
    reason = " ".join(scrub(cell.get("reason") or "").split())
    short = reason if len(reason) <= 40 else reason[:38].rstrip() + "…"
    text = status if not reason else f"{status}: {short}"
    return f"<td class='st st-{_e(status)}' data-v='{_e(status)}' title='{_e(reason)}'>{_e(text)}</td>"


def table(results: dict[str, Any], view: View, scrub: Scrubber) -> str:
    headline, extra = _columns(results, view)
    any_student = len(view.students) > 1  # one student: named in the group header instead
    rank_key = (view.stage, view.metric, view.value)
    best: dict[int, float] = {}
    number_cols = headline + extra
    for k, (_, stage, metric, value) in enumerate(number_cols):
        values = [v for r in view.contenders if (v := number(r.cell, stage, metric, value)) is not None]
        hib = _hib(view, stage, metric, value)
        if len(values) > 1 and hib is not None:
            best[k] = max(values) if hib else min(values)
    fixed = ["rank", "backbone", "masker"] + (["student"] if any_student else [])
    head1 = [f"<th rowspan=2 data-col={i} data-type={'num' if name == 'rank' else 'text'}>{name}</th>" for i, name in enumerate(fixed)]
    head2 = []
    col = len(fixed)
    for group, cols, cls in (("headline", headline, ""), ("extra", extra, " extra")):
        for stage in PARTS:
            n = sum(1 for c in cols if c[1] == stage)
            if n:
                words = stage if stage == "pseudo-masks" or len(view.students) != 1 else f"student ({view.students[0]})"
                head1.append(f"<th colspan={n} class='grp{cls}'>{words}{' (more)' if group == 'extra' else ''}</th>")
                for title, s, metric, value in cols:
                    if s != stage:
                        continue
                    hib = _hib(view, s, metric, value)
                    arrow = "" if hib is None else (" ↑" if hib else " ↓")
                    name = title.split(" ", 1)[1] if " " in title else title
                    rank = " rankcol" if (s, metric, value) == rank_key else ""
                    tip = f"{metric}.{value} at the {s} stage" + ("; higher is better" if hib else "; lower is better" if hib is False else "")
                    better = "" if hib is None else f" data-better={'hi' if hib else 'lo'}"
                    shown = _e(name).replace("_", "_<wbr>")
                    head2.append(f"<th data-col={col} data-type=num{better} class='num{cls}{rank}' title='{_e(tip)}'>{shown}{arrow}</th>")
                    col += 1
    head1 += [f"<th rowspan=2 data-col={col} data-type=num data-better=hi class=num "
              "title='images/s through features + pseudo-masks on the run&#39;s hardware'>img/s ↑</th>",
              f"<th rowspan=2 data-col={col + 1} data-type=num data-better=lo class='num extra' title='seconds of all timed stages'>stage s ↓</th>",
              f"<th rowspan=2 data-col={col + 2} data-type=text>status</th>"]

    def row(r: Ranked) -> str:
        c = r.cell
        tie = " ≈" if r.within_noise else ""
        tip = "within noise of the row above (paired bootstrap)" if r.within_noise else ""
        backbone, masks = backbone_label(c), masks_label(c)
        text = " ".join([backbone, masks, c.get("student") or "", c["status"]]).lower()
        # an ensemble's own row has no backbone to link to; its masker cell names the members
        who = _e(backbone) if is_ensemble_row(c) else f"<a href='#bb-{_e(backbone)}' class=bb>{_e(backbone)}</a>"
        # the terminal's rank: "-" for a row without a ranking value (its place only keeps the order)
        shown = f"{r.position}{tie}" if r.value is not None else "-"
        if c.get("pretrained") is False:
            who += " <span class=tag title='not pretrained: random initialisation or no learned weights'>not pretrained</span>"
        cells = [f"<td class=num data-v='{r.position}' title='{tip}'>{shown}</td>",
                 f"<td data-v='{_e(backbone)}'>{who}</td>",
                 f"<td data-v='{_e(masks)}'>{_e(masks)}</td>"]
        if any_student:
            cells.append(f"<td data-v='{_e(c.get('student') or '')}'>{_e(c.get('student') or '–')}</td>")
        for k, (_title, stage, metric, value) in enumerate(number_cols):
            v = number(c, stage, metric, value)
            cls = "num" + (" extra" if k >= len(headline) else "") + (" rankcol" if (stage, metric, value) == rank_key else "")
            if v is None:
                cells.append(f"<td class='{cls} none' data-v=''>–</td>")
                continue
            ci = (result(c, stage, metric).get("ci") or {}).get(value)
            std = spread(c, stage, metric, value)
            shown = fmt(v) + (f"<small>±{std:.3f}</small>" if std is not None else "")
            if (stage, metric, value) == rank_key and ci:
                shown += f"<span class=ci>{_e(fmt_ci(ci))}</span>"
            bold = " best" if not r.calibration and k in best and v == best[k] else ""
            tip = f"{metric}.{value}: {v:.4f}" + (f", 95% interval {fmt_ci(ci)}" if ci else "") + (f", std over seeds {std:.4f}" if std is not None else "")
            cells.append(f"<td class='{cls}{bold}' data-v='{v:.6g}' title='{_e(tip)}'>{shown}</td>")
        rate = images_per_s(c, ("features", "pseudo-masks"))
        cells.append(f"<td class=num data-v='{'' if rate is None else f'{rate:.6g}'}'>{fmt_rate(rate)}</td>")
        seconds = sum(float(t.get("seconds") or 0.0) for t in (c.get("timings") or {}).values())
        cells.append(f"<td class='num extra' data-v='{seconds:.4g}'>{seconds:.2f}</td>" if c.get("timings") else "<td class='num extra' data-v=''>–</td>")
        cells.append(_status(c, scrub))
        cls = "calib" if r.calibration else ""
        return f"<tr class='{cls}' data-text='{_e(text)}'>{''.join(cells)}</tr>"

    ncols = len(head1) - sum(1 for h in head1 if "colspan" in h) + len(head2)
    bodies = [f"<tbody class=rows data-group=contenders>{''.join(row(r) for r in view.contenders)}</tbody>"]
    if not view.contenders:
        bodies = [f"<tbody class=rows data-group=contenders><tr class=emptyrow><td colspan={ncols}>no contender rows</td></tr></tbody>"]
    if view.calibration:
        bodies.append(f"<tbody class=grouphead><tr><th colspan={ncols}>Calibration backbones: they read the ground truth, so "
                      "they bound what maskers and metrics can reach; not contenders</th></tr></tbody>")
        bodies.append(f"<tbody class=rows data-group=calibration>{''.join(row(r) for r in view.calibration)}</tbody>")
    return (f"<table id=board class=board><thead><tr>{''.join(head1)}</tr><tr>{''.join(head2)}</tr></thead>"
            f"{''.join(bodies)}</table>")


def unavailable_notice(view: View, scrub: Scrubber) -> str:
    missing = view.unavailable()
    if not missing:
        return ""
    weights = all("weight" in r.lower() for r in missing.values())
    why = "weights not on this machine" if weights else "they could not run here"
    n = len(missing)
    items = []
    for name, reason in missing.items():
        first = scrub(reason.strip().splitlines()[0] if reason.strip() else "unavailable")
        first = first if len(first) <= 150 else first[:148] + "…"
        items.append(f"<li><details><summary><b>{_e(name)}</b>: {_e(first)}</summary><pre>{_e(scrub(reason.strip()))}</pre></details></li>")
    how = ("Put the checkpoint's path in a registry file of your own (<code>weights: /path/to/file.pth</code> under a "
           "backbone entry) and pass it with <code>--registry mine.yaml</code>, or fill the Hugging Face cache "
           "(<code>hf download timm/&lt;tag&gt;</code>); README, “Scoring a local DINO or MAE checkpoint”. Each reason below "
           "names its file." if weights else "Each reason below says what is missing.")
    return (f"<details id=unavailable class=notice><summary>{n} backbone{'s' if n > 1 else ''} not scored here: {why}"
            f"{' — how to get them' if weights else ''}</summary><p>{how}</p><ul>{''.join(items)}</ul></details>")


def _kv(d: dict[str, Any], scrub: Scrubber) -> str:
    rows = []
    for k, v in d.items():
        text = v if isinstance(v, str) else json.dumps(v, default=str)
        rows.append(f"<tr><th>{_e(str(k))}</th><td>{_e(scrub(text))}</td></tr>")
    return f"<table class=kv>{''.join(rows)}</table>"


def backbone_details(results: dict[str, Any], view: View, scrub: Scrubber) -> str:
    out = []
    missing = view.unavailable()
    for name, info in (results.get("backbones") or {}).items():
        if name in missing:
            continue
        desc = info.get("description") or (info.get("params") or {}).get("description") or ""
        head = f"<b>{_e(name)}</b> — {_e(info.get('plugin', '?'))}{' · calibration' if info.get('calibration') else ''}"
        head += f" · {_e(info.get('status', '?'))}" + (f" · {_e(str(desc))}" if desc else "")
        body = [_kv({"params": info.get("params"), "pretrained": info.get("pretrained"), "version": info.get("version"),
                     "distribution": f"{info.get('distribution')} {info.get('distribution_version')}",
                     "provenance": info.get("provenance")}, scrub)]
        feats = info.get("features") or {}
        rates = [f"{split} {fmt_rate((t or {}).get('images_per_s'))} img/s on {(t or {}).get('device', '?')}"
                 for split, t in feats.items() if t]
        if rates:
            body.append(f"<p>features: {_e('; '.join(rates))}</p>")
        if info.get("reason"):
            body.append(f"<pre>{_e(scrub(info['reason']))}</pre>")
        for c in view.cells:
            if c["backbone"] != name:
                continue
            lines = []
            for stage in PARTS:
                for metric, res in ((c.get(PARTS[stage]) or {}).get("metrics") or {}).items():
                    vals = ", ".join(f"{k} {fmt(v)}" for k, v in (res.get("values") or {}).items() if v is not None)
                    if vals or res.get("reason"):
                        lines.append(f"<tr><th>{SHORT[stage]} {_e(metric)}</th><td>{_e(vals or scrub(res.get('reason')))}</td></tr>")
            reason = f"<p class=muted>{_e(scrub(c['reason']))}</p>" if c.get("reason") else ""
            body.append(f"<h4>{_e(label(c))} — {_e(c['status'])}</h4>{reason}<table class=kv>{''.join(lines)}</table>")
        out.append(f"<details id='bb-{_e(name)}' class=bb-detail><summary>{head}</summary>{''.join(body)}</details>")
    return "".join(out)


def provenance(results: dict[str, Any], scrub: Scrubber) -> str:
    prov = results.get("provenance") or {}
    run = results.get("run") or {}
    dataset = dict(results.get("dataset") or {})
    lines = [_e(scrub(line)) for line in leaderboard(results)["header"]]
    facts = {"created": results.get("created"), "argv": " ".join(run.get("argv") or []), "seconds": run.get("seconds"),
             "computed": run.get("computed"), "python": prov.get("python"), "torch": prov.get("torch"),
             "threads": prov.get("threads"), "seeds": prov.get("seeds"),
             "plugins": ", ".join(f"{p.get('name')} ({p.get('distribution')} {p.get('version')})" for p in prov.get("plugins") or [])}
    if scrub.private:
        dataset = {"name": dataset.get("name"), "plugin": dataset.get("plugin"), "splits": dataset.get("splits"),
                   "skipped image ids": [s.get("image_id") for s in dataset.get("skipped_images") or []]}
    else:
        dataset.pop("skipped_images", None)
        skipped = (results.get("dataset") or {}).get("skipped_images") or []
        dataset["skipped images"] = [f"{s.get('image_id')} {s.get('file') or ''}: {s.get('reason')}" for s in skipped]
    return (f"<details class=prov><summary>Run, dataset and provenance</summary><ul>{''.join(f'<li>{x}</li>' for x in lines)}</ul>"
            f"<h4>run</h4>{_kv(facts, scrub)}<h4>dataset</h4>{_kv(dataset, scrub)}</details>")


def gallery_html(gallery: dict[str, Any], view: View) -> str:
    images = gallery.get("images") or []
    if not images:
        return ""
    pairs = gallery["pairs"]
    backbones = list(dict.fromkeys(b for b, _, _ in pairs))
    order = [row_key(r.cell) for r in view.ranked if row_key(r.cell) in backbones]
    backbones = list(dict.fromkeys(order + backbones))
    a = backbones[0]
    b = backbones[1] if len(backbones) > 1 else backbones[0]
    maskers = list(dict.fromkeys(m for _, m, _ in pairs))
    top_masker = next((r.cell["masker"] for r in view.ranked if row_key(r.cell) == a), maskers[0])
    calib = {bb for bb, _, c in pairs if c}

    def options(items: list[str], chosen: str, calibrated: set[str] = frozenset()) -> str:  # type: ignore[assignment]
        return "".join(f"<option value='{_e(x)}'{' selected' if x == chosen else ''}>{_e(x)}{' (calib.)' if x in calibrated else ''}</option>"
                       for x in items)

    shows = [("pm", "pseudo-masks")] + [(f"st|{s}", f"student {s} predictions") for s in dict.fromkeys(s for _, _, s in gallery["students"])]
    controls = (f"<div class=controls><label>A <select id=ga>{options(backbones, a, calib)}</select></label>"
                f"<label>B <select id=gb>{options(backbones, b, calib)}</select></label>"
                f"<label>masker <select id=gm>{options(maskers, top_masker)}</select></label>"
                f"<label>show <select id=gs>{''.join(f'<option value={_e(k)}>{_e(w)}</option>' for k, w in shows)}</select></label>"
                "<span class=hint>hover an image to see through the masks</span></div>")
    styles, blocks, layers = [], [], {}
    for img in images:
        i, w, h = img["id"], img["width"], img["height"]
        scale = max(1.0, 256 / max(w, h))
        dw, dh = round(w * scale), round(h * scale)
        styles.append(f".im{i}{{background-image:url({img['src']})}}")
        layers[str(i)] = {k: v for k, v in img["layers"].items()}
        gt = img["layers"].get("gt")

        def panel(role: str, caption: str, src: str | None = None, i: int = i, dw: int = dw, dh: int = dh) -> str:
            layer = f"<img class=layer alt='' src='{src}'>" if src else "<img class=layer alt=''>" if role in ("a", "b") else ""
            return (f"<figure class='panel p-{role}' style='width:{dw}px'><div class='frame im{i}' style='width:{dw}px;height:{dh}px'>{layer}</div>"
                    f"<figcaption>{caption}</figcaption></figure>")

        figs = [panel("img", f"val image {i} ({w}×{h} px)")]
        if gt is not None:
            figs.append(panel("gt", f"ground truth ({gt['n']} instances)", gt["src"]))
        figs += [panel("a", "A"), panel("b", "B")]
        blocks.append(f"<div class=gimg data-id='{i}'>{''.join(figs)}</div>")
    data = json.dumps(layers, separators=(",", ":"))
    return (f"<style>{''.join(styles)}</style>{controls}{''.join(blocks)}"
            f"<script type='application/json' id=layers>{data.replace('</', '<' + chr(92) + '/')}</script>")


def page(results: dict[str, Any], findings: list[tuple[str, str]], plots: dict[str, Any], gallery: dict[str, Any] | None,
         *, private: bool) -> str:
    view = View(results)
    scrub = Scrubber(results, private)
    ds = results.get("dataset") or {}
    run = results.get("run") or {}
    n = view.n_images()
    meta = [f"dataset <b>{_e(str(ds.get('name', '?')))}</b> ({n if n is not None else '?'} val images)",
            (f"ranked by {'student' if view.stage == 'student' else 'pseudo-mask'} <b>{_e(view.metric)}.{_e(view.value)}</b> "
             f"({'higher' if view.higher_is_better else 'lower'} is better)") if view.value
            else "<b>not ranked</b>: no metric that ranks reported a value",
            f"95% bootstrap intervals over images ({view.bootstrap} draws)" if view.bootstrap else "no bootstrap intervals",
            f"{view.seeds} seed{'s' if view.seeds > 1 else ''}",
            f"{_e(str(run.get('device', '?')))} ({_e(str(run.get('hardware', '?')))})",
            _e(str(results.get("created") or datetime.now().isoformat(timespec="seconds")))]
    items = "".join(f"<li class='f-{kind}'>{text}</li>" for kind, text in findings)
    expected = ["instance", "stages"] + (["cost"] if plots["costs"] else []) + (["label-efficiency"] if plots["label_efficiency"] else [])
    cost_select = ("<label class=costsel>cost: <select id=costsel>" + "".join(
        f"<option value='{_e(k)}'>{_e(w)}</option>" for k, w, _ in plots["costs"]) + "</select></label>") if len(plots["costs"]) > 1 else ""
    figs = [("instance", plots["instance"] + (plots.get("separability") or ""),
             "Each point is a backbone × masker (pseudo-masks). Below the diagonal, instances that share "
             "their class with another instance in the image are found less often than instances alone of their class: the "
             "features merge same-class neighbours. Whiskers: 95% intervals."
             + (" Second panel: how well patch features tell a same-instance pair from a pair of two instances of one class, "
                "comparing only pairs at equal patch distance (0.5: cannot tell); the faint diamond is the value over all pairs, "
                "which rewards features that merely encode position." if plots.get("separability") else ""))]
    if plots["costs"]:
        costs = "".join(f"<div class=costvar data-cost='{_e(k)}'{'' if j == 0 else ' hidden'}>{svg}</div>" for j, (k, _, svg) in enumerate(plots["costs"]))
        figs.append(("cost", costs, cost_select + " Ranking value against throughput on the run's hardware; ringed points, joined by "
                     "the dashed line, are the Pareto front of the contenders (nothing else is both faster and better)."))
    figs.append(("stages", plots["stages"], "Does training a student on the pseudo-masks help? Bars per cell in ranking order; "
                 "whiskers: 95% intervals."))
    if plots["label_efficiency"]:
        figs.append(("label-efficiency", plots["label_efficiency"], "Fine-tuning on k labelled training images: the student "
                     "trained on pseudo-masks (solid; k = 0 is that student before any label) against the same detector from its "
                     "own init (dashed). Labels saved: the k the baseline needs to match the solid curve's first point. Whiskers: "
                     "95% intervals, else ± one std over seeds."))
    fig_html = "".join(f"<figure class=fig data-fig='{k}'>{svg}<figcaption>{cap}</figcaption></figure>" for k, svg, cap in figs)
    gallery_part = gallery_html(gallery, view) if gallery and not private else ""
    if private:
        gallery_part = "<p class=muted>Private report: no images, masks or image paths (ids only).</p>"
    elif not gallery_part:
        gallery_part = "<p class=muted>No images to show (no pseudo-masks were computed).</p>"
    body = [
        f"<header><h1>uisbench report</h1><p class=meta>{' · '.join(meta)}</p></header>",
        f"<section id=summary><h2>Summary</h2><ul class=findings>{items}</ul></section>",
        unavailable_notice(view, scrub),
        "<section id=leaderboard><h2>Leaderboard</h2><div class=controls><input id=filter type=search "
        "placeholder='filter rows: backbone, masker, status…' aria-label='filter rows'>"
        "<label><input type=checkbox id=allcols> all columns</label><span id=count class=muted></span>"
        "<span class=hint>click a column title to sort · <b>bold</b>: best contender · ≈: within noise of the row above</span></div>"
        f"<div class=scroll>{table(results, view, scrub)}</div></section>",
        f"<section id=plots data-expected='{' '.join(expected)}'><h2>Pictures</h2><div class=figs>{fig_html}</div></section>",
        f"<section id=gallery><h2>Images</h2>{gallery_part}</section>",
        f"<section id=details><h2>Details</h2>{backbone_details(results, view, scrub)}{provenance(results, scrub)}</section>",
    ]
    return ("<!doctype html><html lang=en><head><meta charset='utf-8'><meta name=viewport content='width=device-width,initial-scale=1'>"
            f"<title>uisbench report: {_e(str(ds.get('name', '')))}</title><style>{_asset('report.css')}</style></head>"
            f"<body data-private='{int(private)}'><main>{''.join(body)}</main><script>{_asset('report.js')}</script></body></html>")


def private_gallery_page(results: dict[str, Any], gallery: dict[str, Any] | None) -> str:
    """``<workdir>/private/gallery.html`` of a private run: the site's images with every row's masks,
    for the team on site. report.html never links it; its header says what it holds."""
    view = View(results)
    name = _e(str((results.get("dataset") or {}).get("name", "")))
    shown = gallery_html(gallery, view) if gallery else ""
    header = (f"<header><h1>Private gallery: this page holds the site's images</h1><p class=meta>dataset <b>{name}</b>: "
              "the val images with the pseudo-masks of each backbone × masker. Keep it on site: it is written only by "
              "private runs (<code>--private</code>, or <code>report: {images: false}</code>), report.html does not "
              "link it, and it is not one of the outputs to share.</p></header>")
    return ("<!doctype html><html lang=en><head><meta charset='utf-8'><meta name=viewport content='width=device-width,initial-scale=1'>"
            f"<title>uisbench private gallery: {name}</title><style>{_asset('report.css')}</style></head>"
            f"<body data-private='1'><main>{header}<section id=gallery><h2>Images</h2>"
            f"{shown or '<p class=muted>No images to show (no pseudo-masks were computed).</p>'}</section></main>"
            f"<script>{_asset('report.js')}</script></body></html>")
