"""The picture report: ``report.html`` (self-contained, PNGs inlined) and its PNGs, plus
:func:`write_outputs`, which writes every file of a finished run."""

from __future__ import annotations

import base64
import io
import sys
from pathlib import Path
from typing import Any

from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text
from ._leaderboard import _lookup, leaderboard, render, rows_for_table, status_text

# ---------------------------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------------------------


def _overlay(ax: Any, image: Any, rles: list[dict[str, Any]], title: str) -> None:
    import numpy as np

    from .. import masks as mask_utils

    ax.imshow(image)
    if rles:
        colours = _palette(len(rles))
        canvas = np.zeros((*image.shape[:2], 4), dtype=np.float32)
        for colour, rle in zip(colours, rles, strict=True):
            m = mask_utils.decode(rle).astype(bool)
            if m.shape != canvas.shape[:2]:
                continue
            canvas[m] = (*colour, 0.6)
        ax.imshow(canvas)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _palette(n: int) -> list[tuple[float, float, float]]:
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return [tuple(cmap(i % 20)[:3]) for i in range(n)]


def _top(preds: list[dict[str, Any]], threshold: float = 0.5, k: int = 20) -> list[dict[str, Any]]:
    ranked = sorted(preds, key=lambda p: -float(p.get("score", 0.0)))
    kept = [p for p in ranked if float(p.get("score", 0.0)) >= threshold][:k]
    return kept or ranked[:3]


def _figure_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _predictions(pipeline: Any, stage: Any, image_id: int) -> list[dict[str, Any]]:
    output = pipeline.peek(stage)
    return [] if output is None else output.summary["predictions"].get(str(image_id), [])


