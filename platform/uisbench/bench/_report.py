"""Leaderboard tables (table, markdown, csv, json) from results.json, and the picture report.

Tables follow lm-eval's ``make_table``: one row per cell, arrows from ``higher_is_better``, a status
column. Calibration backbones (oracles that read ground truth) are listed in their own table.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text

FORMATS = ("table", "markdown", "json", "csv")

#: (column title, stage, metric, value) of the key numbers, in display order; ``*`` matches digits.
_COLUMNS: tuple[tuple[str, str, str, str], ...] = (
    ("pm AP50mask", "pseudo-masks", "coco", "AP50mask"),
    ("pm APmask", "pseudo-masks", "coco", "APmask"),
    ("pm AR@mask", "pseudo-masks", "coco", "AR*mask"),
    ("st AP50mask", "student", "coco", "AP50mask"),
    ("st APmask", "student", "coco", "APmask"),
    ("st AP50box", "student", "coco", "AP50box"),
    ("st AR@mask", "student", "coco", "AR*mask"),
    ("multi-inst recall", "pseudo-masks", "instance-awareness", "recall_multi"),
    ("single-inst recall", "pseudo-masks", "instance-awareness", "recall_single"),
    ("recall ratio", "pseudo-masks", "instance-awareness", "recall_ratio"),
    ("separability AUROC", "pseudo-masks", "instance-awareness", "separability_auroc"),
    ("pm count MAE", "pseudo-masks", "count-error", "count_mae"),
)


def _stage_block(cell: dict[str, Any], stage: str) -> dict[str, Any]:
    block = cell.get("pseudo_masks") if stage == "pseudo-masks" else cell.get("student_stage")
    return (block or {}).get("metrics") or {}


def _lookup(cell: dict[str, Any], stage: str, metric: str, value: str) -> tuple[float | None, bool | None, str]:
    """(value, higher_is_better, actual value name) of one number of a cell."""
    result = _stage_block(cell, stage).get(metric) or {}
    values = result.get("values") or {}
    name = value
    if "*" in value:
        prefix, suffix = value.split("*")
        matches = [k for k in values if k.startswith(prefix) and k.endswith(suffix) and k[len(prefix) : -len(suffix) or None].isdigit()]
        if not matches:
            return None, None, value.replace("*", "")
        name = sorted(matches, key=lambda k: int(k[len(prefix) : -len(suffix)]))[0]
    hib = (result.get("higher_is_better") or {}).get(name)
    return values.get(name), hib, name


def _cost_cells(cell: dict[str, Any]) -> dict[str, Any]:
    timings = cell.get("timings") or {}
    feats = timings.get("features") or {}
    total = sum(float(t.get("seconds") or 0.0) for t in timings.values())
    return {"features img/s": feats.get("images_per_s"), "stage seconds": round(total, 2) if timings else None}


def status_text(cell: dict[str, Any], width: int | None = None) -> str:
    if cell["status"] == "ok" or not cell.get("reason"):
        return cell["status"]
    text = f"{cell['status']}: {' '.join(cell['reason'].split())}"
    return text if width is None or len(text) <= width else text[: width - 3] + "..."


def primary_value(results: dict[str, Any], cell: dict[str, Any]) -> float | None:
    pm = results.get("primary_metric") or {"stage": "pseudo-masks", "metric": "coco", "value": "AP50mask"}
    return _lookup(cell, pm["stage"], pm["metric"], pm["value"])[0]


def leaderboard(results: dict[str, Any]) -> dict[str, Any]:
    """Rows of the leaderboard: ``{"columns", "rows", "calibration", "primary", "header"}``."""
    cells = results.get("cells", [])
    any_student = any(c.get("student") for c in cells)
    columns = ["backbone", "masker"] + (["student"] if any_student else [])
    number_cols: list[tuple[str, str, str, str]] = []
    arrows: dict[str, str] = {}
    for title, stage, metric, value in _COLUMNS:
        found = [_lookup(c, stage, metric, value) for c in cells]
        present = [
            f for f, c in zip(found, cells, strict=True) if f[2] in ((_stage_block(c, stage).get(metric) or {}).get("values") or {})
        ]
        if not present:
            continue
        name = present[0][2]
        shown = title.replace("AR@", name[:-4] if name.endswith("mask") and name.startswith("AR") else "AR@") if "AR@" in title else title
        number_cols.append((shown, stage, metric, name))
        hib = next((f[1] for f in present if f[1] is not None), None)
        arrows[shown] = "" if hib is None else (" ↑" if hib else " ↓")
    columns += [t for t, *_ in number_cols] + ["features img/s", "stage seconds", "status"]
    rows, calibration = [], []
    for cell in cells:
        row: dict[str, Any] = {"backbone": cell["backbone"], "masker": cell["masker"]}
        if any_student:
            row["student"] = cell.get("student") or "-"
        for title, stage, metric, name in number_cols:
            row[title] = _lookup(cell, stage, metric, name)[0]
        row.update(_cost_cells(cell))
        row["status"] = status_text(cell)
        row["_primary"] = primary_value(results, cell)
        row["_secondary"] = _lookup(cell, "pseudo-masks", "coco", "AP50mask")[0]
        row["_pretrained"] = cell.get("pretrained")
        (calibration if cell.get("calibration") else rows).append(row)
    for group in (rows, calibration):
        group.sort(
            key=lambda r: (
                r["_primary"] is None,
                -(r["_primary"] or 0.0),
                r["_secondary"] is None,
                -(r["_secondary"] or 0.0),
                r["backbone"],
                r["masker"],
                str(r.get("student")),
            )
        )
    primary = results.get("primary_metric") or {}
    return {
        "columns": columns,
        "arrows": {**arrows, "features img/s": " ↑", "stage seconds": " ↓"},
        "rows": rows,
        "calibration": calibration,
        "primary": primary,
        "header": _header_lines(results),
    }


def _header_lines(results: dict[str, Any]) -> list[str]:
    ds = results.get("dataset", {})
    run = results.get("run", {})
    prov = results.get("provenance", {})
    pm = results.get("primary_metric", {})
    splits = ds.get("splits", {})
    sizes = ", ".join(f"{k} {v.get('images')}" for k, v in splits.items())
    git = prov.get("git") or {}
    lines = [
        f"uisbench {prov.get('uisbench', '?')} leaderboard - dataset {ds.get('name', '?')} ({sizes}); "
        f"device {run.get('device', '?')} ({run.get('hardware', '?')}); seed {run.get('seed')}",
        f"sorted by {pm.get('stage', '?')} {pm.get('metric', '?')} {pm.get('value', '?')}; "
        f"torch {prov.get('torch')}; git {str(git.get('commit', 'n/a'))[:12]}{' (dirty)' if git.get('dirty') else ''}; "
        f"registry sha256 {str((prov.get('registry') or {}).get('sha256', ''))[:12]}",
    ]
    for failure in prov.get("plugin_failures", []):
        lines.append(f"plugin load failure: {failure['name']} ({failure['distribution']} {failure['version']}): {failure['error']}")
    return lines


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    return "-" if value is None else value


def _rows_for_table(board: dict[str, Any], rows: list[dict[str, Any]], width: int | None) -> list[list[Any]]:
    out = []
    for r in rows:
        line = [_fmt(r.get(c)) for c in board["columns"]]
        if width is not None:
            line[-1] = line[-1] if len(line[-1]) <= width else line[-1][: width - 3] + "..."
        out.append(line)
    return out


def render(results: dict[str, Any], fmt: str = "table") -> str:
    """The leaderboard as text in ``fmt`` (table, markdown, json, csv)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    board = leaderboard(results)
    headers = [c + board["arrows"].get(c, "") for c in board["columns"]]
    if fmt == "json":
        def clean(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]

        return json.dumps(
            {
                "primary_metric": board["primary"],
                "columns": board["columns"],
                "rows": clean(board["rows"]),
                "calibration": clean(board["calibration"]),
                "header": board["header"],
            },
            indent=2,
        )
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(board["columns"] + ["calibration", "pretrained"])
        for group, calib in ((board["rows"], False), (board["calibration"], True)):
            for r in group:
                writer.writerow(["" if r.get(c) is None else r.get(c) for c in board["columns"]] + [calib, "" if r["_pretrained"] is None else r["_pretrained"]])
        return buf.getvalue()
    from tabulate import tabulate

    markdown = fmt == "markdown"
    tablefmt = "github" if markdown else "simple"
    width = None if markdown else 60
    parts = []
    if markdown:
        parts.append("# uisbench leaderboard\n")
        parts.extend(f"- {line}" for line in board["header"])
        parts.append("")
    else:
        parts.extend(board["header"])
        parts.append("")
    parts.append(tabulate(_rows_for_table(board, board["rows"], width), headers=headers, tablefmt=tablefmt, disable_numparse=True) if board["rows"] else "(no backbone rows)")
    if board["calibration"]:
        title = "Calibration backbones (read ground truth: upper bounds, not contenders)"
        parts.append("")
        parts.append(f"## {title}\n" if markdown else title + ":")
        parts.append(tabulate(_rows_for_table(board, board["calibration"], width), headers=headers, tablefmt=tablefmt, disable_numparse=True))
    return "\n".join(parts) + "\n"


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


