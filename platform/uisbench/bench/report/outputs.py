"""The report of a run: ``report.html`` (one self-contained page: summary, leaderboard, plots,
gallery; built by ``page``) and the files under ``report/``, plus :func:`write_outputs`,
which writes every file of a finished run."""

from __future__ import annotations

import hashlib
import io
import sys
from pathlib import Path
from typing import Any

from ...io import atomic_write_bytes, atomic_write_json, atomic_write_text
from .leaderboard import render

# ---------------------------------------------------------------------------------------------
# report/leaderboard.png: the ranking value per scored cell, for slides (the page draws SVG)
# ---------------------------------------------------------------------------------------------


def bar_chart(results: dict[str, Any]) -> bytes:
    """Horizontal bars of the ranking value per cell that has one (pseudo-mask and student stage side
    by side), in leaderboard order, whiskers from the 95 % intervals; calibration rows hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .data import View, interval, label, number

    view = View(results)
    stages = [("pseudo-masks", "#4c78a8"), ("student", "#f58518")]
    rows = [r for r in view.ranked if any(number(r.cell, s, view.metric, view.value) is not None for s, _ in stages)]
    stages = [(s, c) for s, c in stages if any(number(r.cell, s, view.metric, view.value) is not None for r in rows)]
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * max(3, len(rows)) + 1.2))
    height = 0.8 / max(1, len(stages))
    for k, (stage, colour) in enumerate(stages):
        for i, r in enumerate(rows):
            v = number(r.cell, stage, view.metric, view.value)
            if v is None:
                continue
            ci = interval(r.cell, stage, view.metric, view.value)
            y = i - 0.4 + height * (k + 0.5)
            err = [[v - ci[0]], [ci[1] - v]] if ci else None
            ax.barh(y, v, height=height * 0.95, color=colour, xerr=err, ecolor="#333", capsize=2, hatch="//" if r.calibration else None,
                    edgecolor="white" if r.calibration else colour, label=stage if i == next(j for j, x in enumerate(rows)
                                                                                             if number(x.cell, stage, view.metric, view.value) is not None) else None)
    ax.set_yticks(range(len(rows)), [label(r.cell) + (" [calib.]" if r.calibration else "") for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"{view.metric}.{view.value} (whiskers: 95% interval; hatched: calibration backbone reading ground truth)", fontsize=8)
    if rows:
        ax.legend(fontsize=7, loc="lower right")
    else:
        ax.text(0.5, 0.5, "no scored cells", ha="center", va="center", transform=ax.transAxes)
    ranked = f"sorted by {view.stage} {view.metric}.{view.value}" if view.value else "not ranked: no metric that ranks reported a value"
    ax.set_title(f"uisbench leaderboard ({ranked})", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# report.html
# ---------------------------------------------------------------------------------------------

_VOLATILE_RUN = ("started", "seconds", "computed", "built", "argv")


def _report_key(results: dict[str, Any], image_ids: list[int], private: bool) -> str:
    """What the page shows: the results less what changes on every cached rerun, the images, the
    privacy setting and the report's own code (an edited report renders again)."""
    from .._cache import make_key

    cells = [{k: v for k, v in c.items() if k != "seconds"} for c in results.get("cells") or []]
    rest = {k: v for k, v in results.items() if k not in ("cells", "created", "run")}
    run = {k: v for k, v in (results.get("run") or {}).items() if k not in _VOLATILE_RUN}
    here = Path(__file__).parent
    code = [(p.name, p.read_bytes()) for p in sorted(here.glob("*.py")) + [here / "report.js", here / "report.css"]]
    return make_key(cells=cells, rest=rest, run=run, images=image_ids, private=private, version=4,
                    code=hashlib.sha256(repr(code).encode()).hexdigest())


def write_report(pipeline: Any, results: dict[str, Any], n_images: int = 4, *, private: bool = False) -> Path:
    """``report.html``: one self-contained page (see ``page``), plus under ``report/`` the
    plots as SVG, ``leaderboard.png`` and (unless ``private``) ``image-<id>.png`` per gallery image.

    ``private``: no image pixels, thumbnails or image file paths anywhere in the page or under
    ``report/`` (ids only): no gallery, and image PNGs an earlier run left in ``report/`` are removed.
    Skipped when nothing it shows changed since the last rendering (fast cached reruns).
    """
    from .findings import findings
    from .gallery import composite, gallery
    from .page import page
    from .plots import all_plots

    workdir = pipeline.ctx.workdir
    out_dir = workdir / "report"
    html_path = workdir / "report.html"
    image_ids = [] if private else pipeline.data.usable("val")[:n_images]  # never an image skipped as unreadable
    key = _report_key(results, image_ids, private)
    stamp = out_dir / ".key"
    private_page = workdir / "private" / "gallery.html"  # the site's images: on site, never linked
    if html_path.exists() and stamp.exists() and stamp.read_text().strip() == key and (not private or private_page.exists()):
        return html_path
    plots = all_plots(results)
    shown = None if private else gallery(pipeline, results, n_images)
    if private:
        from .page import private_gallery_page

        atomic_write_text(private_page, private_gallery_page(results, gallery(pipeline, results, n_images)))
    atomic_write_text(html_path, page(results, findings(results), plots, shown, private=private))
    files: dict[str, bytes] = {"leaderboard.png": bar_chart(results)}
    svgs = [("instance-awareness", plots["instance"]), ("instance-separability", plots.get("separability")), ("stages", plots["stages"]),
            ("label-efficiency", plots["label_efficiency"])]
    svgs += [(f"cost-{k}", svg) for k, _, svg in plots["costs"]]
    files.update({f"{name}.svg": svg.encode() for name, svg in svgs if svg})
    for entry in (shown or {}).get("images", []):
        files[f"image-{entry['id']}.png"] = composite(entry)
    for name, data in files.items():
        atomic_write_bytes(out_dir / name, data)
    for old in [*out_dir.glob("image-*.png"), *out_dir.glob("*.svg")]:
        if old.name not in files:  # an earlier run's gallery (or a private rerun) or plot: not this report's
            old.unlink()
    atomic_write_text(stamp, key)
    return html_path


def write_outputs(pipeline: Any, results: dict[str, Any], *, report: bool = True) -> Path | None:
    """results.json (the old one kept as results.previous.json if it had cells that are no longer
    ``ok``), leaderboard.md, leaderboard.csv and (optionally) report.html in the workdir; returns the
    report's path, or ``None`` when it was not written."""
    from .._workdir import keep_previous_results

    ctx = pipeline.ctx
    workdir = ctx.workdir
    previous = keep_previous_results(workdir, results)
    if previous is not None:
        ctx.say(f"warning: cells that were ok in the last results are not now; the old results are kept in {previous}")
    atomic_write_json(workdir / "results.json", dict(results))
    atomic_write_text(workdir / "leaderboard.md", render(results, "markdown"))
    atomic_write_text(workdir / "leaderboard.csv", render(results, "csv"))
    if not report:
        return None
    try:
        private = bool(getattr(ctx, "private", False) or getattr(ctx.options, "private", False))
        return write_report(pipeline, results, ctx.options.report_images, private=private)
    except Exception as err:  # the numbers are written; a picture problem must not fail the run
        ctx.log_failure("report", err)
        print(f"warning: report.html not written: {type(err).__name__}: {err} (see {ctx.log_path})", file=sys.stderr)
        return None