def image_figure(pipeline: Any, results: dict[str, Any], image_id: int) -> bytes:
    """Image | ground truth, then one row per backbone x masker: pseudo-masks | student predictions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dataset = pipeline.data.dataset("val")
    image = dataset.load_image(image_id)
    gt = [g.segmentation for g in dataset.ground_truth(image_id)] if pipeline.data.has_ground_truth else []
    pairs = []
    for cell in results["cells"]:
        if (cell.get("pseudo_masks") or {}).get("status") == "ok" and (cell["backbone"], cell["masker"]) not in [p[:2] for p in pairs]:
            pairs.append((cell["backbone"], cell["masker"], cell.get("calibration", False)))
    students = list(pipeline.plan.students)
    ncols = max(2, 1 + len(students))
    nrows = 1 + len(pairs)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.3 * ncols, 2.4 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes[0][0].axis("on")
    _overlay(axes[0][0], image, [], f"val image {image_id}")
    axes[0][1].axis("on")
    _overlay(axes[0][1], image, gt, f"ground truth ({len(gt)})")
    for row, (b, m, calib) in enumerate(pairs, start=1):
        masks = _predictions(pipeline, pipeline.pseudo_masks(b, m, "val"), image_id)
        shown = _top(masks)
        axes[row][0].axis("on")
        label = f"{b}{' [calib.]' if calib else ''} / {m}"
        _overlay(axes[row][0], image, [p["segmentation"] for p in shown], f"{label}\npseudo-masks ({len(masks)})")
        for col, s in enumerate(students, start=1):
            cell = next((c for c in results["cells"] if c["backbone"] == b and c["masker"] == m and c["student"] == s), None)
            ax = axes[row][col]
            if cell and (cell.get("student_stage") or {}).get("status") == "ok":
                preds = _predictions(pipeline, pipeline.student(b, m, s), image_id)
                ax.axis("on")
                _overlay(ax, image, [p["segmentation"] for p in _top(preds)], f"{s} predictions ({len(_top(preds))} shown)")
            elif cell:
                ax.text(0.5, 0.5, f"{s}: {status_text(cell, 40)}", ha="center", va="center", fontsize=7, wrap=True)
    fig.tight_layout()
    return _figure_png(fig)


def bar_chart(results: dict[str, Any]) -> bytes:
    """Horizontal bars per cell, in leaderboard order: the ranking value at the pseudo-mask and the
    student stage side by side; calibration rows hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    board = leaderboard(results)
    entries = [(r, False) for r in board["rows"]] + [(r, True) for r in board["calibration"]]
    by_key = {(c["backbone"], c["masker"], c.get("student") or "-"): c for c in results["cells"]}
    metric, value = board["primary"].get("metric") or "", board["primary"].get("value") or ""
    series = [("pseudo-masks", f"pseudo-mask {value}", "#3a76af"), ("student", f"student {value}", "#e07b39")]
    values = {
        name: [_lookup(by_key[(r["backbone"], r["masker"], r.get("student", "-"))], name, metric, value)[0] for r, _ in entries]
        for name, _, _ in series
    }
    series = [s for s in series if any(v is not None for v in values[s[0]])]
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * max(3, len(entries)) + 1.2))
    height = 0.8 / max(1, len(series))
    top = 1.0
    for k, (name, label, colour) in enumerate(series):
        for i, ((_, calib), v) in enumerate(zip(entries, values[name], strict=True)):
            if v is None:
                continue
            y = i - 0.4 + height * (k + 0.5)
            ax.barh(y, v, height=height * 0.95, color=colour, hatch="//" if calib else None, edgecolor="white" if calib else colour,
                    label=label if i == next(j for j, x in enumerate(values[name]) if x is not None) else None)
            ax.text(v, y, f" {v:.3f}", va="center", fontsize=7)
            top = max(top, v)
    labels = [
        " / ".join(str(r.get(k)) for k in ("backbone", "masker", "student") if r.get(k) not in (None, "-")) + (" [calib.]" if calib else "")
        + ("" if r["status"] == "ok" else f" ({r['status'].split(':')[0]})")
        for r, calib in entries
    ]
    ax.set_yticks(range(len(entries)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.15 * top)
    ax.set_xlabel(f"{metric} {value} (hatched = calibration backbone reading ground truth)", fontsize=8)
    if series:
        ax.legend(fontsize=7, loc="lower right")
    else:
        ax.text(0.5, 0.5, "no scored cells", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(f"uisbench leaderboard (sorted by {board['primary'].get('stage')} {board['primary'].get('value')})", fontsize=10)
    fig.tight_layout()
    return _figure_png(fig)


def _report_key(results: dict[str, Any], image_ids: list[int]) -> str:
    from ._cache import make_key

    cells = [{k: v for k, v in c.items() if k not in ("timings", "seconds")} for c in results["cells"]]
    return make_key(cells=cells, images=image_ids, primary=results.get("primary_metric"), version=3)


def write_report(pipeline: Any, results: dict[str, Any], n_images: int = 4) -> Path:
    """``report.html`` (self-contained, PNGs inlined) plus the PNGs under ``report/``.

    Skipped when nothing it shows changed since the last rendering (fast cached reruns).
    """
    from tabulate import tabulate

    workdir = pipeline.ctx.workdir
    out_dir = workdir / "report"
    html_path = workdir / "report.html"
    image_ids = pipeline.data.usable("val")[:n_images]  # never an image skipped as unreadable
    key = _report_key(results, image_ids)
    stamp = out_dir / ".key"
    if html_path.exists() and stamp.exists() and stamp.read_text().strip() == key:
        return html_path
    pngs: list[tuple[str, str, bytes]] = [("leaderboard.png", "Leaderboard", bar_chart(results))]
    for image_id in image_ids:
        pngs.append((f"image-{image_id}.png", f"Validation image {image_id}", image_figure(pipeline, results, image_id)))
    for name, _, data in pngs:
        atomic_write_bytes(out_dir / name, data)
    board = leaderboard(results)
    headers = [c + board["arrows"].get(c, "") for c in board["columns"]]
    table = tabulate(rows_for_table(board, board["rows"], None), headers=headers, tablefmt="html", disable_numparse=True)
    calib = tabulate(rows_for_table(board, board["calibration"], None), headers=headers, tablefmt="html", disable_numparse=True) if board["calibration"] else ""
    import html as _html

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>uisbench report</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px}img{max-width:100%}</style></head><body>",
        "<h1>uisbench report</h1>",
        "<ul>" + "".join(f"<li>{_html.escape(line)}</li>" for line in board["header"]) + "</ul>",
        "<h2>Leaderboard</h2>",
        table,
    ]
    if calib:
        parts += ["<h2>Calibration backbones (read ground truth: upper bounds)</h2>", calib]
    for name, title, data in pngs:
        parts.append(f"<h2>{_html.escape(title)}</h2><img alt='{_html.escape(name)}' src='data:image/png;base64,{base64.b64encode(data).decode()}'>")
    parts.append("</body></html>")
    atomic_write_text(html_path, "\n".join(parts))
    atomic_write_text(stamp, key)
    return html_path


def write_outputs(pipeline: Any, results: dict[str, Any], *, report: bool = True) -> Path | None:
    """results.json (the old one kept as results.previous.json if it had cells that are no longer
    ``ok``), leaderboard.md, leaderboard.csv and (optionally) report.html in the workdir; returns the
    report's path, or ``None`` when it was not written."""
    from ._workdir import keep_previous_results

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
        return write_report(pipeline, results, ctx.options.report_images)
    except Exception as err:  # the numbers are written; a picture problem must not fail the run
        ctx.log_failure("report", err)
        print(f"warning: report.html not written: {type(err).__name__}: {err} (see {ctx.log_path})", file=sys.stderr)
        return None
