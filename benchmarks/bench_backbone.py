"""Backbone throughput: uisbench's feature extraction vs a bare timm ``forward_features``, side by side.

Three paths on the same model architecture, the same batch size and the same device:

1. ``bare timm``: ``model.forward_features(batch)`` on a batch already on the device
   (``torch.inference_mode``, bf16 autocast on CUDA, fp32 on CPU): the ceiling.
2. ``uisbench extract``: ``backbone.extract(batch, ids)`` on the same device-resident batch (qkv hook,
   facet split, prefix drop, ``(B, C, h, w)`` float32 layout): the backbone's own overhead.
3. ``uisbench data path``: raw uint8 images -> ``uisbench.data.iter_batches`` (``backbone.preprocess`` in
   DataLoader workers) -> ``extract``, as the bench engine runs it; steady state (the first batch, which
   pays for worker start-up, is not counted).

The ratio ``images/s of the path / images/s of bare timm`` is printed; the target is >= 0.85 for the
data path on GPU. Random weights (speed does not depend on them), random images of ``--image-hw``.

CPU smoke run (seconds)::

    python benchmarks/bench_backbone.py

GPU run::

    python benchmarks/bench_backbone.py --device cuda --model vit_small_patch16_224 --size 480 --batch 64
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


class _RandomImages:
    """An in-memory dataset of random uint8 images (built lazily so workers share it by fork)."""

    def __new__(cls, n: int, height: int, width: int):
        import numpy as np

        import uisbench

        class RandomImages(uisbench.Dataset):
            has_ground_truth = False

            def __init__(self) -> None:
                rng = np.random.default_rng(0)
                self.images = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(min(n, 16))]
                self.n = n
                self.skipped = []

            def image_ids(self):
                return list(range(1, self.n + 1))

            def record(self, image_id):
                return uisbench.ImageRecord(image_id, None, width, height)

            def load_image(self, image_id):
                return self.images[(image_id - 1) % len(self.images)]

            def fingerprint(self):
                return f"random-{n}-{height}x{width}"

        return RandomImages()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    ap.add_argument("--model", default="vit_tiny_patch16_224", help="timm ViT name (default vit_tiny_patch16_224)")
    ap.add_argument("--size", type=int, default=None, help="square input side (default 160 on CPU, 480 on CUDA)")
    ap.add_argument("--batch", type=int, default=8, help="images per batch (default 8)")
    ap.add_argument("--batches", type=int, default=None, help="timed batches per path (default 2 on CPU, 12 on CUDA)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats per path, median reported (default 3)")
    ap.add_argument("--workers", type=int, default=None, help="data-loader workers (default 0 on CPU, cores-2 up to 14 on CUDA)")
    ap.add_argument("--facet", default="key", choices=("key", "query", "value", "token"))
    ap.add_argument("--image-hw", default="480x640", help="source image height x width (default 480x640, COCO-like)")
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)

    import timm
    import torch

    import uisbench
    from uisbench_builtins.timm_vit import TimmViT, autocast_context

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("CUDA is not available here; use --device cpu", file=sys.stderr)
        return 2
    args.size = args.size or (480 if cuda else 160)
    batches = args.batches or (12 if cuda else 2)
    repeats = args.repeats or 3
    workers = args.workers if args.workers is not None else (min(14, max(0, (os.cpu_count() or 2) - 2)) if cuda else 0)
    h, w = (int(v) for v in args.image_hw.lower().split("x"))
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    backbone = TimmViT(model=args.model, pretrained=False, facet=args.facet, size=args.size, plugin="timm").to(args.device)
    bare = timm.create_model(args.model, pretrained=False, num_classes=0, img_size=args.size).eval()
    bare.load_state_dict(backbone.model.state_dict())  # the same weights: speed must not hinge on the values
    bare.to(args.device)
    n = args.batch * (batches + 1)
    dataset = _RandomImages(n, h, w)
    backbone.bind(dataset)
    ids = dataset.image_ids()
    batch_cpu = torch.stack([backbone.preprocess(dataset.load_image(i)) for i in ids[: args.batch]])
    batch = batch_cpu.to(args.device)
    batch_ids = ids[: args.batch]

    def run_bare() -> float:
        with torch.inference_mode(), autocast_context(batch.device.type, "auto"):
            bare.forward_features(batch)  # warm-up
            _sync(args.device)
            t = time.perf_counter()
            for _ in range(batches):
                bare.forward_features(batch)
            _sync(args.device)
        return batches * args.batch / (time.perf_counter() - t)

    def run_extract() -> float:
        backbone.extract(batch, batch_ids)  # warm-up
        _sync(args.device)
        t = time.perf_counter()
        for _ in range(batches):
            backbone.extract(batch, batch_ids)
        _sync(args.device)
        return batches * args.batch / (time.perf_counter() - t)

    def run_data_path() -> float:
        t = None
        images = 0
        for k, (bids, pixels, _records) in enumerate(
            uisbench.data.iter_batches(dataset, ids, backbone.preprocess, batch_size=args.batch, num_workers=workers)
        ):
            backbone.extract(pixels, bids)
            if k == 0:  # steady state: start the clock once the first batch is through
                _sync(args.device)
                t = time.perf_counter()
            else:
                images += len(bids)
        _sync(args.device)
        return images / (time.perf_counter() - t)

    results: dict[str, list[float]] = {"bare": [], "extract": [], "data_path": []}
    for _ in range(repeats):  # interleaved, so drifts (clocks, other load) hit every path alike
        results["bare"].append(run_bare())
        results["extract"].append(run_extract())
        results["data_path"].append(run_data_path())
    med = {k: statistics.median(v) for k, v in results.items()}
    best = {k: max(v) for k, v in results.items()}

    device_name = torch.cuda.get_device_name(args.device) if cuda else f"cpu ({torch.get_num_threads()} threads)"
    precision = "bf16 autocast" if cuda else "fp32"
    grid = args.size // backbone.patch_size
    print(
        f"device {device_name}; model {args.model} (random init); size {args.size} ({grid}x{grid} patches); "
        f"batch {args.batch} x {batches} batches, {repeats} repeat(s), median; facet {args.facet}; {precision}; "
        f"source images {h}x{w}; data-loader workers {workers}; torch {torch.__version__}, timm {timm.__version__}"
    )
    rows = [
        ("bare timm forward_features (batch on device)", "bare"),
        ("uisbench extract (same batch on device)", "extract"),
        (f"uisbench data path: preprocess ({workers} workers) + extract", "data_path"),
    ]
    print(f"{'path':<62} {'images/s':>10} {'ratio':>7} {'best img/s':>11} {'best ratio':>11}")
    for label, key in rows:
        print(
            f"{label:<62} {med[key]:>10.1f} {med[key] / med['bare']:>7.3f} {best[key]:>11.1f} {best[key] / best['bare']:>11.3f}"
        )
    ratio = med["data_path"] / med["bare"]
    target = "(target >= 0.85 on GPU)" if cuda else "(target >= 0.85 applies on GPU)"
    print(f"data path / bare timm = {ratio:.3f} {target}; extract / bare timm = {med['extract'] / med['bare']:.3f}")
    if args.json:
        uisbench.atomic_write_json(
            args.json,
            {"device": device_name, "model": args.model, "size": args.size, "batch": args.batch, "batches": batches,
             "repeats": repeats, "workers": workers, "facet": args.facet, "images_per_s": results, "median": med, "best": best,
             "ratio_data_path": ratio, "ratio_extract": med["extract"] / med["bare"]},
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
