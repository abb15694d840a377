"""Conformance checks for plugins: the contract of each plugin kind, as functions anyone can call.

A vendor runs them in their own test suite before a keeper runs their plugin (scikit-learn's
``check_estimator`` is the model); the built-ins' conformance tests call the very same functions, so
the contract is stated once, here::

    import uisbench.testing

    def test_my_backbone_honours_the_contract():
        uisbench.testing.check_backbone("my-vit", {"size": 64})   # a name, a spec or a registry entry

    def test_everything_my_distribution_registers():
        uisbench.testing.check_plugin("uisbench-my-vit", params={"backbones/my-vit": {"size": 64}})

Each check builds the plugin with the parameters given (defaults for the rest), runs it on tiny
inputs it generates (a few images of at most 64 x 96 pixels, on the CPU, in seconds) and raises a
:class:`ConformanceError` naming the rule broken (one of :data:`RULES`) at the first violation.

This module is imported only when used (``import uisbench`` does not load it); numpy and torch are
imported inside the checks.
"""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .contracts import (
    Backbone,
    Dataset,
    EnsembleMasker,
    EvalSample,
    FeatureMap,
    GroundTruth,
    ImageRecord,
    Masker,
    Metric,
    Prediction,
    StageCost,
    Student,
)
from .errors import ConfigError, UisbenchError
from .grid import GridBackbone
from .types import SPEC_TYPES, PluginSpec, review_params

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np

    from ._manager import PluginHost

__all__ = [
    "RULES",
    "ConformanceError",
    "check_backbone",
    "check_masker",
    "check_student",
    "check_metric",
    "check_dataset",
    "check_spec",
    "check_plugin",
    "tiny_dataset",
    "TinyBackbone",
]

#: Every rule a check enforces: id -> what it asks. A :class:`ConformanceError` names one of these.
RULES: dict[str, str] = {
    # every kind: the spec record
    "spec.kind": "the spec is the record of its kind (BackboneSpec for a backbone, ...)",
    "spec.help": "every parameter has a help text",
    "spec.defaults": "every default passes its own Param (type, choices, bounds)",
    "spec.bounds": "every numeric parameter declares its bounds (ge/gt, le/lt) or is listed as unbounded on purpose",
    "spec.params": "the parameters given to the check are ones the spec accepts",
    "build": "the factory builds the object from the spec's parameters",
    "type": "the factory returns an object of the kind's contract class",
    "to": "to('cpu') returns the object itself and sets device",
    "provenance": "provenance() is a dict that json.dumps accepts",
    # backbones
    "backbone.calibration": "the object's calibration flag equals the spec's",
    "backbone.geometry": "preprocessing.size is a multiple of patch_size and patch_size agrees",
    "backbone.preprocess": "preprocess(uint8 H x W x 3) is float32 (3, size, size) and finite",
    "backbone.features": "extract returns a FeatureMap of finite floats (B, C>=1, grid, grid) with the batch's ids and the patch size",
    "backbone.valid": "valid is None or bool (B, grid, grid) marking exactly the content's patches of a padded frame",
    "backbone.batch": "an image's features do not depend on the other images of its batch (no state leaks between images)",
    "backbone.determinism": "two builds under the same torch seed give the same features",
    "backbone.pretrained": "provenance() says whether real weights were used: 'pretrained' is a bool",
    "backbone.hooks": "no forward hooks stay on a torch module after extract",
    # maskers
    "masker.images": "one list of predictions per image, in the order of the records",
    "masker.prediction": "each item is a uisbench.Prediction of its own image",
    "masker.rle": "masks are COCO RLE (counts a str) at the record's height x width, with at least one pixel",
    "masker.bbox": "bbox is the mask's box (uisbench.masks.to_bbox)",
    "masker.score": "scores are finite and in [0, 1]",
    "masker.determinism": "the same input gives the same masks, from one object and from a fresh build",
    "masker.batch": "an image's masks do not depend on the other images of its batch or on earlier calls",
    "masker.padding": "features outside FeatureMap.valid change nothing",
    # students
    "student.fit": "fit returns the number of samples (an int >= 0) or None, and writes under workdir only",
    "student.predict": "predict returns a dict with one list of valid predictions per image id asked for",
    "student.determinism": "two fits under the same seed predict the same masks",
    # metrics
    "metric.directions": "higher_is_better is a non-empty mapping of value name -> bool",
    "metric.headline": "every headline value is one of higher_is_better's names",
    "metric.update": "update returns None",
    "metric.values": "compute returns a float for every name of higher_is_better, and no other",
    "metric.pure": "compute is pure: the same values twice, state unchanged",
    "metric.state": "state() is a dict of the declared states that pickle accepts",
    "metric.merge": "merging the states of shards gives the values of one pass over all images",
    "metric.instances": "two instances share no state (no mutable class attribute as state)",
    "metric.reset": "reset() brings back the values of a fresh instance",
    "metric.resample": "resample gives the headline values per draw, and the identity draw the computed values",
    # datasets
    "dataset.splits": "every split in the spec's splits builds",
    "dataset.ids": "image_ids() is a non-empty sorted list of distinct ints",
    "dataset.record": "record(id) is an ImageRecord of that id",
    "dataset.image": "load_image(id) is uint8 (height, width, 3) as the record says, the same on every call",
    "dataset.ground_truth": "ground truth is GroundTruth of its image: RLE at the image size, a 4-number box, area > 0",
    "dataset.flags": "has_ground_truth is a bool (the spec's on val), skipped a list",
    "dataset.fingerprint": "fingerprint() is a non-empty str, the same on every call and every build",
    "dataset.coco": "coco_ground_truth() loads in pycocotools",
    # a distribution
    "plugin.entries": "the distribution registers at least one plugin, and each passes its check",
}


