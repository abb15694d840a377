#!/usr/bin/env python3
"""Regenerate the README's "Your own images" walk-through and its figures on scikit-image's photographs.

    pip install -e '.[docs]'        # scikit-image: its photographs ship inside the wheel (no download)
    python scripts/own_images_walkthrough.py [--out runs/own-images] [--figures docs/own-images]

What a team would do, step by step, in ``--out`` (every command is printed before it runs, from
that folder, so it reads as the README's):

1. **Unlabelled photos.** Writes seven photographs bundled in ``skimage.data`` (astronaut, camera,
   chelsea, coffee, coins, rocket, immunohistochemistry) as PNG files into ``photos/``, a registry
   file ``mine.yaml`` with an ``images`` entry, and runs ``platform bench --private`` on CPU with the
   backbones that need no download (``pixels``, the ``position`` control, ``oracle-instance``, which
   is skipped on a folder without ground truth) and no student.
2. **A few labelled.** A team would draw the labels in a tool that exports COCO json. For a demo
   that anyone can reproduce, a command draws them instead, with classical segmentation (no
   learning, nothing from the bench): the coins photograph by scikit-image's coin tutorial (Sobel
   elevation map, watershed from dark and bright markers, holes filled, one instance per coin;
   held out: ``val-labels.json``), and the immunohistochemistry photograph by its haematoxylin
   channel (Otsu threshold, distance-transform watershed, one instance per nucleus; rough labels
   that miss crowded nuclei; the few-label stage's pool: ``train-labels.json``). Both files are
   written into ``photos/`` as a team's export would be; overlays to check them by eye go to
   ``labels/``. Then it adds a ``coco`` entry with ``train_unlabelled: true``, a shorter CPU
   student (60 iterations of 2 images) and a one-label ``finetune`` entry to ``mine.yaml`` and runs
   the labelled bench with k-means, the masker that finds more than one region per photo in step 1.
3. **Figures** into ``--figures`` (PNG, committed as the README's): the labels, the label-free
   measures of step 1, a screenshot of step 1's local private gallery (headless Chromium), and the
   labelled result of step 2. The numbers the README quotes are printed at the end.

The two benches take a few minutes on 2 CPU cores; a rerun reuses their caches (``--fresh`` deletes
``--out`` first). Nothing here is committed but the figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "coins", "rocket", "immunohistochemistry")
BACKBONES = "pixels,position,oracle-instance"
MASKERS = "kmeans,ncut"
MAX_FIGURE_BYTES = 250_000

REGISTRY_UNLABELLED = """\
version: 1
datasets:
  photos: {plugin: images, root: photos}
"""

# Step 2 adds these: the held-out coins, the one-image labelled pool, every other photo unlabelled, a
# shorter student, and a few-label entry sized for one labelled train image (few-labels-cpu draws 8 and 24).
REGISTRY_LABELLED = """\
  photos-labelled:
    plugin: coco
    root: photos
    images: .
    annotations: val-labels.json          # held out: the coins
    train_images: .
    train_annotations: train-labels.json  # the few-label stage draws from these: the nuclei
    train_unlabelled: true                # + every other photo, pseudo-labelled only
students:
  # the shipped CPU student `maskrcnn` with 60 iterations of 2 images instead of 200 of 4 (2 shared cores)
  maskrcnn-short:
    plugin: maskrcnn
    iterations: 60
    batch_size: 2
    optimizer: adamw
    lr: 0.001
    warmup_iters: 5
    lr_steps: [0.8]
    fpn_channels: 32
    representation_size: 128
    mask_head_channels: 32
    anchor_sizes: [8, 16, 32, 64, 128]
    rpn_post_nms_top_n_train: 300
    rpn_batch_size_per_image: 64
    box_batch_size_per_image: 64
    copy_paste: false
    feature_cache_mb: 256
    checkpoint_every: 20
finetune:
  photos-few:
    budgets: [0, 1]
    selection: [random]
    seeds: 1
    student: {iterations: 30, lr: 0.0005, warmup_iters: 5, lr_steps: [0.8], droploss: false, checkpoint_every: 10}
