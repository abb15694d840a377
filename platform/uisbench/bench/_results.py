"""results.json: every cell, every metric, and where the numbers came from.

The layout is documented by ``results.schema.json`` next to this module (JSON Schema 2020-12);
:func:`validate` checks a document against it with a small built-in validator (the subset of
JSON Schema the file uses), so no extra dependency is needed.
"""

from __future__ import annotations

import json
import os
import platform as _stdlib_platform
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from .._version import __version__
from ..io import file_sha256, json_default

SCHEMA_PATH = Path(__file__).with_name("results.schema.json")
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE")
SCHEMA_VERSION = 3


def _git(root: Path) -> dict[str, Any] | None:
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10
        )
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None}
    except (OSError, subprocess.SubprocessError):
        return None


def _versions(device: str) -> dict[str, Any]:
    out: dict[str, Any] = {"python": sys.version.split()[0], "platform": _stdlib_platform.platform()}
    for module in ("torch", "torchvision", "timm", "numpy", "pycocotools"):
        try:
            from importlib.metadata import version

            out[module] = version(module)
        except Exception:
            out[module] = None
    try:
        import torch

        # Student training is not bit-reproducible across BLAS/torch thread counts: say which ran.
        out["threads"] = {
            "torch": torch.get_num_threads(),
            "torch_interop": torch.get_num_interop_threads(),
            **{var: os.environ.get(var) for var in _THREAD_VARIABLES},
        }
        out["cuda"] = torch.version.cuda
        out["cuda_available"] = bool(torch.cuda.is_available())
        out["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
        out["gpu"] = torch.cuda.get_device_name(torch.device(device).index or 0) if device.startswith("cuda") else None
    except Exception:  # pragma: no cover
        out.update(cuda=None, cuda_available=False, cudnn=None, gpu=None)
    return out


def _sha256(path: str) -> str | None:
    """A registry file's hash for provenance; None where it vanished since loading."""
    try:
        return file_sha256(path)
    except OSError:
        return None


def build_results(
    pipeline: Any,
    host: Any,
    registry: Any,
    cells: list[dict[str, Any]],
    backbones: dict[str, dict[str, Any]],
    ranking: dict[str, Any],
    computed: dict[str, int],
    started: datetime,
    seconds: float,
) -> dict[str, Any]:
    from ._cost import hardware

    ctx, plan, data = pipeline.ctx, pipeline.plan, pipeline.data
    splits = ["train", "val"] if plan.students else ["val"]
    skipped: list[dict[str, Any]] = []
    for split in splits:
        for entry in data.skipped.get(split, {}).values():
            skipped.append({"split": split, **(_redacted(entry) if ctx.private else entry)})
    dataset_entry = data.entry.describe()
    if ctx.private:  # where the images are stays on site too
        paths = {p.name for p in data.entry.spec.params if p.type == "path"}
        dataset_entry["params"] = {k: ("<private>" if k in paths and v is not None else v) for k, v in dataset_entry["params"].items()}
    root = Path(__file__).resolve().parents[3]
    metrics = {}
    for name in plan.metrics:
        entry = plan.entry("metrics", name)
        metrics[name] = {
            **entry.describe(),
            "needs": sorted(entry.spec.needs),
            "stages": sorted(entry.spec.stages),
        }
    options = ctx.options
    results = {
        "kind": "uisbench-results",
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(started.tzinfo).isoformat(timespec="seconds"),
        "run": {
            "started": started.isoformat(timespec="seconds"),
            "seconds": round(seconds, 3),
            "argv": list(options.argv),
            "device": ctx.device,
            "hardware": hardware(ctx.device),
            "world_size": ctx.shard.world,
            "seed": ctx.seed,
            "workdir": str(ctx.workdir),
            "options": {
                "force": sorted(ctx.force),
                "limit": options.limit,
                "skip_bad_images": bool(options.skip_bad_images),
                "batch_size": int(options.batch_size),
                "num_workers": int(ctx.num_workers),
                "private": ctx.private,
            },
            "computed": dict(computed),
            "built": sorted(set(ctx.built)),
        },
        "dataset": {
            "name": plan.dataset,
            **dataset_entry,
            "has_ground_truth": data.has_ground_truth,
            "transductive": data.transductive() if plan.students else None,
            "splits": {split: {"images": len(data.ids(split)), "fingerprint": data.identity(split)["fingerprint"]} for split in splits},
            "skipped_images": skipped,
        },
        "provenance": {
            "uisbench": __version__,
            **_versions(ctx.device),
            "git": _git(root),
            "registry": {
                "files": [{"path": str(p), "sha256": _sha256(p)} for p in registry.files],
                "sha256": registry.sha256,
            },
            "plugins": [
                {"name": p.name, "module": p.module, "distribution": p.distribution, "version": p.version, "builtin": p.builtin}
                for p in host.plugins.values()
            ],
            "plugin_failures": [
                {"name": f.name, "distribution": f.distribution, "version": f.version, "error": f.error} for f in host.failures
            ],
            "seeds": {"bench": ctx.seed, "repeats": ctx.seeds, "bootstrap": ctx.bootstrap},
        },
        "primary_metric": {"stage": ranking["stage"], "metric": ranking["metric"], "value": ranking["value"]},
        "ranking": ranking,
        "metrics": metrics,
        "backbones": backbones,
        "cells": cells,
    }
    # JSON round trip: plain types only (uisbench.io.json_default), what a reader will see.
    results = json.loads(json.dumps(results, default=json_default))
    if ctx.private:  # the site's names stay home too: argv, work directory, registry and weights paths
        from ._private import private_argv, redactor_for

        results["run"]["argv"] = private_argv(results["run"]["argv"])
        results = redactor_for(pipeline, registry)(results)
    return results


def _redacted(skipped: dict[str, Any]) -> dict[str, Any]:
    """A skipped image without its file path (in the reason too): ids only."""
    file = skipped.get("file")
    reason = str(skipped.get("reason", ""))
    if file:
        reason = reason.replace(str(file), f"image {skipped.get('image_id')}")
    return {**skipped, "file": None, "reason": reason}


def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# A small JSON Schema validator: type, enum, const, required, properties, additionalProperties,
# items, minimum, allOf, anyOf, $ref (local "#/$defs/..."). Enough for results.schema.json.
# ---------------------------------------------------------------------------------------------

_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def validate(instance: Any, schema: dict[str, Any] | None = None) -> list[str]:
    """Problems of ``instance`` against ``schema`` (default: results.schema.json), as ``path: message``."""
    root = load_schema() if schema is None else schema
    problems: list[str] = []
    _check(instance, root, root, "$", problems)
    return problems


def _check(value: Any, schema: dict[str, Any], root: dict[str, Any], path: str, problems: list[str]) -> None:
    if "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/"):
            raise ValueError(f"only local $ref supported, got {ref!r}")
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        _check(value, target, root, path, problems)
        return
    for option in schema.get("allOf", []):
        _check(value, option, root, path, problems)
    if "anyOf" in schema:
        for option in schema["anyOf"]:
            sub: list[str] = []
            _check(value, option, root, path, sub)
            if not sub:
                break
        else:
            problems.append(f"{path}: matches none of the allowed forms")
            return
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is_type(value, t) for t in types):
            problems.append(f"{path}: expected {' or '.join(types)}, got {type(value).__name__}")
            return
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{path}: {value!r} not one of {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        problems.append(f"{path}: expected {schema['const']!r}, got {value!r}")
    if "minimum" in schema and isinstance(value, (int, float)) and not isinstance(value, bool) and value < schema["minimum"]:
        problems.append(f"{path}: {value} < minimum {schema['minimum']}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                problems.append(f"{path}: missing required key {key!r}")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                _check(item, props[key], root, f"{path}.{key}", problems)
            elif extra is False:
                problems.append(f"{path}: unexpected key {key!r}")
            elif isinstance(extra, dict):
                _check(item, extra, root, f"{path}.{key}", problems)
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _check(item, schema["items"], root, f"{path}[{i}]", problems)