class ConformanceError(AssertionError):
    """A plugin breaks rule :attr:`rule` (a key of :data:`RULES`); the message says where and how.

    An ``AssertionError``, so pytest shows it as a test failure with the message."""

    def __init__(self, rule: str, where: str, message: str) -> None:
        self.rule, self.where = rule, where
        super().__init__(f"{where}: breaks rule {rule!r} ({RULES[rule]}): {message}")


def _require(ok: Any, rule: str, where: str, message: str | Callable[[], str]) -> None:
    if not ok:
        raise ConformanceError(rule, where, message() if callable(message) else message)


# ---------------------------------------------------------------------------------------------
# Specs
# ---------------------------------------------------------------------------------------------

_NUMERIC = ("int", "float", "list[int]", "list[float]")


def _resolve(kind: str, entry_or_spec: Any, params: Mapping[str, Any] | None, host: PluginHost | None) -> tuple[PluginSpec, dict[str, Any]]:
    """The spec and the parameters to build it with, from a spec, a plugin name or a registry entry."""
    from .registry import Entry

    given = dict(params or {})
    if isinstance(entry_or_spec, PluginSpec):
        return entry_or_spec, given
    if host is None:
        from ._manager import load_plugins

        host = load_plugins()
    if isinstance(entry_or_spec, Entry):
        if entry_or_spec.kind != kind:
            raise UisbenchError(f"registry entry {entry_or_spec.name!r} is a {entry_or_spec.kind[:-1]}, not a {kind[:-1]}")
        return host.spec(kind, entry_or_spec.plugin), {**entry_or_spec.params, **given}
    if isinstance(entry_or_spec, str):
        return host.spec(kind, entry_or_spec), given
    raise TypeError(f"expected a {SPEC_TYPES[kind].__name__}, a plugin name or a registry Entry, got {type(entry_or_spec).__name__}")


def check_spec(kind: str, spec: PluginSpec, params: Mapping[str, Any] | None = None, *, unbounded: Iterable[str] = ()) -> None:
    """The spec record's rules (``spec.*``): its type, help texts, defaults, bounds, and ``params``.

    ``unbounded`` names numeric parameters left without bounds on purpose (a normalisation mean)."""
    where = f"{kind[:-1]} {getattr(spec, 'name', spec)!r}"
    _require(isinstance(spec, SPEC_TYPES[kind]), "spec.kind", where, f"got {type(spec).__name__}, expected {SPEC_TYPES[kind].__name__}")
    free = set(unbounded)
    for p in spec.params:
        _require(p.help.strip(), "spec.help", where, f"parameter {p.name!r} has no help text")
        if not p.required:
            problem = p.check(p.default)
            _require(problem is None, "spec.defaults", where, f"parameter {p.name!r}: default {p.default!r}: {problem}")
        if p.type in _NUMERIC and p.name not in free:
            _require(p.bounds, "spec.bounds", where, f"numeric parameter {p.name!r} ({p.type}) declares no bounds: "
                     "add ge=/gt= and le=/lt= to its Param (or pass unbounded=[...] when any value is meaningful)")
    if params is not None:
        given = {k: v for k, v in params.items() if not (kind in ("students",) and k == "backbone")}
        problems = review_params(spec.params, given, spec.check).problems()
        _require(not problems, "spec.params", where, lambda: "; ".join(f"{n or 'entry'}: {m}" for n, m in problems))


def _build(kind: str, spec: PluginSpec, params: Mapping[str, Any], where: str, **extra: Any) -> Any:
    try:
        return spec.build(**params, **extra)
    except ConformanceError:
        raise
    except Exception as err:
        raise ConformanceError("build", where, f"{type(err).__name__}: {err}") from err


def _json(value: Any, where: str, what: str = "provenance()") -> None:
    _require(isinstance(value, dict), "provenance", where, f"{what} returned {type(value).__name__}, not a dict")
    try:
        json.dumps(value, allow_nan=True)
    except (TypeError, ValueError) as err:
        raise ConformanceError("provenance", where, f"{what} is not JSON-serialisable: {err}") from err


def _to_cpu(obj: Any, where: str) -> None:
    moved = obj.to("cpu")
    _require(moved is obj, "to", where, f"to('cpu') returned {type(moved).__name__} instead of the object itself")
    _require(str(getattr(obj, "device", "cpu")) == "cpu", "to", where, f"device is {getattr(obj, 'device', None)!r} after to('cpu')")


# ---------------------------------------------------------------------------------------------
# Tiny inputs
# ---------------------------------------------------------------------------------------------