"""


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


# -- the photographs and their labels ------------------------------------------------------------------


def write_photos(folder: Path) -> None:
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        pixels = getattr(skimage.data, name)()
        Image.fromarray(pixels).convert("RGB").save(folder / f"{name}.png")  # camera and coins are grey
    print(f"wrote {len(PHOTOS)} photographs to {folder}: {', '.join(PHOTOS)}")


def label_coins() -> Any:
    """scikit-image's coin tutorial ("Comparing edge-based and region-based segmentation"): region
    growing by watershed on the Sobel elevation map, from markers of sure background (< 30) and
    sure coin (> 150); then each connected coin is an instance."""
    import numpy as np
    import skimage.data
    from scipy import ndimage as ndi
    from skimage.filters import sobel
    from skimage.segmentation import watershed

    image = skimage.data.coins()
    markers = np.zeros_like(image)
    markers[image < 30] = 1
    markers[image > 150] = 2
    coins = ndi.binary_fill_holes(watershed(sobel(image), markers) == 2)
    labels, _ = ndi.label(coins)
    return _drop_specks(labels, min_pixels=100)  # the tutorial's specks of a few pixels are no coins


def label_nuclei() -> Any:
    """Nuclei of the immunohistochemistry photograph: the haematoxylin channel (colour deconvolution),
    Otsu threshold, opening and hole filling, then a distance-transform watershed splits touching
    nuclei (one seed per local maximum at least 7 px apart)."""
    import numpy as np
    import skimage.data
    from scipy import ndimage as ndi
    from skimage.color import rgb2hed
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    haematoxylin = rgb2hed(skimage.data.immunohistochemistry())[..., 0]
    nuclei = ndi.binary_fill_holes(ndi.binary_opening(haematoxylin > threshold_otsu(haematoxylin), iterations=2))
    nuclei = _drop_specks(ndi.label(nuclei)[0], min_pixels=150) > 0
    distance = ndi.distance_transform_edt(nuclei)
    peaks = peak_local_max(distance, min_distance=7, labels=ndi.label(nuclei)[0], exclude_border=False)
    markers = np.zeros(nuclei.shape, int)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return _drop_specks(watershed(-distance, markers, mask=nuclei), min_pixels=40)


def _drop_specks(labels: Any, min_pixels: int) -> Any:
    """Relabel 1..N in label order, leaving out regions under ``min_pixels``."""
    import numpy as np

    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    keep = ids[counts >= min_pixels]
    table = np.zeros(int(labels.max()) + 1, int)
    table[keep] = np.arange(1, len(keep) + 1)
    return table[labels]


def coco_file(entries: list[tuple[int, str, Any, str]]) -> dict[str, Any]:
    """A COCO instances json (compressed RLE masks) of ``(image id, file name, label image, category)``."""
    import numpy as np
    from pycocotools import mask as mask_utils

    categories = sorted({category for *_, category in entries})
    out: dict[str, Any] = {"images": [], "annotations": [],
                           "categories": [{"id": i, "name": n} for i, n in enumerate(categories, start=1)]}
    for image_id, file_name, labels, category in entries:
        out["images"].append({"id": image_id, "file_name": file_name, "width": int(labels.shape[1]),
                              "height": int(labels.shape[0])})
        for instance in range(1, int(labels.max()) + 1):
            rle = mask_utils.encode(np.asfortranarray(labels == instance, dtype=np.uint8))
            out["annotations"].append({
                "id": len(out["annotations"]) + 1, "image_id": image_id,
                "category_id": categories.index(category) + 1, "iscrowd": 0,
                "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
                "area": float(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)],
            })
    return out


def overlay(photo: Path, labels: Any, out: Path) -> None:
    """The photo with each labelled instance tinted and outlined, to check the labels by eye."""
    import numpy as np
    from PIL import Image
    from scipy import ndimage as ndi

    pixels = np.asarray(Image.open(photo).convert("RGB"), dtype=float)
    colours = np.random.default_rng(0).integers(40, 255, (int(labels.max()) + 1, 3))
    for instance in range(1, int(labels.max()) + 1):
        mask = labels == instance
        pixels[mask] = 0.55 * pixels[mask] + 0.45 * colours[instance]
        pixels[mask & ~ndi.binary_erosion(mask, iterations=2)] = colours[instance]
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(out)


def write_labels(out: Path) -> dict[str, int]:
    coins, nuclei = label_coins(), label_nuclei()
    photos = out / "photos"
    # ids as a COCO export numbers them; the val and train files name disjoint images
    (photos / "val-labels.json").write_text(json.dumps(coco_file([(1, "coins.png", coins, "coin")])))
    (photos / "train-labels.json").write_text(json.dumps(coco_file([(1, "immunohistochemistry.png", nuclei, "nucleus")])))
    overlay(photos / "coins.png", coins, out / "labels" / "coins.png")
    overlay(photos / "immunohistochemistry.png", nuclei, out / "labels" / "immunohistochemistry.png")
    counts = {"coins": int(coins.max()), "nuclei": int(nuclei.max())}
    print(f"labels: {counts['coins']} coins (photos/val-labels.json), {counts['nuclei']} nuclei "
          f"(photos/train-labels.json); overlays in {out / 'labels'}")
    return counts


# -- the benches ---------------------------------------------------------------------------------------


def platform_command() -> list[str]:
    script = Path(sys.executable).with_name("platform")  # the venv this script runs in
    return [str(script)] if script.is_file() else [sys.executable, "-m", "uisbench.cli"]


def bench(out: Path, args: list[str]) -> dict[str, Any]:
    print("$ platform " + " ".join(args), flush=True)
    done = subprocess.run([*platform_command(), *args], cwd=out, check=False)
    if done.returncode != 0:
        raise SystemExit(f"platform {' '.join(args)} exited {done.returncode} (in {out})")
    workdir = out / args[args.index("--workdir") + 1]
    return json.loads((workdir / "results.json").read_text())


# -- figures -------------------------------------------------------------------------------------------


def _save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _shrink(path)


def _shrink(path: Path) -> None:
    """README figures stay under MAX_FIGURE_BYTES: a palette PNG first, then smaller until it fits."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    while True:
        image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        if path.stat().st_size <= MAX_FIGURE_BYTES:
            return
        image = image.resize((int(image.width * 0.85), int(image.height * 0.85)), Image.Resampling.LANCZOS)


