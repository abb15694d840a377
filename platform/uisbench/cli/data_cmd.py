"""``platform data``: write the synthetic benchmark as a COCO folder; check a dataset entry.

    platform data synth --out DIR [--split val] [--images N] [--seed S] [--size PX|small|large] ...
    platform data check ENTRY [--split val] [--skip-bad-images] [--set root=/data/coco]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError


def _size(text: str) -> int | str:
    if text in ("small", "large"):
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size takes pixels (e.g. 128) or a preset name (small, large), got {text!r}") from None
    if value < 32:
        raise argparse.ArgumentTypeError(f"--size must be at least 32 pixels, got {value}")
    return value


def _assignment(text: str) -> tuple[str, Any]:
    import yaml

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set takes KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value) if value else None


def add_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("data", help="write the synthetic benchmark to disk; check a dataset entry")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    s = sub.add_parser("synth", parents=[common], help="write synth-instances as a COCO folder (images/ + annotations.json)",
                       description="Write one split of synth-instances as a standard COCO folder. The same seed and "
                       "knobs give byte-identical files.")
    s.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created)")
    s.add_argument("--split", choices=("train", "val"), default="val", help="which split (default: val)")
    s.add_argument("--images", type=int, default=None, metavar="N", help="number of images (default: the split's default)")
    s.add_argument("--seed", type=int, default=None, metavar="S", help="generator seed (default: 0)")
    s.add_argument("--size", type=_size, default=None, metavar="PX|small|large",
                   help="image side in pixels, or a preset: small (128 px, CPU) or large (480 px, thousands of images)")
    s.add_argument("--size-preset", choices=("small", "large"), default=None, help="same as --size small/large")
    s.add_argument("--min-instances", type=int, default=None, metavar="N")
    s.add_argument("--max-instances", type=int, default=None, metavar="N")
    s.add_argument("--overlap", type=float, default=None, metavar="P",
                   help="probability that a same-class instance touches/overlaps another (0..1)")
    s.add_argument("--single-fraction", type=float, default=None, metavar="P", help="share of single-instance images")
    s.add_argument("--difficulty", choices=("easy", "medium", "hard"), default=None)
    s.add_argument("--classes", default=None, metavar="A,B", help="comma-separated subset of the classes")
    s.set_defaults(run=run_synth)

    c = sub.add_parser("check", parents=[common], help="load every image of a dataset entry and report problems",
                       description="Build a registry dataset entry, decode all its images in worker processes and "
                       "report problems (strict: the first one fails; --skip-bad-images: all are listed).")
    c.add_argument("entry", help="datasets entry name (`platform list datasets`)")
    c.add_argument("--split", choices=("train", "val"), default="val")
    c.add_argument("--set", dest="overrides", action="append", type=_assignment, default=[], metavar="KEY=VALUE",
                   help="override a parameter of the entry, e.g. --set root=/data/coco (repeatable)")
    c.add_argument("--skip-bad-images", action="store_true", help="record bad images and go on")
    c.add_argument("--workers", type=int, default=2, help="decoding worker processes (default: 2)")
    c.set_defaults(run=run_check)


def run_synth(args: argparse.Namespace) -> int:
    from .._manager import load_plugins
    from ..data import write_coco

    host = load_plugins(strict=args.strict_plugins)
    spec = host.spec("datasets", "synth-instances")
    params: dict[str, Any] = {}
    preset = args.size_preset
    if isinstance(args.size, str):
        if preset is not None and preset != args.size:
            raise ConfigError(f"--size {args.size} contradicts --size-preset {preset}; give one of them.")
        preset = args.size
    elif args.size is not None:
        params["size"] = args.size
    if preset is not None:
        params["preset"] = preset
    for key in ("images", "seed", "min_instances", "max_instances", "overlap", "single_fraction", "difficulty"):
        value = getattr(args, key)
        if value is not None:
            params[key] = value
    if args.classes:
        params["classes"] = [c.strip() for c in args.classes.split(",") if c.strip()]
    problems = [f"--{k.replace('_', '-')}: {p}" for k, v in params.items() if (p := spec.param(k).check(v))]
    if problems:
        raise ConfigError("; ".join(problems))
    dataset = spec.build(split=args.split, **params)
    out: Path = args.out
    _remove_stale(out, {f"{i:06d}.png" for i in dataset.image_ids()})
    info = {"description": "uisbench synth-instances", "version": spec.version, "params": dataset.params()}
    path = write_coco(dataset, out, info=info)
    n_ann = sum(len(dataset.ground_truth(i)) for i in dataset.image_ids())
    print(f"wrote {len(dataset.image_ids())} images and {n_ann} instances to {out} ({path.name}, images/)")
    return 0


def _remove_stale(out: Path, keep: set[str]) -> None:
    """In a folder written by us before (it has annotations.json), drop images of a larger earlier run."""
    images = out / "images"
    if not (out / "annotations.json").is_file() or not images.is_dir():
        return
    for path in images.iterdir():
        if re.fullmatch(r"\d{6}\.png", path.name) and path.name not in keep:
            path.unlink()


def run_check(args: argparse.Namespace) -> int:
    from ._common import host_and_registry

    host, registry = host_and_registry(args)
    entry = registry.entry("datasets", args.entry)
    spec = host.spec("datasets", entry.plugin)
    params = registry.resolved_params(entry, host)
    for key, value in args.overrides:
        param = spec.param(key)
        if param is None:
            raise ConfigError(f"--set {key}: plugin {entry.plugin!r} has no parameter {key!r}; "
                              f"known: {', '.join(p.name for p in spec.params)}.")
        problem = param.check(value)
        if problem:
            raise ConfigError(f"--set {key}: {problem}.")
        params[key] = value
    if args.skip_bad_images:
        if spec.param("skip_bad_images") is None:
            raise ConfigError(f"dataset plugin {entry.plugin!r} has no skip_bad_images parameter.")
        params["skip_bad_images"] = True
    dataset = spec.factory(split=args.split, **params)
    ids = dataset.image_ids()
    checked = 0
    from ..data import iter_batches

    for batch_ids, _, _ in iter_batches(dataset, ids, _shape, batch_size=16, num_workers=max(0, args.workers)):
        checked += len(batch_ids)
    n_gt = sum(len(dataset.ground_truth(i)) for i in dataset.image_ids()) if dataset.has_ground_truth else 0
    skipped = list(getattr(dataset, "skipped", []))
    print(f"{args.entry} ({args.split}): {checked} images decoded, {n_gt} ground-truth instances, "
          f"{len(skipped)} skipped; fingerprint {dataset.fingerprint()}")
    for item in skipped:
        print(f"  skipped image {item.get('image_id')} {item.get('file')}: {item.get('reason')}", file=sys.stderr)
    return 0


def _shape(image: Any) -> Any:
    import torch

    return torch.tensor(image.shape[:2])