class _TinyDataset(Dataset):
    """Three generated images of different shapes (square, landscape, portrait) with box instances."""

    has_ground_truth = True

    def __init__(self, split: str = "val") -> None:
        self.split = split
        self.skipped = []
        self.sizes = {1: (64, 64), 2: (48, 96), 3: (80, 40)}  # (height, width)
        self.boxes = {1: [(4, 4, 28, 30), (34, 8, 60, 40), (10, 40, 54, 60)], 2: [(2, 2, 40, 30), (50, 10, 90, 44)], 3: [(4, 6, 36, 70)]}

    def image_ids(self) -> list[int]:
        return [1, 2, 3]

    def record(self, image_id: int) -> ImageRecord:
        h, w = self.sizes[image_id]
        return ImageRecord(image_id, None, w, h)

    def load_image(self, image_id: int) -> np.ndarray:
        import numpy as np

        h, w = self.sizes[image_id]
        rng = np.random.default_rng(image_id)
        image = np.zeros((h, w, 3), np.uint8) + rng.integers(40, 90, 3, dtype=np.uint8)
        for k, (x0, y0, x1, y1) in enumerate(self.boxes[image_id]):
            image[y0:y1, x0:x1] = (rng.integers(120, 170, 3) + 40 * k) % 244
        noise = rng.integers(0, 12, (h, w, 3), dtype=np.uint8)
        return image + noise

    def ground_truth(self, image_id: int) -> list[GroundTruth]:
        import numpy as np

        from . import masks

        h, w = self.sizes[image_id]
        out = []
        for k, (x0, y0, x1, y1) in enumerate(self.boxes[image_id]):
            mask = np.zeros((h, w), np.uint8)
            mask[y0:y1, x0:x1] = 1
            rle = masks.encode(mask)
            out.append(GroundTruth(10 * image_id + k, image_id, rle, masks.to_bbox(rle), float(mask.sum()), 0, "box" if k else "first"))
        return out

    def fingerprint(self) -> str:
        return f"uisbench-testing-tiny-{self.split}"


def tiny_dataset(split: str = "val") -> Dataset:
    """Three generated images (64 x 64, 48 x 96, 80 x 40) with box instances: what the checks feed
    backbones and students; a vendor's tests may use it too."""
    return _TinyDataset(split)


class TinyBackbone(GridBackbone):
    """Mean colour per patch (3 channels), 32 px frames of 8 px patches: the backbone students are checked on."""

    def __init__(self, size: int = 32, patch_size: int = 8, resize: str = "square") -> None:
        super().__init__(size=size, patch_size=patch_size, resize=resize, where="backbone uisbench.testing.TinyBackbone")

    def extract(self, pixels: Any, image_ids: Sequence[int]) -> FeatureMap:
        import torch.nn.functional as F

        return self.feature_map(F.avg_pool2d(pixels.to(self.device).float(), self.patch_size), pixels, image_ids)

    def provenance(self) -> dict[str, Any]:
        return {"model": "uisbench.testing.TinyBackbone", "pretrained": False, "weights": None, **super().provenance()}


