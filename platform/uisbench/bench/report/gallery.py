"""The report's image gallery: per validation image its pixels, the ground truth and every
backbone x masker's pseudo-masks and student predictions, as small transparent PNG layers.

Each layer is a palette PNG at the image's own resolution (fill at 45 % opacity, a 1-2 px edge at
full opacity), drawn over the image by the page at 256 px or the image's size if larger, upscaled
nearest-neighbour (CSS ``image-rendering: pixelated``): a mask's edge stays where the mask ends.
Only images of ``pipeline.data.usable("val")`` are read, so an image skipped as unreadable is never
loaded again. Never called for private reports.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from .._sources import row_key

#: fill colours of the masks (tab10), drawn in order of decreasing area so small masks stay on top
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75), (227, 119, 194),
           (188, 189, 34), (23, 190, 207), (127, 127, 127)]
FILL_ALPHA = 115
#: at most this many masks per layer, those scoring >= SCORE (or the best 3 when none does)
TOP_K, SCORE = 20, 0.5
#: display size: at least this many px on the longer side
MIN_DISPLAY = 256


def _png(array: Any, palette: list[int] | None = None, alpha: bytes | None = None) -> bytes:
    from PIL import Image

    if palette is None:
        image = Image.fromarray(array)
    else:
        image = Image.fromarray(array)  # mode L; putpalette makes it P, the values as indices
        image.putpalette(palette)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6, **({"transparency": alpha} if alpha is not None else {}))
    return buf.getvalue()


def data_uri(data: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64,{base64.b64encode(data).decode()}"


def image_uri(image: Any) -> str:
    """The image itself: PNG when small (exact pixels), JPEG (quality 90) when large."""
    from PIL import Image

    h, w = image.shape[:2]
    if h * w <= 320 * 320:
        return data_uri(_png(image))
    buf = io.BytesIO()
    Image.fromarray(image).convert("RGB").save(buf, format="JPEG", quality=90)
    return data_uri(buf.getvalue(), "jpeg")


def _palette() -> tuple[list[int], bytes]:
    colours = [(0, 0, 0)] + COLOURS + COLOURS  # 0 transparent, 1..10 fills, 11..20 edges
    alpha = bytes([0] + [FILL_ALPHA] * len(COLOURS) + [255] * len(COLOURS))
    flat = [v for rgb in colours for v in rgb]
    return flat + [0] * (768 - len(flat)), alpha


def top(preds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ranked = sorted(preds, key=lambda p: -float(p.get("score", 1.0)))
    kept = [p for p in ranked if float(p.get("score", 1.0)) >= SCORE][:TOP_K]
    return kept or ranked[:3]


def layer(rles: list[dict[str, Any]], height: int, width: int) -> str | None:
    """A transparent PNG (data URI) of ``rles`` painted over an ``height x width`` image."""
    import numpy as np

    from ... import masks as mask_utils

    masks = []
    for rle in rles:
        m = mask_utils.decode(rle).astype(bool)
        if m.shape == (height, width) and m.any():
            masks.append(m)
    if not masks:
        return None
    labels = np.zeros((height, width), dtype=np.int16)  # 1 + index of the mask on top, 0: none
    for k in sorted(range(len(masks)), key=lambda k: -int(masks[k].sum())):  # largest first: small masks stay on top
        labels[masks[k]] = k + 1
    edge = np.zeros((height, width), dtype=bool)
    for step in range(1, 3 if max(height, width) >= 400 else 2):  # 1 px edges, 2 px on large images
        edge[step:, :] |= labels[step:, :] != labels[:-step, :]
        edge[:-step, :] |= labels[:-step, :] != labels[step:, :]
        edge[:, step:] |= labels[:, step:] != labels[:, :-step]
        edge[:, :-step] |= labels[:, :-step] != labels[:, step:]
    colour = (labels - 1) % len(COLOURS)
    canvas = np.where(labels > 0, 1 + colour + np.where(edge, len(COLOURS), 0), 0).astype(np.uint8)
    palette, alpha = _palette()
    return data_uri(_png(canvas, palette, alpha))


def _predictions(pipeline: Any, stage: Any, image_id: int) -> list[dict[str, Any]] | None:
    output = pipeline.peek(stage)
    if output is None:
        return None
    return list((output.summary.get("predictions") or {}).get(str(image_id), []))


def gallery(pipeline: Any, results: dict[str, Any], n_images: int) -> dict[str, Any]:
    """``{"images": [{"id", "width", "height", "src", "layers": {key: {"src", "n", "shown"}}}], "pairs", "students"}``:
    layer keys are ``gt``, ``pm|BACKBONE|MASKER`` and ``st|BACKBONE|MASKER|STUDENT``."""
    data = pipeline.data
    ids = data.usable("val")[: max(0, int(n_images))]  # never an image skipped as unreadable
    pairs: list[tuple[str, str, bool]] = []
    students: list[tuple[str, str, str]] = []
    for c in results.get("cells") or []:
        # an ensemble's masks once, under their source (the stage ignores the name in the backbone
        # place); a student cell on them only points at that row (``reported_in``)
        pm = c.get("pseudo_masks") or {}
        if pm.get("status") == "ok" and not pm.get("reported_in") and (row_key(c), c["masker"]) not in [p[:2] for p in pairs]:
            pairs.append((row_key(c), c["masker"], bool(c.get("calibration"))))
        if c.get("student") and (c.get("student_stage") or {}).get("status") == "ok":
            students.append((c["backbone"], c["masker"], c["student"]))
    if not ids or not pairs:
        return {"images": [], "pairs": pairs, "students": students}
    dataset = data.dataset("val")
    pm_stages = {(b, m): pipeline.pseudo_masks(b, m, "val") for b, m, _ in pairs}
    st_stages = {(b, m, s): pipeline.student(b, m, s) for b, m, s in students}
    images = []
    for image_id in ids:
        image = dataset.load_image(image_id)
        h, w = image.shape[:2]
        layers: dict[str, dict[str, Any]] = {}
        if data.has_ground_truth:
            gt = [g.segmentation for g in dataset.ground_truth(image_id) if not getattr(g, "iscrowd", 0)]
            layers["gt"] = {"src": layer(gt, h, w), "n": len(gt), "shown": len(gt)}
        for (b, m), stage in pm_stages.items():
            preds = _predictions(pipeline, stage, image_id)
            if preds is not None:
                shown = top(preds)
                layers[f"pm|{b}|{m}"] = {"src": layer([p["segmentation"] for p in shown], h, w), "n": len(preds), "shown": len(shown)}
        for (b, m, s), stage in st_stages.items():
            preds = _predictions(pipeline, stage, image_id)
            if preds is not None:
                shown = top(preds)
                layers[f"st|{b}|{m}|{s}"] = {"src": layer([p["segmentation"] for p in shown], h, w), "n": len(preds), "shown": len(shown)}
        images.append({"id": int(image_id), "width": int(w), "height": int(h), "src": image_uri(image), "layers": layers})
    return {"images": images, "pairs": pairs, "students": students}


def composite(entry: dict[str, Any]) -> bytes:
    """One PNG of an image of the gallery: the image, the ground truth and every pseudo-mask layer in
    a row of tiles, upscaled like the page (``report/image-<id>.png``)."""
    from PIL import Image

    def load(uri: str) -> Any:
        return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))

    base = load(entry["src"]).convert("RGBA")
    scale = max(1, MIN_DISPLAY // max(base.size))
    size = (base.size[0] * scale, base.size[1] * scale)
    tiles = [base]
    for key, item in entry["layers"].items():
        if key == "gt" or key.startswith("pm|"):
            tile = base.copy()
            if item["src"]:
                tile.alpha_composite(load(item["src"]).convert("RGBA"))
            tiles.append(tile)
    sheet = Image.new("RGB", (len(tiles) * (size[0] + 4), size[1]), "white")
    for i, tile in enumerate(tiles):
        sheet.paste(tile.resize(size, Image.NEAREST).convert("RGB"), (i * (size[0] + 4), 0))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()