def labels_figure(out: Path, counts: dict[str, int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fig, axes = plt.subplots(1, 2, figsize=(9.5, 4.0), gridspec_kw={"width_ratios": [384 / 303, 1.0]})
    for ax, name, title in ((axes[0], "coins", f"held out (val-labels.json): {counts['coins']} coins"),
                            (axes[1], "immunohistochemistry", f"to fine-tune on (train-labels.json): {counts['nuclei']} nuclei")):
        ax.imshow(Image.open(out / "labels" / f"{name}.png"))
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.suptitle("Labels drawn by a command (classical segmentation), standing in for a team's COCO export", fontsize=10)
    _save(fig, path)
    plt.close(fig)


def _cell_values(cell: dict[str, Any], stage: str, metric: str) -> tuple[dict[str, Any], dict[str, Any]]:
    part = ((cell.get(stage) or {}).get("metrics") or {}).get(metric) or {}
    return part.get("values") or {}, part.get("ci") or {}


def label_free_figure(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [c for c in results["cells"] if c["status"] == "ok"]
    names = [f"{c['backbone']} / {c['masker']}" + (" (control)" if c["calibration"] else "") for c in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12.5, 3.3), gridspec_kw={"width_ratios": [1, 1, 1.5]})
    for ax, value, label in ((axes[0], "masks_per_image", "masks per image"), (axes[1], "coverage", "image coverage")):
        for y, cell in enumerate(rows):
            values, ci = _cell_values(cell, "pseudo_masks", "label-free")
            v = values[value]
            lo, hi = ci.get(value) or (v, v)
            ax.errorbar(v, y, xerr=[[v - lo], [hi - v]], fmt="o", color="#2f6fb3", capsize=3)
        ax.set_yticks(range(len(rows)), names if ax is axes[0] else [""] * len(rows))
        ax.invert_yaxis()
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_xlim(0, None)
    axes[1].set_xlim(0, 1.02)
    pairs = []
    for a in results["label_free"]["agreement"]:
        pairs.append((f"agree: {a['a']} vs {a['b']}", a["value"], a["ci"]))
    for s in results["label_free"]["stability"]:
        for kind in ("flip", "rescale"):
            pairs.append((f"stable under {kind}: {s['row']}", s[kind], s["ci"][kind]))
    ax = axes[2]
    for y, (label, v, ci) in enumerate(pairs):
        lo, hi = ci or (v, v)
        ax.errorbar(v, y, xerr=[[v - lo], [hi - v]], fmt="o", color="#b35c00" if label.startswith("agree") else "#3a8a3a",
                    capsize=3)
    ax.set_yticks(range(len(pairs)), [p[0] for p in pairs], fontsize=8)
    ax.yaxis.tick_right()
    ax.invert_yaxis()
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("matched mask IoU")
    ax.grid(axis="x", alpha=0.3)
    n = results["dataset"]["splits"]["val"]["images"]
    fig.suptitle(f"Label-free measures of the pseudo-masks on {n} unlabelled photographs "
                 "(no ground truth used; whiskers: 95% bootstrap interval over the photos)", fontsize=10)
    _save(fig, path)
    plt.close(fig)


def gallery_shot(gallery: Path, path: Path, width: int, height: int) -> None:
    """A screenshot of a local private gallery's first screen (headless Chromium, as report_check.py
    takes them). The page is copied with its column widened, so that the photo and both rows' masks
    stand side by side; nothing else of the page changes."""
    sys.path.insert(0, str(REPO / "scripts"))
    from PIL import Image
    from report_check import find_chromium, run_chromium

    browser = find_chromium()
    if browser is None:
        raise SystemExit("the gallery figures need chromium (scripts/report_check.py looks for it)")
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "gallery.html"
        page.write_text(gallery.read_text(encoding="utf-8").replace("</head>", "<style>main{max-width:none}</style></head>", 1),
                        encoding="utf-8")
        shot = Path(tmp) / "gallery.png"
        taken = run_chromium(browser, [f"--window-size={width},{height}", "--virtual-time-budget=5000",
                                       f"--screenshot={shot}", page.as_uri()])
        if taken.returncode != 0 or not shot.is_file():
            raise SystemExit(f"chromium could not screenshot {gallery}: {taken.stderr[-500:]}")
        image = Image.open(shot).convert("RGB")
        path.parent.mkdir(parents=True, exist_ok=True)
        image.resize((image.width * 2 // 3, image.height * 2 // 3), Image.Resampling.LANCZOS).save(path)
    _shrink(path)


def labelled_figure(results: dict[str, Any], path: Path) -> None:
    """AP50mask on the held-out labels, every number the labelled run measured, on one axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = []  # (label, value, colour)
    for cell in results["cells"]:
        name = f"{cell['backbone']} / {cell['masker']}"
        role = " (calibration ceiling)" if cell["backbone"].startswith("oracle") else " (control)" if cell["calibration"] else ""
        value = _cell_values(cell, "pseudo_masks", "coco")[0].get("AP50mask")
        if value is not None:
            bars.append((f"{name} pseudo-masks{role}", value, "#8a8a8a" if role else "#2f6fb3"))
        value = _cell_values(cell, "student_stage", "coco")[0].get("AP50mask")
        if value is not None:
            bars.append((f"{name}: student on pseudo-masks", value, "#b35c00"))
    for row in (results.get("label_efficiency") or {}).get("rows") or []:
        name = f"{row['backbone']} / {row['masker']}"
        for point in row.get("pseudo") or []:
            if point["k"] and point.get("mean") is not None:
                bars.append((f"{name}: student fine-tuned on {point['k']} labelled photo(s)", point["mean"], "#b35c00"))
        for point in row.get("baseline") or []:
            if point.get("mean") is not None:
                bars.append((f"baseline: student trained on {point['k']} labelled photo(s) only", point["mean"], "#3a8a3a"))
    fig, ax = plt.subplots(figsize=(8.5, 0.42 * len(bars) + 0.9))
    for y, (_, value, colour) in enumerate(bars):
        ax.barh(y, value, color=colour)
        ax.text(value + 0.01, y, f"{value:.3f}", va="center", fontsize=9)
    ax.set_yticks(range(len(bars)), [b[0] for b in bars], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("AP50mask on the held-out coins (1 photo, 24 coins)")
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)
    plt.close(fig)


# -- main ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "own-images", help="where the photos, labels and runs go")
    parser.add_argument("--figures", type=Path, default=REPO / "docs" / "own-images", help="where the README figures go")
    parser.add_argument("--fresh", action="store_true", help="delete --out first (no cached stages)")
    args = parser.parse_args(argv)
    try:
        import skimage  # noqa: F401
    except ImportError:
        raise SystemExit("scikit-image is needed for its photographs: pip install -e '.[docs]'") from None
    out = args.out.resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)

    step("1. unlabelled photos")
    write_photos(out / "photos")
    (out / "mine.yaml").write_text(REGISTRY_UNLABELLED)
    unlabelled = bench(out, ["bench", "--registry", "mine.yaml", "--dataset", "photos", "--backbones", BACKBONES,
                             "--maskers", MASKERS, "--students", "none", "--private", "--workdir", "runs/photos"])

    step("2. a few labelled")
    counts = write_labels(out)
    (out / "mine.yaml").write_text(REGISTRY_UNLABELLED + REGISTRY_LABELLED)
    labelled = bench(out, ["bench", "--registry", "mine.yaml", "--dataset", "photos-labelled", "--backbones", BACKBONES,
                           "--maskers", "kmeans", "--students", "maskrcnn-short", "--finetune", "photos-few", "--private", "--workdir", "runs/photos-labelled"])

    step("3. figures")
    figures = args.figures.resolve()
    labels_figure(out, counts, figures / "labels.png")
    label_free_figure(unlabelled, figures / "label-free.png")
    gallery_shot(out / "runs" / "photos" / "private" / "gallery.html", figures / "gallery.png", 1700, 800)
    gallery_shot(out / "runs" / "photos-labelled" / "private" / "gallery.html", figures / "labelled-gallery.png", 1700, 600)
    labelled_figure(labelled, figures / "labelled.png")
    for png in sorted(figures.glob("*.png")):
        print(f"{png} ({png.stat().st_size // 1000} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