def _box_prediction(image_id: int, height: int, width: int, box: tuple[int, int, int, int], score: float) -> Prediction:
    import numpy as np

    from . import masks

    mask = np.zeros((height, width), np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 1
    rle = masks.encode(mask)
    return Prediction(image_id, rle, masks.to_bbox(rle), score)


def _check_predictions(records: Sequence[ImageRecord], out: Any, where: str, student: bool = False) -> None:
    """The rules every list of predictions keeps (``masker.*`` rules). A student's predictions keep
    them too (reported as ``student.predict``), except that a detector's box comes from its box head."""
    import numpy as np

    from . import masks

    def _require(ok: Any, rule: str, where: str, message: Any) -> None:
        if not ok:
            message = message() if callable(message) else message
            raise ConformanceError("student.predict", where, f"({rule}) {message}") if student else ConformanceError(rule, where, message)

    _require(isinstance(out, list) and len(out) == len(records), "masker.images", where,
             lambda: f"expected a list of {len(records)} lists, got {type(out).__name__} of length {len(out) if hasattr(out, '__len__') else '?'}")
    for rec, preds in zip(records, out, strict=True):
        _require(isinstance(preds, list), "masker.images", where, f"image {rec.id}: got {type(preds).__name__}, not a list")
        for p in preds:
            _require(isinstance(p, Prediction), "masker.prediction", where, f"image {rec.id}: got {type(p).__name__}")
            _require(p.image_id == rec.id, "masker.prediction", where, f"a prediction of image {rec.id} says image_id {p.image_id}")
            seg = p.segmentation
            _require(isinstance(seg, dict) and isinstance(seg.get("counts"), str), "masker.rle", where,
                     f"image {rec.id}: segmentation is not COCO RLE with str counts: {str(seg)[:80]}")
            _require(list(seg.get("size", ())) == [rec.height, rec.width], "masker.rle", where,
                     f"image {rec.id}: mask size {seg.get('size')} is not the record's [height, width] [{rec.height}, {rec.width}]")
            _require(masks.area(seg) > 0, "masker.rle", where, f"image {rec.id}: an empty mask")
            box = tuple(float(v) for v in p.bbox)
            if student:
                _require(len(box) == 4 and all(math.isfinite(v) for v in box) and box[2] >= 0 and box[3] >= 0, "masker.bbox", where,
                         f"image {rec.id}: bbox {box} is not a finite [x, y, w, h]")
            else:
                _require(box == masks.to_bbox(seg), "masker.bbox", where, f"image {rec.id}: bbox {box} is not the mask's {masks.to_bbox(seg)}")
            _require(isinstance(p.score, (int, float)) and np.isfinite(p.score) and 0 <= p.score <= 1, "masker.score", where,
                     f"image {rec.id}: score {p.score!r}")


def _segs(out: Sequence[Sequence[Prediction]]) -> list[list[tuple[Any, ...]]]:
    return [[(p.segmentation["counts"], tuple(p.segmentation["size"]), round(float(p.score), 6)) for p in preds] for preds in out]


# ---------------------------------------------------------------------------------------------
# Backbones
# ---------------------------------------------------------------------------------------------


def check_backbone(entry_or_spec: Any, params: Mapping[str, Any] | None = None, *, host: PluginHost | None = None,
                   unbounded: Iterable[str] = (), atol: float = 1e-4) -> None:
    """The backbone contract on three generated images (square, landscape, portrait).

    ``entry_or_spec``: a :class:`uisbench.BackboneSpec`, an installed plugin's name or a registry
    entry; ``params`` overrides the defaults (keep it tiny: a small ``size``, a local weights file).
    ``atol``: how far features may differ between a batch and one image alone (float kernels).
    """
    import torch

    spec, params = _resolve("backbones", entry_or_spec, params, host)
    where = f"backbone {spec.name!r}"
    check_spec("backbones", spec, params, unbounded=unbounded)
    data = tiny_dataset()
    ids = data.image_ids()

    def build() -> Backbone:
        torch.manual_seed(0)
        backbone = _build("backbones", spec, params, where)
        _require(isinstance(backbone, Backbone), "type", where, f"the factory returned {type(backbone).__name__}, not a uisbench.Backbone")
        backbone.bind(data)
        _to_cpu(backbone, where)
        return backbone

    bb = build()
    _require(bool(bb.calibration) == bool(spec.calibration), "backbone.calibration", where,
             f"the object says calibration={bb.calibration}, the spec {spec.calibration}")
    prep = bb.preprocessing
    _require(prep.size % prep.patch_size == 0 and bb.patch_size == prep.patch_size and prep.resize in ("square", "pad"),
             "backbone.geometry", where, f"size {prep.size}, patch_size {prep.patch_size} (backbone says {bb.patch_size}), resize {prep.resize!r}")
    g = prep.grid
    pixels = []
    for image_id in ids:
        px = bb.preprocess(data.load_image(image_id))
        _require(isinstance(px, torch.Tensor) and px.dtype == torch.float32 and tuple(px.shape) == (3, prep.size, prep.size),
                 "backbone.preprocess", where,
                 lambda px=px: f"got {getattr(px, 'dtype', type(px).__name__)} {tuple(getattr(px, 'shape', ()))}, expected float32 (3, {prep.size}, {prep.size})")
        _require(bool(torch.isfinite(px).all()), "backbone.preprocess", where, "non-finite pixels")
        pixels.append(px)
    batch = torch.stack(pixels)

    def extract(backbone: Backbone, pix: Any, image_ids: list[int]) -> FeatureMap:
        with torch.inference_mode():
            fm = backbone.extract(pix, image_ids)
        _require(isinstance(fm, FeatureMap), "backbone.features", where, f"extract returned {type(fm).__name__}, not a FeatureMap")
        f = fm.features
        shape = tuple(f.shape)
        _require(f.ndim == 4 and shape[0] == len(image_ids) and shape[1] >= 1 and shape[2:] == (g, g), "backbone.features", where,
                 f"features {shape}, expected ({len(image_ids)}, C>=1, {g}, {g}) (grid = size // patch_size)")
        _require(f.is_floating_point() and bool(torch.isfinite(f).all()), "backbone.features", where, f"features are {f.dtype} or not finite")
        _require([int(i) for i in fm.image_ids] == list(image_ids), "backbone.features", where, f"image_ids {fm.image_ids}, expected {image_ids}")
        _require(fm.patch_size == prep.patch_size, "backbone.features", where, f"patch_size {fm.patch_size}, preprocessing says {prep.patch_size}")
        if fm.valid is not None:
            _require(fm.valid.dtype == torch.bool and tuple(fm.valid.shape) == (len(image_ids), g, g), "backbone.valid", where,
                     f"valid is {fm.valid.dtype} {tuple(fm.valid.shape)}, expected bool ({len(image_ids)}, {g}, {g})")
        for k, image_id in enumerate(image_ids):
            rec = data.record(image_id)
            rows, cols = prep.content_grid(rec.height, rec.width) if prep.resize == "pad" else (g, g)
            want = torch.zeros(g, g, dtype=torch.bool)
            want[:rows, :cols] = True
            got = want if fm.valid is None and prep.resize == "square" else (None if fm.valid is None else fm.valid[k].cpu())
            _require(got is not None and torch.equal(got, want), "backbone.valid", where,
                     f"image {image_id} ({rec.width} x {rec.height}, resize {prep.resize}): valid should mark patch rows [0, {rows}) "
                     f"and columns [0, {cols})" + (", got valid=None" if got is None else ""))
        return fm

    fm = extract(bb, batch, ids)
    full = fm.features.float().cpu()
    for k, image_id in enumerate(ids):
        alone = extract(bb, batch[k:k + 1], [image_id]).features.float().cpu()
        _require(torch.allclose(alone[0], full[k], atol=atol, rtol=1e-3), "backbone.batch", where,
                 lambda alone=alone, k=k: f"image {ids[k]}: alone vs in a batch of {len(ids)} differ by up to {float((alone[0] - full[k]).abs().max()):.3g}")
    again = extract(build(), batch, ids).features.float().cpu()
    _require(torch.allclose(again, full, atol=atol, rtol=1e-3), "backbone.determinism", where,
             lambda: f"a second build under torch.manual_seed(0) differs by up to {float((again - full).abs().max()):.3g}")
    prov = bb.provenance()
    _json(prov, where)
    _require(isinstance(prov.get("pretrained"), bool), "backbone.pretrained", where, f"provenance()['pretrained'] is {prov.get('pretrained')!r}")
    for value in vars(bb).values():
        if isinstance(value, torch.nn.Module):
            left = [type(m).__name__ for m in value.modules() if m._forward_hooks]
            _require(not left, "backbone.hooks", where, f"forward hooks left on {left[:3]}")


# ---------------------------------------------------------------------------------------------
# Maskers
# ---------------------------------------------------------------------------------------------

#: The masker inputs: a 12 x 12 grid of 8 px patches; image 1 fills the 96 px frame, image 2 (96 x 64)
#: is padded at the bottom (8 valid rows, as uisbench.Preprocessing "pad" puts it), image 3 is small.
_GRID, _PATCH = 12, 8
_MASKER_RECORDS = ((1, 96, 96, 12), (2, 96, 64, 8), (3, 40, 40, 12))  # id, width, height, valid rows


def _blob_features(seed: int) -> np.ndarray:
    """Three objects of orthogonal vectors on a background vector, small noise: (32, 12, 12)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    label = np.zeros((_GRID, _GRID), int)
    label[1:4, 1:5], label[6:11, 2:5], label[2:7, 7:11] = 1, 2, 3
    basis = np.linalg.qr(rng.standard_normal((32, 32)))[0]
    return (basis[:, label] + 0.05 * rng.standard_normal((32, _GRID, _GRID))).astype(np.float32)


def _masker_inputs(garbage: bool = False) -> tuple[FeatureMap, list[ImageRecord]]:
    import numpy as np
    import torch

    feats = torch.from_numpy(np.stack([_blob_features(s) for s in range(len(_MASKER_RECORDS))]))
    valid = torch.zeros(len(_MASKER_RECORDS), _GRID, _GRID, dtype=torch.bool)
    for k, (_, _, _, rows) in enumerate(_MASKER_RECORDS):
        valid[k, :rows] = True
        if garbage:  # what a backbone leaves in padding must not matter
            feats[k, :, rows:] = torch.from_numpy(np.random.default_rng(99).standard_normal((32, _GRID - rows, _GRID)).astype(np.float32) * 50)
    records = [ImageRecord(i, None, w, h) for i, w, h, _ in _MASKER_RECORDS]
    return FeatureMap(feats, [r.id for r in records], _PATCH, "key", -1, valid), records


def _subset(fm: FeatureMap, index: Sequence[int]) -> FeatureMap:
    pick = list(index)
    return FeatureMap(fm.features[pick], [fm.image_ids[i] for i in pick], fm.patch_size, fm.facet, fm.layer,
                      None if fm.valid is None else fm.valid[pick])


def _member_candidates(records: Sequence[ImageRecord], members: int) -> list[list[list[Prediction]]]:
    """Per image, per member: box predictions that overlap across members (what an ensemble votes on)."""
    out = []
    for rec in records:
        w, h = rec.width, rec.height
        boxes = [(0, 0, w // 2, h // 2), (w // 3, h // 3, w - 1, h - 1), (w // 2, 0, w, h // 3)]
        per_member = []
        for m in range(members):
            shift = m % 2  # members nearly agree: one pixel apart
            per_member.append([_box_prediction(rec.id, h, w, (x0 + shift, y0, x1, y1 - shift), 0.9 - 0.2 * j)
                               for j, (x0, y0, x1, y1) in enumerate(boxes)])
        out.append(per_member)
    return out


def check_masker(entry_or_spec: Any, params: Mapping[str, Any] | None = None, *, host: PluginHost | None = None,
                 unbounded: Iterable[str] = ()) -> None:
    """The masker contract on generated patch features of three images (one padded at the bottom).

    An ensemble masker (``consumes="pseudo-masks"``) is checked on generated member masks; give its
    ``members`` in ``params`` or let the check name two (``a/x``, ``b/y``)."""
    spec, params = _resolve("maskers", entry_or_spec, params, host)
    where = f"masker {spec.name!r}"
    if getattr(spec, "ensemble", False):
        params = {"members": ["a/x", "b/y"], **params}
    check_spec("maskers", spec, params, unbounded=unbounded)

    def build() -> Any:
        masker = _build("maskers", spec, params, where)
        want = EnsembleMasker if getattr(spec, "ensemble", False) else Masker
        _require(isinstance(masker, want), "type", where, f"the factory returned {type(masker).__name__}, not a uisbench.{want.__name__}")
        _to_cpu(masker, where)
        return masker

    masker = build()
    fm, records = _masker_inputs()
    if getattr(spec, "ensemble", False):
        candidates = _member_candidates(records, len(params["members"]))

        def run(m: Any, index: Sequence[int]) -> list[list[Prediction]]:
            return [m.combine(candidates[i], records[i]) for i in index]

        everything = list(range(len(records)))
        out = run(masker, everything)
        _check_predictions(records, out, where)
        _require(any(out), "masker.images", where, "no masks at all where every member gave the same three masks")
        _require(_segs(run(masker, everything)) == _segs(out), "masker.determinism", where, "a second combine of the same input differs")
        _require(_segs(run(build(), everything)) == _segs(out), "masker.determinism", where, "a fresh build combines differently")
        _require(_segs(run(masker, everything[::-1])[::-1]) == _segs(out), "masker.batch", where,
                 "an image's masks change with the order images are combined in (state kept between images)")
        return

    out = masker.predict(fm, records)
    _check_predictions(records, out, where)
    _require(any(out), "masker.images", where, "no masks at all on three images of three clear objects each")
    _require(_segs(masker.predict(fm, records)) == _segs(out), "masker.determinism", where, "a second predict of the same features differs")
    _require(_segs(build().predict(fm, records)) == _segs(out), "masker.determinism", where, "a fresh build predicts different masks")
    for k in range(len(records)):
        alone = masker.predict(_subset(fm, [k]), [records[k]])
        _require(_segs(alone) == _segs(out[k:k + 1]), "masker.batch", where,
                 f"image {records[k].id}'s masks alone differ from its masks in a batch of {len(records)}")
    reverse = masker.predict(_subset(fm, [2, 1, 0]), records[::-1])
    _require(_segs(reverse[::-1]) == _segs(out), "masker.batch", where, "the masks change with the order of the images in the batch")
    noisy, _ = _masker_inputs(garbage=True)
    _require(_segs(masker.predict(noisy, records)) == _segs(out), "masker.padding", where,
             "large values in the padded patches (FeatureMap.valid False) changed the masks: mask only valid_rect/crop")


# ---------------------------------------------------------------------------------------------
# Students
# ---------------------------------------------------------------------------------------------


def check_student(entry_or_spec: Any, params: Mapping[str, Any] | None = None, *, host: PluginHost | None = None,
                  backbone: Backbone | None = None, fit: bool = True, workdir: str | Path | None = None,
                  unbounded: Iterable[str] = ()) -> None:
    """The student contract: built on ``backbone`` (default :class:`TinyBackbone`), moved, provenance;
    with ``fit`` it trains twice on the tiny dataset with its ground truth as pseudo-masks (seed 0,
    in fresh folders under ``workdir``, a temporary one by default) and predicts its images:
    valid predictions, the same under the same seed. Give ``params`` that train in seconds."""
    import tempfile
    from pathlib import Path

    spec, params = _resolve("students", entry_or_spec, params, host)
    where = f"student {spec.name!r}"
    check_spec("students", spec, params, unbounded=unbounded)

    def build() -> Student:
        import torch

        torch.manual_seed(0)
        student = _build("students", spec, params, where, backbone=backbone if backbone is not None else TinyBackbone())
        _require(isinstance(student, Student), "type", where, f"the factory returned {type(student).__name__}, not a uisbench.Student")
        _to_cpu(student, where)
        return student

    student = build()
    _json(student.provenance(), where)
    if not fit:
        return
    data = tiny_dataset("train")
    ids = data.image_ids()
    targets = {i: [Prediction(g.image_id, g.segmentation, g.bbox, 1.0) for g in data.ground_truth(i)] for i in ids}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        outs = []
        for run in range(2):
            folder = Path(tmp) / f"fit{run}"
            folder.mkdir()
            s = student if run == 0 else build()
            samples = s.fit(data, targets, workdir=folder, seed=0)
            _require(samples is None or (isinstance(samples, int) and not isinstance(samples, bool) and samples >= 0),
                     "student.fit", where, f"fit returned {samples!r}")
            _require(not any(Path(tmp).glob("*.tmp")), "student.fit", where, "temporary files left next to workdir")
            predicted = s.predict(data, ids)
            _require(isinstance(predicted, dict) and set(predicted) == set(ids), "student.predict", where,
                     lambda predicted=predicted: f"expected a dict keyed by {ids}, got {type(predicted).__name__} "
                     f"{sorted(predicted) if isinstance(predicted, dict) else ''}")
            records = [data.record(i) for i in ids]
            _check_predictions(records, [predicted[i] for i in ids], where, student=True)
            _json(s.provenance(), where)
            outs.append(_segs([predicted[i] for i in ids]))
        _require(outs[0] == outs[1], "student.determinism", where, "two fits with seed=0 predict different masks")


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def _metric_samples(needs: frozenset[str]) -> list[EvalSample]:
    """Three images: ground truth boxes, predictions near them (one missed, one spurious), features."""
    import numpy as np
    import torch

    data = tiny_dataset()
    samples = []
    rng = np.random.default_rng(0)
    for image_id in data.image_ids():
        rec = data.record(image_id)
        gts = data.ground_truth(image_id)
        preds = []
        for k, g in enumerate(gts[:-1] if len(gts) > 1 else gts):
            x, y, w, h = (int(v) for v in g.bbox)
            preds.append(_box_prediction(image_id, rec.height, rec.width, (x + 1, y, x + w, y + h - 1), float(0.5 + 0.1 * k)))
        preds.append(_box_prediction(image_id, rec.height, rec.width, (0, rec.height - 6, 6, rec.height), 0.3))
        features = torch.from_numpy(rng.standard_normal((8, 4, 4)).astype(np.float32)) if "features" in needs else None
        samples.append(EvalSample(rec, gts, preds, features))
    return samples


def _costs() -> list[StageCost]:
    return [StageCost(stage, 3, 1.5, 100.0, None, "cpu", "test cpu") for stage in ("features", "pseudo-masks", "student-train", "student-predict")]


def _same(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    return set(a) == set(b) and all((math.isnan(a[k]) and math.isnan(b[k])) or math.isclose(a[k], b[k], rel_tol=1e-9, abs_tol=1e-12) for k in a)


def check_metric(entry_or_spec: Any, params: Mapping[str, Any] | None = None, *, host: PluginHost | None = None,
                 unbounded: Iterable[str] = ()) -> None:
    """The metric contract on three generated images: directions, headline, pure compute, picklable
    state, shards merged equal one pass, no state shared between instances, reset, resample."""
    spec, params = _resolve("metrics", entry_or_spec, params, host)
    where = f"metric {spec.name!r}"
    check_spec("metrics", spec, params, unbounded=unbounded)

    def build() -> Metric:
        metric = _build("metrics", spec, params, where)
        _require(isinstance(metric, Metric), "type", where, f"the factory returned {type(metric).__name__}, not a uisbench.Metric")
        return metric

    metric = build()
    hib = metric.higher_is_better
    _require(isinstance(hib, Mapping) and hib and all(isinstance(v, bool) for v in hib.values()), "metric.directions", where,
             f"higher_is_better is {hib!r}")
    _require(set(metric.headline) <= set(hib), "metric.headline", where, f"headline {sorted(set(metric.headline) - set(hib))} not in higher_is_better")
    samples = _metric_samples(spec.needs)

    def feed(m: Metric, part: Sequence[EvalSample], costs: bool) -> None:
        for sample in part:
            result = m.update(sample)
            _require(result is None, "metric.update", where, f"update returned {type(result).__name__}")
        if costs and "cost" in spec.needs:
            for cost in _costs():
                m.observe_cost(cost)

    fresh = build().compute()
    feed(metric, samples, True)
    try:
        before = pickle.dumps(metric.state())
    except Exception as err:
        raise ConformanceError("metric.state", where, f"state() does not pickle: {type(err).__name__}: {err}") from err
    state = metric.state()
    _require(isinstance(state, dict), "metric.state", where, f"state() is {type(state).__name__}, not a dict")
    values = metric.compute()
    _require(isinstance(values, dict) and set(values) == set(hib), "metric.values", where,
             lambda: f"compute() names {sorted(values) if isinstance(values, dict) else type(values).__name__}, higher_is_better {sorted(hib)}")
    _require(all(isinstance(v, float) for v in values.values()), "metric.values", where,
             f"not floats: { {k: type(v).__name__ for k, v in values.items() if not isinstance(v, float)} }")
    _require(_same(metric.compute(), values) and pickle.dumps(metric.state()) == before, "metric.pure", where,
             "a second compute() gave other values or changed the state")
    # shards: images 1, 2 on one rank and 3 on another (costs are observed where the stage ran: rank 0)
    first, second = build(), build()
    feed(first, samples[:2], True)
    feed(second, samples[2:], False)
    first.merge([pickle.loads(pickle.dumps(second.state()))])
    merged = first.compute()
    _require(_same(merged, values), "metric.merge", where, f"two shards merged give {merged}, one pass {values}")
    untouched = build()
    _require(_same(untouched.compute(), fresh), "metric.instances", where,
             f"a new instance computes {untouched.compute()} after others were updated; a fresh one computed {fresh}: "
             "declare state with add_state in __init__, not as a mutable class attribute")
    draws = metric.resample([[1, 2, 3], [2, 2, 3]])
    if draws is not None:
        _require(isinstance(draws, list) and len(draws) == 2 and all(isinstance(d, dict) and set(d) == set(metric.headline) for d in draws),
                 "metric.resample", where, f"expected 2 dicts of the headline {list(metric.headline)}, got {draws!r}"[:300])
        _require(_same(draws[0], {k: values[k] for k in metric.headline}), "metric.resample", where,
                 f"the identity draw gives {draws[0]}, compute() {({k: values[k] for k in metric.headline})}")
    metric.reset()
    _require(_same(metric.compute(), fresh), "metric.reset", where, f"after reset() compute gives {metric.compute()}, a fresh instance {fresh}")


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------


def check_dataset(entry_or_spec: Any, params: Mapping[str, Any] | None = None, *, host: PluginHost | None = None,
                  unbounded: Iterable[str] = (), images: int = 3) -> None:
    """The dataset contract for every split of the spec, on the first ``images`` images of each.

    Give ``params`` that make it tiny (a folder of three images, ``images: 3`` of a generator)."""
    import numpy as np

    from . import masks

    spec, params = _resolve("datasets", entry_or_spec, params, host)
    where = f"dataset {spec.name!r}"
    check_spec("datasets", spec, params, unbounded=unbounded)
    for split in spec.splits:
        at = f"{where} split {split!r}"
        try:
            ds = spec.build(split=split, **params)
        except Exception as err:
            raise ConformanceError("dataset.splits", at, f"{type(err).__name__}: {err}") from err
        _require(isinstance(ds, Dataset), "type", at, f"the factory returned {type(ds).__name__}, not a uisbench.Dataset")
        ids = ds.image_ids()
        _require(isinstance(ids, list) and ids and all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
                 and ids == sorted(set(ids)), "dataset.ids", at, f"image_ids() = {str(ids)[:120]}")
        _require(isinstance(ds.has_ground_truth, bool) and isinstance(getattr(ds, "skipped", None), list), "dataset.flags", at,
                 f"has_ground_truth {ds.has_ground_truth!r}, skipped {type(getattr(ds, 'skipped', None)).__name__}")
        if split == "val":
            _require(ds.has_ground_truth == spec.has_ground_truth, "dataset.flags", at,
                     f"has_ground_truth {ds.has_ground_truth}, the spec says {spec.has_ground_truth}")
        again = spec.build(split=split, **params)
        for image_id in ids[:images]:
            rec = ds.record(image_id)
            _require(isinstance(rec, ImageRecord) and rec.id == image_id, "dataset.record", at, f"record({image_id}) = {rec!r}")
            image = ds.load_image(image_id)
            _require(isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.shape == (rec.height, rec.width, 3),
                     "dataset.image", at, lambda image=image, rec=rec: f"image {rec.id}: {getattr(image, 'dtype', type(image).__name__)} "
                     f"{getattr(image, 'shape', '')}, the record says ({rec.height}, {rec.width}, 3) uint8")
            _require(np.array_equal(image, again.load_image(image_id)), "dataset.image", at, f"image {image_id} differs between two builds")
            for g in ds.ground_truth(image_id):
                ok = (isinstance(g, GroundTruth) and g.image_id == image_id and len(g.bbox) == 4 and g.area > 0
                      and g.iscrowd in (0, 1) and isinstance(g.category, str))
                _require(ok, "dataset.ground_truth", at, f"image {image_id}: {str(g)[:160]}")
                shape = masks.decode(g.segmentation).shape
                _require(shape == (rec.height, rec.width), "dataset.ground_truth", at,
                         f"image {image_id}: instance {g.id} mask {shape}, image ({rec.height}, {rec.width})")
        fp = ds.fingerprint()
        _require(isinstance(fp, str) and fp and fp == ds.fingerprint() == again.fingerprint(), "dataset.fingerprint", at,
                 f"fingerprint() = {fp!r}, again {ds.fingerprint()!r}, another build {again.fingerprint()!r}")
        if ds.has_ground_truth:
            import contextlib
            import io

            from pycocotools.coco import COCO

            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    coco = COCO()
                    coco.dataset = ds.coco_ground_truth(ids[:images])
                    coco.createIndex()
            except Exception as err:
                raise ConformanceError("dataset.coco", at, f"{type(err).__name__}: {err}") from err


# ---------------------------------------------------------------------------------------------
# A whole distribution
# ---------------------------------------------------------------------------------------------

CHECKS: dict[str, Callable[..., None]] = {
    "backbones": check_backbone,
    "maskers": check_masker,
    "students": check_student,
    "metrics": check_metric,
    "datasets": check_dataset,
}


def check_plugin(dist: str, params: Mapping[str, Mapping[str, Any]] | None = None, *, host: PluginHost | None = None,
                 **options: Any) -> list[str]:
    """Run the check of its kind on every plugin that distribution ``dist`` registers (through its
    ``uisbench`` entry points); returns ``["backbones/name", ...]`` checked.

    ``params`` gives parameters per plugin, keyed ``"kind/name"`` (``"backbones/my-vit"``) or by
    the plugin's name; ``options`` go to every check that takes them (``fit=False`` for students).
    Every plugin is checked; one :class:`ConformanceError` (rule ``plugin.entries``) lists all that fail.
    """
    import inspect

    if host is None:
        from ._manager import load_plugins

        host = load_plugins()
    given = dict(params or {})
    checked, failures = [], []
    for kind, check in CHECKS.items():
        for name, owners in sorted(host.providers(kind).items()):
            if not any(info is not None and info.distribution == dist for _, info in owners):
                continue
            spec = owners[0][0]
            accepted = inspect.signature(check).parameters
            kwargs = {k: v for k, v in options.items() if k in accepted}
            try:
                check(spec, given.get(f"{kind}/{name}", given.get(name)), host=host, **kwargs)
            except (ConformanceError, ConfigError) as err:
                failures.append(str(err))
            checked.append(f"{kind}/{name}")
    problems = [f"{f.name}: failed to load: {f.error}" for f in host.failures if f.distribution == dist] + failures
    _require(checked or problems, "plugin.entries", f"distribution {dist!r}",
             "registers no plugin: is it installed (`pip install -e .`) with an entry point in group 'uisbench'?")
    _require(not problems, "plugin.entries", f"distribution {dist!r}", lambda: f"{len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return checked
