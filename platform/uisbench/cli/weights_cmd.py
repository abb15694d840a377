"""``platform weights inspect FILE``: what a checkpoint holds and the registry entry that loads it.

The file is read with :func:`uisbench.weights.read_checkpoint` (no code in it runs). The backbone
plugins that know checkpoint layouts (``BackboneSpec.inspect_weights``: the built-in ``timm``
plugin knows the official files of DINO, DINOv2/v3, MAE, iBOT, MoCo v2/v3, MSN, I-JEPA, CLIP,
SigLIP, SAM, EVA-02 and DenseCL) say what they recognise: the family, the wrapper keys and prefixes,
patch size, depth, width, heads and registers, and the entry; the output is a registry file to
save and pass with ``--registry``. Without an entry it says what is missing (exit status 1).
A folder (a Hugging Face transformers export: ``config.json`` + ``model.safetensors``) is not read
here: the plugins get ``checkpoint=None`` and the path, and the ``timm`` plugin reads its config.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("weights", parents=[common], help="inspect a weights file: its layout and the entry that loads it")
    sub = p.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    inspect = sub.add_parser("inspect", parents=[common], help="read a checkpoint (no code runs) and print the registry entry that loads it")
    inspect.add_argument("file", help="a .pth/.pt/.pth.tar/.bin/.safetensors/.npz checkpoint, or a transformers folder (config.json + model.safetensors)")
    inspect.add_argument("--name", help="entry name (default: from the family and the file name)")
    p.set_defaults(run=run)


def _entry_name(info: dict, path: Path, name: str | None) -> str:
    if name:
        return name
    stem = re.sub(r"\.(pth|pt|bin|tar|safetensors|npz)$", "", path.name.lower())
    stem = re.sub(r"\.(pth|pt)$", "", stem)
    base = f"{info.get('family')}-{stem}" if info.get("family") else stem
    return re.sub(r"[^a-z0-9._-]+", "-", base).strip("-._") or "my-backbone"


def run(args: argparse.Namespace) -> int:
    import yaml

    from .._manager import load_plugins
    from ..weights import read_checkpoint

    path = Path(args.file).expanduser()
    # a DataError (exit 3) for unreadable or unsafe files; a folder is left to the plugins that know folder layouts
    # a .npz (big_vision's SigLIP, JAX ViTs): an NpzArchive of the arrays' shapes, checked without unpickling
    checkpoint = None if path.is_dir() else read_checkpoint(path, param="file", npz=True)
    host = load_plugins(strict=args.strict_plugins)
    answers = []
    for plugin, spec in sorted(host.specs("backbones").items()):
        inspect = getattr(spec, "inspect_weights", None)
        if inspect is None:
            continue
        info = inspect(checkpoint, str(path))
        if info is not None:
            answers.append((plugin, dict(info)))
    if not answers:
        print(f"{path}: no installed backbone plugin recognises this checkpoint.", file=sys.stderr)
        return 1
    plugin, info = next(((p, i) for p, i in answers if i.get("entry")), answers[0])
    print(f"# {path}")
    for key in ("family", "top_level_keys", "notes", "kind", "patch_size", "depth", "width", "heads", "cls_token", "registers", "map_head", "stages", "mean_std", "note"):
        if key in info and info[key] is not None:
            print(f"# {key}: {info[key]}")
    if not info.get("entry"):
        print(f"# missing: {info.get('missing', 'unknown layout')}")
        return 1
    entry = {_entry_name(info, path, args.name): dict(info["entry"])}
    print("# save as mine.yaml, check with `platform validate mine.yaml`, run with `platform bench --registry mine.yaml --backbones NAME`")
    sys.stdout.write(yaml.safe_dump({"version": 1, "backbones": entry}, sort_keys=False, default_flow_style=None))
    return 0
