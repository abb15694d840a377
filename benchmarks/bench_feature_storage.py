"""Benchmark: does storing features as float16 (or bfloat16) change MaskCut's graph and masks?

The bench caches backbone features (``platform/uisbench/bench/stages/features.py``; float32 since this
benchmark found that float16 changes masks of the token facet) and the ``ncut`` masker then thresholds the cosine similarity of the L2-normalised features at ``tau`` (0.2 at patch 16,
0.15 at patch 8). This script measures what the storage costs on real photographs:

- features: a timm ViT built through the registry API (plugin ``timm``, ``pretrained: false``, timm's
  init under ``torch.manual_seed(0)``, ``precision: fp32``), facet ``key`` of the last block (the
  ``blocks[-1].attn.qkv`` output, middle third, CLS dropped), 480 x 480 LANCZOS, ImageNet mean/std, on
  scikit-image's sample photographs; ``--facets key,token`` adds the output tokens of the last block
  after the final norm (a second, differently distributed feature type; trained weights are not
  available offline);
- storage: the float32 features are cast to the storage dtype and back to float32, as the masker sees
  them after the cache; ``float32`` (the identity) is a control row: the masker is deterministic, so
  it must show no change; ``bf16-autocast`` (optional, ``--storage ...,bf16-autocast``) extracts the
  features again under bf16 autocast (the backbones' ``precision: auto`` on CUDA) and stores them as
  float16, i.e. what a GPU bench run feeds the masker, against the float32 extraction;
- graph: the masker's own ``binary_affinity`` (``gram > tau``); an edge is an unordered pair of
  distinct patches, and a flipped edge one that is in one graph and not in the other;
- masks: ``maskcut_batch`` (torch solver, float32 working precision, one image per batch) with
  ``n_masks`` 3 and 4; the masks of the two runs are compared slot by slot, and a slot changed when
  the IoU of its two masks is below 1 (two empty masks: unchanged).

scikit-image is not a project dependency; install it outside the project's environment::

    .venv/bin/pip install --no-deps --target /tmp/skimage scikit-image lazy_loader imageio tifffile
    # all rows, 12 photos, both models, both facets: ~35 min on 2 CPU threads (patch 8 is ~90 % of it)
    PYTHONPATH=/tmp/skimage .venv/bin/python benchmarks/bench_feature_storage.py --storage float32,float16,bfloat16,bf16-autocast
    # the patch-16 model only: ~6 min
    PYTHONPATH=/tmp/skimage .venv/bin/python benchmarks/bench_feature_storage.py --models vit_small_patch16_224

The masks depend on the masker's exact rules (its tie rule, its solver): re-run after they change.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

#: scikit-image sample photographs (``skimage.data.<name>()``) that ship with the wheel.
DEFAULT_IMAGES = (
    "astronaut",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "retina",
    "rocket",
    "grass",
    "gravel",
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INSTALL_HINT = (
    "this benchmark reads scikit-image's sample photographs; install it outside the project's environment: "
    "`.venv/bin/pip install --no-deps --target /tmp/skimage scikit-image lazy_loader imageio tifffile` "
    "and run with `PYTHONPATH=/tmp/skimage`."
)


def load_photos(names):
    """``{name: uint8 (H, W, 3)}`` from ``skimage.data`` (grey images stacked, alpha dropped)."""
    import numpy as np

    try:
        from skimage import data
    except ImportError as err:
        raise SystemExit(f"bench_feature_storage: {INSTALL_HINT} ({err})") from err
    photos = {}
    for name in names:
        loader = getattr(data, name, None)
        if loader is None:
            raise SystemExit(f"bench_feature_storage: skimage.data has no image {name!r}.")
        img = np.asarray(loader())
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        photos[name] = np.ascontiguousarray(img[:, :, :3].astype(np.uint8))
    return photos


def extract(host, model, facet, photos, size, device, precision="fp32"):
    """float32 ``(B, C, h, w)`` features of ``photos`` (one image per forward: bounded memory at patch 8)."""
    import torch

    backbone = host.spec("backbones", "timm").build(
        model=model,
        pretrained=False,
        facet=facet,
        size=size,
        precision=precision,
        mean=list(IMAGENET_MEAN),
        std=list(IMAGENET_STD),
    )
    backbone.to(device)
    feats = []
    for i, img in enumerate(photos.values()):
        fm = backbone.extract(backbone.preprocess(img)[None], [i + 1])
        feats.append(fm.features.float().cpu())
    return torch.cat(feats), int(backbone.patch_size)


def edge_stats(f32, stored, tau):
    """(edges of the fp32 graph, flipped edges, max |cos difference|) over unordered pairs i < j."""
    import torch
    import torch.nn.functional as F

    from uisbench.spectral import binary_affinity

    B, C, h, w = f32.shape
    n = h * w
    upper = torch.triu(torch.ones((n, n), dtype=torch.bool), diagonal=1)
    edges = flipped = 0
    max_diff = 0.0
    for b in range(B):
        a = f32[b : b + 1].reshape(1, C, n).transpose(1, 2)
        s = stored[b : b + 1].reshape(1, C, n).transpose(1, 2)
        ga, gs = binary_affinity(a, tau)[0], binary_affinity(s, tau)[0]
        edges += int((ga & upper).sum())
        flipped += int(((ga ^ gs) & upper).sum())
        xa, xs = F.normalize(a.double(), dim=-1)[0], F.normalize(s.double(), dim=-1)[0]
        max_diff = max(max_diff, float((xa @ xa.T - xs @ xs.T).abs().max()))
    return edges, flipped, max_diff


def run_maskcut(feats, tau, n_masks, device):
    import numpy as np

    from uisbench_builtins.ncut import maskcut_batch

    return np.stack(
        [maskcut_batch(feats[b : b + 1].to(device), tau, n_masks, solver="torch")[0][0] for b in range(len(feats))]
    )


def changed_masks(ref, other):
    """(slots compared, slots whose masks differ (IoU < 1), lowest IoU among those)."""
    a, b = ref > 0, other > 0
    inter = (a & b).sum(axis=(-2, -1))
    union = (a | b).sum(axis=(-2, -1))
    changed = union != inter  # IoU < 1; two empty masks (union 0) are unchanged
    low = float((inter[changed] / union[changed]).min()) if changed.any() else float("nan")
    return int(a.shape[0] * a.shape[1]), int(changed.sum()), low


def recommendation(totals, overflow, what):
    """One line: the cheapest storage dtype that changed no mask on ``what``, with the figures behind it."""

    def figures(name):
        edges, flipped, compared, changed = totals[name]
        return f"{name}: {flipped} of {edges} edges flipped, {changed} of {compared} masks changed"

    head = f"Recommendation ({what}):"
    if totals.get("float32", [0, 0, 0, 0])[3]:
        return f"{head} none; the float32 control itself changed masks (the masker is not deterministic here)."
    for name in ("float16", "bfloat16"):
        if name in totals and name not in overflow and totals[name][3] == 0:
            others = "; ".join(figures(o) for o in totals if o not in ("float32", name))
            line = f"{head} {name} storage changes no MaskCut mask ({figures(name)}); it halves the cache."
            return line + (f" Also measured: {others}." if others else "")
    measured = "; ".join(figures(o) for o in totals if o != "float32")
    return f"{head} store float32; every reduced-precision storage changed some masks ({measured})."


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", default=",".join(DEFAULT_IMAGES), help="skimage.data names, comma-separated")
    ap.add_argument("--models", default="vit_small_patch16_224,vit_small_patch8_224")
    ap.add_argument("--facets", default="key,token", help="key (what MaskCut uses) and/or token")
    ap.add_argument(
        "--storage",
        default="float32,float16,bfloat16",
        help="storage dtypes (float32 is the control); bf16-autocast: bf16 extraction, float16 storage",
    )
    ap.add_argument("--n-masks", default="3,4")
    ap.add_argument("--size", type=int, default=480)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    import torch
    from tabulate import tabulate

    import uisbench

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "plugins"))
    from uisbench.spectral import default_tau

    torch.set_num_threads(args.threads)
    photos = load_photos([s for s in args.images.split(",") if s])
    storages = [s for s in args.storage.split(",") if s]
    n_masks_list = [int(s) for s in args.n_masks.split(",") if s]
    host = uisbench.host.load_plugins()
    print(
        f"device={args.device} threads={args.threads} torch={torch.__version__} size={args.size} "
        f"images={len(photos)} ({', '.join(photos)})"
    )

    rows, notes = [], []
    facets = [s for s in args.facets.split(",") if s]
    decisive = "key" if "key" in facets else facets[0]  # the recommendation rests on MaskCut's facet
    #: per storage, summed over models for the decisive facet: [edges, flipped, masks compared, masks changed]
    totals = {s: [0, 0, 0, 0] for s in storages}
    overflow = set()
    for model in [s for s in args.models.split(",") if s]:
        for facet in facets:
            t0 = time.perf_counter()
            f32, patch = extract(host, model, facet, photos, args.size, args.device)
            tau = default_tau(patch)
            B, C, h, w = f32.shape
            ref = {k: run_maskcut(f32, tau, k, args.device) for k in n_masks_list}
            for storage in storages:
                if storage == "bf16-autocast":
                    amp, _ = extract(host, model, facet, photos, args.size, args.device, precision="bf16")
                    stored = amp.to(torch.float16).float()
                    lost = int((stored != amp).sum())
                    notes.append(
                        f"{model} {facet}: float16 storage of bf16-autocast features changes {lost} of {amp.numel()} values"
                    )
                else:
                    stored = f32.to(getattr(torch, storage)).float()
                if not bool(torch.isfinite(stored).all()):
                    rows.append([model, facet, storage, B, h * w, "-", "overflow", "-", "-", "-", "-", "-"])
                    if facet == decisive:
                        overflow.add(storage)
                    continue
                edges, flipped, max_diff = edge_stats(f32, stored, tau)
                compared = changed = 0
                low = []
                for k in n_masks_list:
                    c, n_changed, lowest = changed_masks(ref[k], run_maskcut(stored, tau, k, args.device))
                    compared, changed = compared + c, changed + n_changed
                    if n_changed:
                        low.append(lowest)
                if facet == decisive:
                    for j, v in enumerate((edges, flipped, compared, changed)):
                        totals[storage][j] += v
                rows.append(
                    [
                        model,
                        facet,
                        storage,
                        B,
                        h * w,
                        edges,
                        flipped,
                        f"{100.0 * flipped / max(edges, 1):.4f}",
                        f"{max_diff:.2e}",
                        compared,
                        changed,
                        f"{min(low):.3f}" if low else "-",
                    ]
                )
            print(
                f"  {model} {facet}: tau={tau} grid={h}x{w} C={C} max|f|={float(f32.abs().max()):.3g} "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )

    headers = [
        "model",
        "facet",
        "storage",
        "images",
        "tokens",
        "edges total",
        "edges flipped",
        "flipped %",
        "max |dcos|",
        "masks compared",
        "masks changed",
        "min IoU changed",
    ]
    print()
    print(tabulate(rows, headers=headers, tablefmt="github"))
    print()
    for note in notes:
        print(note)
    print(recommendation(totals, overflow, f"facet {decisive}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
