"""Benchmark: every masker on the same features, masks/s and pseudo-mask AP50 side by side.

Features: oracle features (the registry's ``oracle-instance`` entry, or ``--backbone``) of
synth-instances val images generated at ``8 x grid`` pixels with patch 8, so that AP can be computed
against exact ground truth: a 30 x 30 grid (900 tokens, 240 px) and a 60 x 60 grid (3600 tokens,
480 px). Features are extracted once per size; every masker then runs ``predict`` (grid masks,
upsampling, RLE: the bench's pseudo-mask stage) on the same batch, after one warm-up image. Scores
come from pycocotools (class-agnostic mask AP50 and AR100, 100 detections).

Rows are the registry's masker entries (``--maskers`` picks some). An ensemble entry (``vote``) is
run over the masks of its members' distinct *maskers* on these same features (its ``backbone/``
parts are ignored here: every member sees the oracle features); its time includes its members' time.

Columns: ``images/s`` (images through ``predict`` per second), ``masks/s`` (pseudo-masks produced per
second), ``masks/img``, ``AP50``, ``AR100``.

CPU run (2 threads; ~10 minutes, most of it kmeans-spectral's dense eigh and ncut at 3600 tokens)::

    .venv/bin/python benchmarks/bench_maskers.py --images 8

Quick CPU run, 900 tokens only::

    .venv/bin/python benchmarks/bench_maskers.py --sizes 900 --images 8

GPU run::

    .venv/bin/python benchmarks/bench_maskers.py --device cuda --images 32
"""

from __future__ import annotations

import argparse
import os
import time

#: default rows: every registry masker but the scipy reference (same masks as ncut, CPU only) and
#: the CPU-sized copy of ``vote``
DEFAULT_MASKERS = "ncut,ncut-auto,kmeans,kmeans-spectral,promerge,tokencut,vote"


def _ap(metric, ds, ids, preds) -> tuple[float, float]:
    """Mask AP50 and AR100 of the masks, by the bench's own ``coco`` metric (pycocotools)."""
    import uisbench

    for image_id, image_preds in zip(ids, preds, strict=True):
        metric.update(uisbench.EvalSample(record=ds.record(image_id), ground_truth=ds.ground_truth(image_id), predictions=image_preds))
    values = metric.compute()
    return float(values["AP50mask"] or 0.0), float(values["AR100mask"] or 0.0)


def _run(masker, fm, records, device: str):
    """``masker.predict`` on the whole batch after a one-image warm-up: (predictions, seconds)."""
    import torch

    import uisbench

    one = uisbench.FeatureMap(fm.features[:1], fm.image_ids[:1], fm.patch_size, fm.facet, fm.layer)
    masker.predict(one, records[:1])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    preds = masker.predict(fm, records)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return preds, time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=8, help="images per grid size")
    ap.add_argument("--sizes", default="900,3600", help="token counts: 900 (30 x 30) and/or 3600 (60 x 60)")
    ap.add_argument("--backbone", default="oracle-instance", help="registry backbone entry (oracle-*, pixels)")
    ap.add_argument("--maskers", default=DEFAULT_MASKERS, help="registry masker entries to run, comma-separated")
    args = ap.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    import torch
    from tabulate import tabulate

    import uisbench

    torch.set_num_threads(args.threads)
    host = uisbench.host.load_plugins(strict=True)
    registry = uisbench.host.load_registry([], host)
    print(
        f"device={args.device} threads={args.threads} torch={torch.__version__} backbone={args.backbone} "
        f"images={args.images}"
    )
    rows = []
    for tokens in (int(s) for s in args.sizes.split(",")):
        grid = int(round(tokens**0.5))
        size = 8 * grid
        ds = host.spec("datasets", "synth-instances").build(split="val", size=size, images=args.images)
        ids = ds.image_ids()
        records = [ds.record(i) for i in ids]
        bb = registry.build("backbones", args.backbone, host, size=size, patch_size=8)
        bb.bind(ds)
        fm = bb.extract(torch.stack([bb.preprocess(ds.load_image(i)) for i in ids]), ids)
        fm.features = fm.features.to(args.device)
        n_gt = sum(len(ds.ground_truth(i)) for i in ids)
        times: dict[str, float] = {}
        outputs: dict[str, list] = {}
        for label in args.maskers.split(","):
            entry = registry.entry("maskers", label)
            spec = host.spec("maskers", entry.plugin)
            masker = registry.build("maskers", label, host).to(args.device)
            if spec.ensemble:
                # on one backbone's features, members that differ only in backbone would vote twice
                members = list(dict.fromkeys(m for _, m in uisbench.host.ensemble_members(entry.params)))
                for m in members:  # the members' maskers on the same features, timed as rows of their own
                    if m not in outputs:
                        outputs[m], times[m] = _run(registry.build("maskers", m, host).to(args.device), fm, records, args.device)
                t = time.perf_counter()
                preds = [masker.combine([outputs[m][i] for m in members], rec) for i, rec in enumerate(records)]
                dt = time.perf_counter() - t + sum(times[m] for m in members)
                note = f"incl. members {', '.join(members)}"
            else:
                preds, dt = _run(masker, fm, records, args.device)
                outputs[label], times[label] = preds, dt
                note = ""
            n_masks = sum(len(p) for p in preds)
            ap50, ar100 = _ap(registry.build("metrics", "coco", host), ds, ids, preds)
            rows.append(
                [
                    tokens,
                    label,
                    len(ids),
                    f"{len(ids) / dt:.2f}",
                    f"{n_masks / dt:.2f}",
                    f"{n_masks / len(ids):.2f}",
                    f"{ap50:.3f}",
                    f"{ar100:.3f}",
                    f"{n_gt / len(ids):.1f} instances/img" + (f"; {note}" if note else ""),
                ]
            )
            print(f"  {tokens} {label}: {dt:.1f}s", flush=True)
    headers = ["tokens", "masker", "images", "images/s", "masks/s", "masks/img", "AP50", "AR100", "note"]
    print(tabulate(rows, headers=headers, tablefmt="github"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