def image_figure(engine: Any, results: dict[str, Any], image_id: int) -> bytes:
    """Image | ground truth, then one row per backbone x masker: pseudo-masks | student predictions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dataset = engine.dataset("val")
    image = dataset.load_image(image_id)
    gt = [g.segmentation for g in dataset.ground_truth(image_id)] if engine.has_ground_truth else []
    pairs = []
    for cell in results["cells"]:
        if (cell.get("pseudo_masks") or {}).get("status") == "ok" and (cell["backbone"], cell["masker"]) not in [p[:2] for p in pairs]:
            pairs.append((cell["backbone"], cell["masker"], cell.get("calibration", False)))
    students = list(engine.student_names)
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
        masks = engine.read_masks(b, m, "val")["predictions"].get(str(image_id), [])
        shown = _top(masks)
        axes[row][0].axis("on")
        label = f"{b}{' [calib.]' if calib else ''} / {m}"
        _overlay(axes[row][0], image, [p["segmentation"] for p in shown], f"{label}\npseudo-masks ({len(masks)})")
        for col, s in enumerate(students, start=1):
            cell = next((c for c in results["cells"] if c["backbone"] == b and c["masker"] == m and c["student"] == s), None)
            ax = axes[row][col]
            if cell and (cell.get("student_stage") or {}).get("status") == "ok":
                preds = engine.read_student(b, m, s)["predictions"].get(str(image_id), [])
                ax.axis("on")
                _overlay(ax, image, [p["segmentation"] for p in _top(preds)], f"{s} predictions ({len(_top(preds))} shown)")
            elif cell:
                ax.text(0.5, 0.5, f"{s}: {status_text(cell, 40)}", ha="center", va="center", fontsize=7, wrap=True)
    fig.tight_layout()
    return _figure_png(fig)


def bar_chart(results: dict[str, Any]) -> bytes:
    """Horizontal bars per cell, in leaderboard order: pseudo-mask and student AP50mask side by side;
    calibration rows hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    board = leaderboard(results)
    entries = [(r, False) for r in board["rows"]] + [(r, True) for r in board["calibration"]]
    by_key = {(c["backbone"], c["masker"], c.get("student") or "-"): c for c in results["cells"]}
    series = [("pseudo-masks", "pseudo-mask AP50mask", "#3a76af"), ("student", "student AP50mask", "#e07b39")]
    values = {
        name: [_lookup(by_key[(r["backbone"], r["masker"], r.get("student", "-"))], name, "coco", "AP50mask")[0] for r, _ in entries]
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
    ax.set_xlabel("AP50mask (higher is better; hatched = calibration backbone reading ground truth)", fontsize=8)
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


def write_report(engine: Any, results: dict[str, Any], n_images: int = 4) -> Path:
    """``report.html`` (self-contained, PNGs inlined) plus the PNGs under ``report/``.

    Skipped when nothing it shows changed since the last rendering (fast cached reruns).
    """
    from tabulate import tabulate

    out_dir = engine.workdir / "report"
    html_path = engine.workdir / "report.html"
    image_ids = engine.ids("val")[:n_images]
    key = _report_key(results, image_ids)
    stamp = out_dir / ".key"
    if html_path.exists() and stamp.exists() and stamp.read_text().strip() == key:
        return html_path
    pngs: list[tuple[str, str, bytes]] = [("leaderboard.png", "Leaderboard", bar_chart(results))]
    for image_id in image_ids:
        pngs.append((f"image-{image_id}.png", f"Validation image {image_id}", image_figure(engine, results, image_id)))
    for name, _, data in pngs:
        atomic_write_bytes(out_dir / name, data)
    board = leaderboard(results)
    headers = [c + board["arrows"].get(c, "") for c in board["columns"]]
    table = tabulate(_rows_for_table(board, board["rows"], None), headers=headers, tablefmt="html", disable_numparse=True)
    calib = tabulate(_rows_for_table(board, board["calibration"], None), headers=headers, tablefmt="html", disable_numparse=True) if board["calibration"] else ""
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
        parts.append(f"<h2>{_html.escape(title)}</h2><img alt='{name}' src='data:image/png;base64,{base64.b64encode(data).decode()}'>")
    parts.append("</body></html>")
    atomic_write_text(html_path, "\n".join(parts))
    atomic_write_text(stamp, key)
    return html_path


def write_outputs(engine: Any, results: dict[str, Any], *, report: bool = True) -> None:
    """results.json, leaderboard.md, leaderboard.csv and (optionally) report.html in the workdir."""
    workdir = engine.workdir
    atomic_write_json(workdir / "results.json", dict(results))
    atomic_write_text(workdir / "leaderboard.md", render(results, "markdown"))
    atomic_write_text(workdir / "leaderboard.csv", render(results, "csv"))
    if report:
        try:
            write_report(engine, results, engine.opt.report_images)
        except Exception as err:  # the numbers are written; a picture problem must not fail the run
            engine.log_failure("report", err)
            print(f"warning: report.html not written: {type(err).__name__}: {err} (see {engine.log_path})", file=sys.stderr)
