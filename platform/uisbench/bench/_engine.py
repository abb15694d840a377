"""The bench engine: plan the matrix, run each cell's stages through the cache, collect results.

Stages of a cell (backbone x masker x student)::

    features (per backbone, train and val) -> pseudo-masks (per backbone x masker)
        -> masker metrics (val pseudo-masks vs ground truth)
        -> student (fit on train pseudo-masks, predict val) -> student metrics

Work is demand-driven: a stage is computed only when something downstream is not cached, and
plugin objects (backbones above all) are built only when a stage must run. Cache keys are
computed from registry data alone (plus a memoised hash of weights files), so a fully cached
rerun builds no model.

Failure isolation: :class:`BackboneUnavailable` makes the row ``unavailable``,
:class:`IncompatibleError` from a student makes its part ``skipped``, any other exception makes
the cell ``failed`` (traceback in ``<workdir>/logs``); the run goes on.
"""

from __future__ import annotations

import gc
import os
import shutil
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import __version__
from ..contracts import EvalSample, FeatureMap, Prediction
from ..errors import BackboneUnavailable, ConfigError, IncompatibleError
from ..io import atomic_path, atomic_write_json
from ._cache import STAGES, Cache, file_sha256, folder_digest, ids_digest, make_key
from ._cost import Meter, cost_record, to_stage_cost
from ._shard import Shard, detect_shard

__all__ = ["BenchOptions", "Engine", "StageError", "resolve_device"]

#: A metric's values at one stage: {"status", "reason", "values", "higher_is_better", "info"}.
MetricResult = dict[str, Any]


@dataclass
class BenchOptions:
    """What ``platform bench`` was asked to do. ``None`` lists mean "the registry's bench default"."""

    backbones: list[str] | None = None
    maskers: list[str] | None = None
    students: list[str] | None = None
    metrics: list[str] | None = None
    dataset: str | None = None
    device: str = "auto"
    workdir: Path = Path("runs/default")
    force: frozenset[str] = frozenset()
    skip_bad_images: bool = False
    limit: int | None = None
    seed: int | None = None
    batch_size: int = 8
    num_workers: int | None = None
    report: bool = True
    report_images: int = 4
    argv: list[str] = field(default_factory=list)


class StageError(Exception):
    """A stage ended the cell: ``status`` is ``unavailable``, ``skipped`` or ``failed``."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


def resolve_device(device: str) -> str:
    if device in (None, "", "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: CUDA is not available here; use --device cpu or auto.")
    elif device != "cpu":
        raise ConfigError(f"--device {device!r}: use auto, cpu, cuda or cuda:N.")
    return device


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _chunks(ids: Sequence[int], size: int) -> list[list[int]]:
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]


def _finite(values: dict[str, Any]) -> dict[str, float | None]:
    """Metric values as JSON-safe floats (``nan``/``inf`` become ``null``)."""
    import math

    out: dict[str, float | None] = {}
    for k, v in values.items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            out[str(k)] = None
            continue
        out[str(k)] = f if math.isfinite(f) else None
    return out


def _short(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    if not isinstance(err, (BackboneUnavailable, IncompatibleError, ConfigError)):
        text = f"{type(err).__name__}: {text}"
    return text if len(text) <= 2000 else text[:1997] + "..."


def _iter_batches(dataset: Any, ids: list[int], transform: Callable[..., Any], batch_size: int, num_workers: int) -> Iterator[tuple[list[int], Any]]:
    """``(ids, pixels)`` batches decoded in DataLoader workers (bad images left out when skipping)."""
    from ..data import iter_batches

    for batch_ids, pixels, _records in iter_batches(dataset, ids, transform, batch_size=batch_size, num_workers=num_workers):
        yield [int(i) for i in batch_ids], pixels


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=None if enabled else True, leave=False, dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------
# Resolved registry entries
# ---------------------------------------------------------------------------------------------


@dataclass
class Item:
    """A registry entry resolved against its plugin: spec, parameters and its cache identity."""

    kind: str
    name: str
    plugin: str
    spec: Any
    params: dict[str, Any]
    identity: dict[str, Any]
    distribution: str
    plugin_version: str
    source: str

    def describe(self) -> dict[str, Any]:
        return {
            "plugin": self.plugin,
            "version": str(self.spec.version),
            "params": self.params,
            "distribution": self.distribution,
            "distribution_version": self.plugin_version,
            "source": self.source,
        }


class LazyBackbone:
    """A backbone built on first use; remembers unavailability; rebinds when the split changes."""

    def __init__(self, engine: Engine, item: Item) -> None:
        self.engine = engine
        self.item = item
        self.obj: Any = None
        self.unavailable: str | None = None
        self.bound: str | None = None

    def get(self) -> Any:
        if self.unavailable is not None:
            raise BackboneUnavailable(self.unavailable)
        if self.obj is None:
            try:
                obj = self.engine.build(self.item)
                obj = obj.to(self.engine.device) or obj
            except BackboneUnavailable as err:
                self.unavailable = str(err)
                raise
            if getattr(self.item.spec, "calibration", False):
                obj.calibration = True
            self.obj = obj
            self.engine.built.append(f"backbone:{self.item.name}")
        return self.obj

    def bind(self, split: str) -> Any:
        obj = self.get()
        if self.bound != split:
            obj.bind(self.engine.dataset(split))
            self.bound = split
        return obj

    def release(self) -> None:
        if self.obj is not None:
            self.obj = None
            self.bound = None
            gc.collect()
            if self.engine.device.startswith("cuda"):
                import torch

                torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------------


class Engine:
    def __init__(self, host: Any, registry: Any, options: BenchOptions) -> None:
        self.host = host
        self.registry = registry
        self.opt = options
        self.workdir = Path(options.workdir)
        self.cache = Cache(self.workdir)
        self.device = resolve_device(options.device)
        self.shard: Shard = detect_shard(self.device)
        if self.shard.distributed and self.device.startswith("cuda") and ":" not in self.device:
            self.device = f"cuda:{self.shard.local_rank}"
        self.device_type = self.device.split(":")[0]
        self.seed = int(options.seed if options.seed is not None else registry.bench.seed)
        self.force = set(options.force)
        unknown = self.force - set(STAGES)
        if unknown:
            raise ConfigError(f"--force {', '.join(sorted(unknown))}: use one of {', '.join(STAGES)}.")
        # --force STAGE redoes that stage and everything after it.
        if self.force:
            first = min(STAGES.index(s) for s in self.force)
            self.force = set(STAGES[first:])
        self.num_workers = options.num_workers if options.num_workers is not None else (0 if self.device_type == "cpu" else 4)
        self._datasets: dict[str, Any] = {}
        self._ids: dict[str, list[int]] = {}
        #: images that could not be decoded (skip_bad_images), per split: id -> {"image_id", "file", "reason"}
        self.skipped: dict[str, dict[int, dict[str, Any]]] = {"train": {}, "val": {}}
        self._memo: dict[Any, Any] = {}
        self._maskers: dict[str, Any] = {}
        self.built: list[str] = []
        self.computed = {"features": 0, "pseudo-masks": 0, "student": 0, "metrics": 0}
        self.log_path = self.workdir / "logs" / (f"bench-rank{self.shard.rank}.log" if self.shard.distributed else "bench.log")
        self.show_progress = self.shard.main

        self._resolve_matrix()

    # -- planning --------------------------------------------------------------------------------

    def _names(self, kind: str, given: list[str] | None, default: Any) -> list[str]:
        if given is None:
            names = list(self.registry.names(kind)) if default == "all" else list(default)
        else:
            names = list(given)
        for name in names:
            self.registry.entry(kind, name)  # UnknownNameError with suggestions
        return list(dict.fromkeys(names))

    def _resolve_matrix(self) -> None:
        bench = self.registry.bench
        self.backbone_names = self._names("backbones", self.opt.backbones, bench.backbones)
        self.masker_names = self._names("maskers", self.opt.maskers, bench.maskers)
        self.student_names = self._names("students", self.opt.students, bench.students)
        self.metric_names = self._names("metrics", self.opt.metrics, bench.metrics)
        self.dataset_name = self.opt.dataset or bench.dataset
        if not self.backbone_names:
            raise ConfigError("nothing to bench: no backbone selected (use --all or --backbones A,B).")
        if not self.masker_names:
            raise ConfigError("nothing to bench: no masker selected; fill `bench: maskers:` in the registry or pass --maskers.")
        self.items: dict[tuple[str, str], Item] = {}
        for kind, names in (
            ("backbones", self.backbone_names),
            ("maskers", self.masker_names),
            ("students", self.student_names),
            ("metrics", self.metric_names),
            ("datasets", [self.dataset_name]),
        ):
            for name in names:
                self.items[(kind, name)] = self._item(kind, name)
        self.backbones = {name: LazyBackbone(self, self.items[("backbones", name)]) for name in self.backbone_names}

    def _item(self, kind: str, name: str) -> Item:
        entry = self.registry.entry(kind, name)  # UnknownNameError with suggestions
        spec = self.host.spec(kind, entry.plugin)
        params = self.registry.resolved_params(entry, self.host)
        params = {k: v for k, v in params.items() if v is not self._required()}
        files: dict[str, str | None] = {}
        for param in spec.params:
            value = params.get(param.name)
            if param.type == "path" and isinstance(value, str) and value:
                path = Path(os.path.expanduser(value))
                if path.is_file():
                    files[param.name] = file_sha256(path, self.cache.hash_memo())
                else:
                    files[param.name] = folder_digest(path) if path.is_dir() else "missing"
        info = self.host.provider(kind, entry.plugin)
        identity = {
            "plugin": entry.plugin,
            "version": str(spec.version),
            "params": params,
            "files": files,
            "uisbench": __version__,
        }
        return Item(
            kind=kind,
            name=name,
            plugin=entry.plugin,
            spec=spec,
            params=params,
            identity=identity,
            distribution=info.distribution if info else "local",
            plugin_version=info.version if info else "0",
            source=entry.where(),
        )

    @staticmethod
    def _required() -> Any:
        from ..types import REQUIRED

        return REQUIRED

    def build(self, item: Item, **extra: Any) -> Any:
        return item.spec.factory(**{**item.params, **extra})

    # -- data ------------------------------------------------------------------------------------

    def dataset(self, split: str) -> Any:
        if split not in self._datasets:
            item = self.items[("datasets", self.dataset_name)]
            extra: dict[str, Any] = {"split": split}
            if self.opt.skip_bad_images:
                if item.spec.param("skip_bad_images") is None:
                    raise ConfigError(f"--skip-bad-images: dataset plugin {item.plugin!r} has no skip_bad_images parameter.")
                extra["skip_bad_images"] = True
            splits = getattr(item.spec, "splits", ("train", "val"))
            if split not in splits:
                raise ConfigError(f"dataset {self.dataset_name!r} has no {split!r} split (it has {', '.join(splits)}).")
            self._datasets[split] = self.build(item, **extra)
        return self._datasets[split]

    def ids(self, split: str) -> list[int]:
        if split not in self._ids:
            ids = sorted(int(i) for i in self.dataset(split).image_ids())
            if self.opt.limit is not None:
                ids = ids[: max(0, int(self.opt.limit))]
            if not ids:
                raise ConfigError(f"dataset {self.dataset_name!r} split {split!r} has no images.")
            self._ids[split] = ids
        return self._ids[split]

    def usable(self, split: str) -> list[int]:
        """The split's ids without the images skipped as unreadable (known once a stage saw them)."""
        bad = self.skipped.get(split, {})
        return [i for i in self.ids(split) if i not in bad]

    def note_skipped(self, split: str, items: Any) -> None:
        for item in items or []:
            self.skipped.setdefault(split, {})[int(item["image_id"])] = {
                "image_id": int(item["image_id"]),
                "file": item.get("file"),
                "reason": str(item.get("reason", "")),
            }

    def data_identity(self, split: str) -> dict[str, Any]:
        key = ("data-id", split)
        if key not in self._memo:
            item = self.items[("datasets", self.dataset_name)]
            self._memo[key] = {**item.identity, "fingerprint": self.dataset(split).fingerprint(), "split": split}
        return self._memo[key]

    @property
    def has_ground_truth(self) -> bool:
        ds = self.dataset("val")
        return bool(getattr(ds, "has_ground_truth", getattr(self.items[("datasets", self.dataset_name)].spec, "has_ground_truth", True)))

    # -- keys ------------------------------------------------------------------------------------

    def features_key(self, b: str, split: str) -> str:
        return make_key(
            stage="features",
            backbone=self.items[("backbones", b)].identity,
            data=self.data_identity(split),
            device=self.device_type,
            seed=self.seed,
        )

    def masks_key(self, b: str, m: str, split: str) -> str:
        return make_key(
            stage="pseudo-masks",
            features=self.features_key(b, split),
            masker=self.items[("maskers", m)].identity,
            device=self.device_type,
            seed=self.seed,
        )

    def student_key(self, b: str, m: str, s: str) -> str:
        return make_key(
            stage="student",
            train_masks=self.masks_key(b, m, "train"),
            train_ids=ids_digest(self.ids("train")),
            backbone=self.items[("backbones", b)].identity,
            val=self.data_identity("val"),
            val_ids=ids_digest(self.ids("val")),
            student=self.items[("students", s)].identity,
            device=self.device_type,
            seed=self.seed,
        )

    def metric_key(self, upstream: str, metric: str, features: str | None) -> str:
        return make_key(
            stage="metrics",
            upstream=upstream,
            features=features,
            metric=self.items[("metrics", metric)].identity,
            val=self.data_identity("val"),
            val_ids=ids_digest(self.ids("val")),
            seed=self.seed,
        )

    # -- collective error handling ---------------------------------------------------------------

    def log_failure(self, what: str, err: BaseException) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(f"\n==== {stamp} {what}\n")
            handle.write("".join(traceback.format_exception(type(err), err, err.__traceback__)))

    def collective(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on every rank; if it raised anywhere, raise the same :class:`StageError` everywhere."""
        result, problem = None, None
        try:
            result = fn()
        except StageError as err:
            problem = (err.status, err.reason)
        except BackboneUnavailable as err:
            problem = ("unavailable", _short(err))
        except IncompatibleError as err:
            problem = ("skipped", _short(err))
        except KeyboardInterrupt:
            raise
        except Exception as err:
            self.log_failure(what, err)
            problem = ("failed", f"{what}: {_short(err)} (traceback in {self.log_path})")
        problems = self.shard.gather(problem)
        first = next((p for p in problems if p), None)
        if first:
            raise StageError(*first)
        return result

    def decide(self, fn: Callable[[], Any]) -> Any:
        """Rank 0 looks (e.g. at the cache), every rank follows its answer."""
        return self.shard.broadcast(fn() if self.shard.main else None)

    # -- stage: features -------------------------------------------------------------------------

    def features(self, b: str, split: str) -> dict[str, Any]:
        """Make sure features of every image of ``split`` are cached; returns the split's summary."""
        memo = ("features", b, split)
        if memo in self._memo:
            return self._memo[memo]
        if ("failed", memo) in self._memo:  # do not redo a failed stage for every masker of the row
            raise self._memo[("failed", memo)]
        try:
            return self._features(b, split, memo)
        except StageError as err:
            self._memo[("failed", memo)] = err
            raise

    def _features(self, b: str, split: str, memo: tuple[str, str, str]) -> dict[str, Any]:
        lazy = self.backbones[b]
        if lazy.unavailable:
            raise StageError("unavailable", lazy.unavailable)
        key = self.features_key(b, split)
        ids = self.ids(split)
        summary_path = self.cache.summary_file("features", key, split, ids)
        forced = "features" in self.force

        summary = self.decide(lambda: None if forced else self.cache.read(summary_path))
        if summary is None:
            if forced and self.shard.main:
                summary_path.unlink(missing_ok=True)
            report = self.collective(f"{b} features ({split})", lambda: self._compute_features(lazy, key, split, ids, forced))
            reports = self.shard.gather(report)
            summary = self.collective(
                f"{b} features ({split}) summary",
                lambda: self._finish_features(lazy, key, split, ids, reports, summary_path) if self.shard.main else None,
            )
            summary = self.shard.broadcast(summary)
        self.note_skipped(split, summary.get("skipped"))
        self._memo[memo] = summary
        return summary

    def _compute_features(self, lazy: LazyBackbone, key: str, split: str, ids: list[int], forced: bool) -> dict[str, Any]:
        import torch

        bs = max(1, int(self.opt.batch_size))
        chunks = self.shard.mine(_chunks(ids, bs))
        todo = [c for c in chunks if forced or not all(self.cache.feature_file(key, i).exists() for i in c)]
        if not todo:
            return {"images": 0, "cost": None, "provenance": None, "skipped": []}
        flat = [i for c in todo for i in c]
        backbone = lazy.bind(split)
        dataset = self.dataset(split)
        meter = Meter("features", self.device)
        bar = _progress(len(flat), f"{lazy.item.name} features ({split})", self.show_progress)
        try:
            with meter:
                for batch_ids, pixels in _iter_batches(dataset, flat, backbone.preprocess, bs, self.num_workers):
                    # seeded by content, not position: a resumed or sharded run draws the same numbers
                    _seed_everything(self.seed + batch_ids[0])
                    with torch.inference_mode():
                        fm = backbone.extract(pixels.to(backbone.device), batch_ids)
                    feats = fm.features.detach().float().cpu()
                    valid = None if fm.valid is None else fm.valid.detach().bool().cpu()
                    if feats.ndim != 4 or feats.shape[0] != len(batch_ids):
                        raise ValueError(f"backbone {lazy.item.name!r} returned features of shape {tuple(feats.shape)}, expected (B={len(batch_ids)}, C, h, w)")
                    for j, image_id in enumerate(batch_ids):
                        record = {
                            "features": feats[j].to(torch.float16).clone(),
                            "valid": None if valid is None else valid[j].clone(),
                            "coverage": _coverage(backbone, dataset.record(image_id), None if valid is None else valid[j]),
                            "patch_size": int(fm.patch_size),
                            "facet": str(fm.facet),
                            "layer": int(fm.layer),
                        }
                        with atomic_path(self.cache.feature_file(key, image_id)) as tmp:
                            torch.save(record, tmp)
                    meter.images += len(batch_ids)
                    self.computed["features"] += len(batch_ids)
                    bar.update(len(batch_ids))
        finally:
            bar.close()
        wanted = set(flat)
        skipped = [dict(x) for x in getattr(dataset, "skipped", None) or [] if int(x.get("image_id", -1)) in wanted]
        return {"images": meter.images, "cost": meter.record(), "provenance": self._provenance(backbone), "skipped": skipped}

    @staticmethod
    def _provenance(backbone: Any) -> dict[str, Any]:
        try:
            prov = dict(backbone.provenance() or {})
        except Exception as err:  # provenance must not sink a run
            prov = {"error": _short(err)}
        return prov

    def _finish_features(
        self, lazy: LazyBackbone, key: str, split: str, ids: list[int], reports: list[dict[str, Any]], path: Path
    ) -> dict[str, Any]:
        skipped = {int(x["image_id"]): x for r in reports if r for x in r.get("skipped") or []}
        previous = [self.cache.read(p) for p in self.cache.other_summaries("features", key)]
        previous = [p for p in previous if p]
        for p in previous:
            for x in p.get("skipped") or []:
                if int(x["image_id"]) in set(ids) and not self.cache.feature_file(key, int(x["image_id"])).exists():
                    skipped.setdefault(int(x["image_id"]), x)
        missing = [i for i in ids if i not in skipped and not self.cache.feature_file(key, i).exists()]
        if missing:
            raise RuntimeError(f"features of {len(missing)} image(s) missing after the stage (e.g. id {missing[0]})")
        costs = [r["cost"] for r in reports if r and r.get("cost")]
        provenance = next((r["provenance"] for r in reports if r and r.get("provenance") is not None), None)
        cost = _parallel(costs) if costs else (previous[0].get("cost") if previous else None)
        if provenance is None:
            provenance = previous[0].get("provenance") if previous else self._provenance(lazy.get())
        summary = {
            "key": key,
            "split": split,
            "images": len(ids),
            "cost": cost,
            "provenance": provenance,
            "skipped": [skipped[i] for i in sorted(skipped)],
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        self.cache.write(path, summary)
        return summary

    def load_features(self, key: str, image_id: int) -> dict[str, Any]:
        import torch

        return torch.load(self.cache.feature_file(key, image_id), map_location="cpu", weights_only=True)

    # -- stage: pseudo-masks ---------------------------------------------------------------------

    def masker(self, m: str) -> Any:
        if m not in self._maskers:
            obj = self.build(self.items[("maskers", m)])
            self._maskers[m] = obj.to(self.device) or obj
            self.built.append(f"masker:{m}")
        return self._maskers[m]

    def pseudo_masks(self, b: str, m: str, split: str) -> dict[str, Any]:
        """Pseudo-masks of every image of ``split`` (cached); returns ``{"predictions", "cost", ...}``."""
        memo = ("pseudo-masks", b, m, split)
        if memo in self._memo:
            return self._memo[memo]
        key = self.masks_key(b, m, split)
        ids = self.ids(split)
        path = self.cache.summary_file("pseudo-masks", key, split, ids)
        forced = "pseudo-masks" in self.force
        done = self.decide(lambda: None if forced else _skipped_of(self.cache.read(path)))
        if done is None:
            if forced and self.shard.main:
                path.unlink(missing_ok=True)
            fkey = self.features_key(b, split)
            report = None
            self.features(b, split)
            needed = self.decide(lambda: forced or not all(self.cache.mask_file(key, i).exists() for i in self.usable(split)))
            if needed:
                report = self.collective(f"{b} / {m} pseudo-masks ({split})", lambda: self._compute_masks(b, m, key, fkey, split, ids, forced))
            reports = self.shard.gather(report)
            self.collective(
                f"{b} / {m} pseudo-masks ({split}) summary",
                lambda: self._finish_masks(key, split, ids, reports, path) if self.shard.main else None,
            )
        else:
            self.note_skipped(split, done)
        result = self._memo[memo] = {"key": key, "path": path}
        return result

    def _compute_masks(self, b: str, m: str, key: str, fkey: str, split: str, ids: list[int], forced: bool) -> dict[str, Any] | None:
        import torch

        bs = max(1, int(self.opt.batch_size))
        chunks = self.shard.mine(_chunks(self.usable(split), bs))
        todo = [c for c in chunks if forced or not all(self.cache.mask_file(key, i).exists() for i in c)]
        if not todo:
            return None
        masker = self.masker(m)
        dataset = self.dataset(split)
        meter = Meter("pseudo-masks", self.device)
        bar = _progress(sum(len(c) for c in todo), f"{b} / {m} pseudo-masks ({split})", self.show_progress)
        try:
            for chunk in todo:
                with meter:
                    loaded = [self.load_features(fkey, i) for i in chunk]
                    feats = torch.stack([r["features"].float() for r in loaded])
                    valid = None
                    if loaded[0]["valid"] is not None:
                        valid = torch.stack([r["valid"] for r in loaded])
                    fm = FeatureMap(
                        features=feats.to(masker.device),
                        image_ids=list(chunk),
                        patch_size=loaded[0]["patch_size"],
                        facet=loaded[0]["facet"],
                        layer=loaded[0]["layer"],
                        valid=None if valid is None else valid.to(masker.device),
                    )
                    records = [dataset.record(i) for i in chunk]
                    _seed_everything(self.seed + chunk[0])
                    with torch.no_grad():
                        preds = masker.predict(fm, records)
                    if len(preds) != len(chunk):
                        raise ValueError(f"masker {m!r} returned {len(preds)} prediction lists for {len(chunk)} images")
                    for image_id, image_preds in zip(chunk, preds, strict=True):
                        self.cache.write(
                            self.cache.mask_file(key, image_id),
                            {"image_id": image_id, "predictions": [p.to_coco() for p in image_preds]},
                        )
                    meter.images += len(chunk)
                self.computed["pseudo-masks"] += len(chunk)
                bar.update(len(chunk))
        finally:
            bar.close()
        return meter.record()

    def _finish_masks(self, key: str, split: str, ids: list[int], reports: list[Any], path: Path) -> None:
        predictions: dict[str, list[dict[str, Any]]] = {}
        for image_id in self.usable(split):
            item = self.cache.read(self.cache.mask_file(key, image_id))
            if item is None:
                raise RuntimeError(f"pseudo-masks of image {image_id} missing after the stage")
            predictions[str(image_id)] = item["predictions"]
        costs = [r for r in reports if r]
        cost = _parallel(costs) if costs else None
        if cost is None:
            previous = [self.cache.read(p) for p in self.cache.other_summaries("pseudo-masks", key)]
            cost = next((p.get("cost") for p in previous if p and p.get("cost")), None)
        self.cache.write(
            path,
            {
                "key": key,
                "split": split,
                "images": len(predictions),
                "skipped": [self.skipped[split][i] for i in sorted(self.skipped.get(split, {})) if i in set(ids)],
                "cost": cost,
                "predictions": predictions,
            },
        )

    def read_masks(self, b: str, m: str, split: str) -> dict[str, Any]:
        info = self.pseudo_masks(b, m, split)
        memo = ("masks-content", info["key"], split)
        if memo not in self._memo:
            data = self.cache.read(info["path"])
            if data is None:
                raise RuntimeError(f"pseudo-mask file {info['path']} unreadable")
            self._memo[memo] = data
        return self._memo[memo]

    # -- stage: student --------------------------------------------------------------------------

    def student(self, b: str, m: str, s: str) -> dict[str, Any]:
        """Train (rank 0) and predict val; returns the cached ``predictions.json`` or raises skipped."""
        memo = ("student", b, m, s)
        if memo in self._memo:
            return self._memo[memo]
        key = self.student_key(b, m, s)
        pred_path = self.cache.predictions_file(key)
        skip_path = self.cache.skipped_file(key)
        forced = "student" in self.force

        def look() -> Any:
            if forced:
                return None
            skipped = self.cache.read(skip_path)
            if skipped is not None:
                return {"skipped": skipped["reason"]}
            data = self.cache.read(pred_path)
            return {"done": True} if data is not None else None

        state = self.decide(look)
        if state and "skipped" in state:
            raise StageError("skipped", state["skipped"])
        if state is None:
            if forced and self.shard.main:
                # the whole folder: a student resumes from checkpoints it finds there (Student.fit)
                shutil.rmtree(self.cache.student_dir(key), ignore_errors=True)
            # Build the student first: a refused combination (IncompatibleError) costs no train-split work.
            student = self.collective(f"{b} / {m} / {s} student", lambda: self._build_student(b, s, key) if self.shard.main else None)
            self.pseudo_masks(b, m, "train")
            self.collective(f"{b} / {m} / {s} student", lambda: self._train_student(b, m, s, key, student) if self.shard.main else None)
        result = self._memo[memo] = {"key": key, "path": pred_path}
        return result

    def _build_student(self, b: str, s: str, key: str) -> Any:
        backbone = self.backbones[b].bind("train")
        try:
            student = self.build(self.items[("students", s)], backbone=backbone)
        except IncompatibleError as err:
            self.cache.write(self.cache.skipped_file(key), {"reason": _short(err)})
            raise
        self.built.append(f"student:{s}")
        return student.to(self.device) or student

    def _train_student(self, b: str, m: str, s: str, key: str, student: Any) -> None:
        workdir = self.cache.student_dir(key)
        workdir.mkdir(parents=True, exist_ok=True)
        train = self.read_masks(b, m, "train")
        pseudo = {int(k): [Prediction.from_coco(p) for p in v] for k, v in train["predictions"].items()}
        self.backbones[b].bind("train")

        atomic_write_json(workdir / "started.json", {"started": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        train_ids = self.usable("train")
        _seed_everything(self.seed)
        with Meter("student", self.device) as fit_meter:
            student.fit(self.dataset("train"), pseudo, workdir=workdir, seed=self.seed)
        fit_meter.images = len(train_ids)
        val_ids = self.usable("val")
        self.backbones[b].bind("val")
        with Meter("student", self.device) as pred_meter:
            preds = student.predict(self.dataset("val"), val_ids)
        pred_meter.images = len(val_ids)
        try:
            provenance = dict(student.provenance() or {})
        except Exception as err:
            provenance = {"error": _short(err)}
        out = {str(i): [p.to_coco() for p in preds.get(i, [])] for i in val_ids}
        self.cache.write(
            self.cache.predictions_file(key),
            {
                "key": key,
                "predictions": out,
                "cost": {"train": fit_meter.record(), "predict": pred_meter.record()},
                "provenance": provenance,
            },
        )
        self.computed["student"] += 1

    def read_student(self, b: str, m: str, s: str) -> dict[str, Any]:
        info = self.student(b, m, s)
        memo = ("student-content", info["key"])
        if memo not in self._memo:
            data = self.cache.read(info["path"])
            if data is None:
                raise RuntimeError(f"student predictions {info['path']} unreadable")
            self._memo[memo] = data
        return self._memo[memo]

    # -- metrics ---------------------------------------------------------------------------------

    def metrics_for(self, stage: str) -> list[str]:
        out = []
        for name in self.metric_names:
            spec = self.items[("metrics", name)].spec
            if stage not in spec.stages:
                continue
            if stage == "features" and "predictions" in spec.needs:
                continue
            out.append(name)
        return out

    def evaluate(
        self,
        what: str,
        stage: str,
        upstream: str,
        features_key: str | None,
        predictions: Callable[[], dict[str, list[dict[str, Any]]]] | None,
        costs: Callable[[], list[dict[str, Any]]],
        ensure_features: Callable[[], Any] | None = None,
    ) -> dict[str, MetricResult]:
        """Metrics of one stage of one cell, cached per metric; updates sharded, states merged on rank 0."""
        results: dict[str, MetricResult] = {}
        todo: dict[str, str] = {}
        for name in self.metrics_for(stage):
            spec = self.items[("metrics", name)].spec
            if "ground_truth" in spec.needs and not self.has_ground_truth:
                results[name] = {"status": "skipped", "reason": f"dataset {self.dataset_name!r} has no ground truth", "values": {}}
                continue
            key = self.metric_key(upstream, name, features_key if "features" in spec.needs else None)
            cached = self.decide(lambda key=key: None if "metrics" in self.force else self.cache.read(self.cache.metric_file(key)))
            if cached is not None:
                results[name] = cached
            else:
                todo[name] = key
        if not todo:
            return results
        if ensure_features is not None and any("features" in self.items[("metrics", n)].spec.needs for n in todo):
            ensure_features()
        computed = self.collective(f"{what} metrics", lambda: self._compute_metrics(what, stage, todo, features_key, predictions, costs))
        results.update(computed)
        return {name: results[name] for name in self.metrics_for(stage) if name in results}

    def _compute_metrics(
        self,
        what: str,
        stage: str,
        todo: dict[str, str],
        features_key: str | None,
        predictions: Callable[[], dict[str, list[dict[str, Any]]]] | None,
        costs: Callable[[], list[dict[str, Any]]],
    ) -> dict[str, MetricResult]:
        objs: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for name in todo:
            try:
                objs[name] = self.build(self.items[("metrics", name)])
            except Exception as err:
                self.log_failure(f"{what} metric {name}", err)
                errors[name] = _short(err)
        dataset = self.dataset("val")
        need_gt = any("ground_truth" in self.items[("metrics", n)].spec.needs for n in objs)
        need_feats = features_key is not None and any("features" in self.items[("metrics", n)].spec.needs for n in objs)
        need_preds = any("predictions" in self.items[("metrics", n)].spec.needs for n in objs)
        per_sample = [n for n in objs if self.items[("metrics", n)].spec.needs - {"cost"}]
        preds = predictions() if (predictions is not None and need_preds) else {}
        if per_sample:
            for image_id in self.shard.mine(self.usable("val")):
                record = dataset.record(image_id)
                feats = None
                if need_feats:
                    loaded = self.load_features(features_key, image_id)  # type: ignore[arg-type]
                    feats = _valid_region(loaded["features"].float(), loaded["valid"])
                sample = EvalSample(
                    record=record,
                    ground_truth=dataset.ground_truth(image_id) if need_gt else None,
                    predictions=[Prediction.from_coco(p) for p in preds.get(str(image_id), [])],
                    features=None,
                    coverage=tuple(loaded.get("coverage", (1.0, 1.0))) if need_feats else (1.0, 1.0),
                )
                for name in per_sample:
                    if name in errors:
                        continue
                    needs = self.items[("metrics", name)].spec.needs
                    sample.features = feats if "features" in needs else None
                    try:
                        objs[name].update(sample)
                    except Exception as err:
                        self.log_failure(f"{what} metric {name} on image {image_id}", err)
                        errors[name] = _short(err)
        if self.shard.main:
            for name in objs:
                if "cost" in self.items[("metrics", name)].spec.needs and name not in errors:
                    try:
                        for rec in costs():
                            objs[name].observe_cost(to_stage_cost(rec))
                    except Exception as err:
                        self.log_failure(f"{what} metric {name} cost", err)
                        errors[name] = _short(err)
        states: dict[str, Any] = {}
        for name, obj in objs.items():
            if name in errors:
                continue
            try:
                states[name] = obj.state() if self.shard.distributed else None
            except Exception as err:
                errors[name] = _short(err)
        gathered = self.shard.gather((states, errors))
        out: dict[str, MetricResult] = {}
        if self.shard.main:
            all_errors: dict[str, str] = {}
            for _, errs in gathered:
                for k, v in errs.items():
                    all_errors.setdefault(k, v)
            for name, key in todo.items():
                if name in all_errors:
                    out[name] = {"status": "failed", "reason": all_errors[name], "values": {}}
                    continue
                obj = objs[name]
                try:
                    if self.shard.distributed:
                        obj.merge([st[name] for st, _ in gathered[1:] if name in st])
                    values = _finite(obj.compute())
                    info = obj.describe() if callable(getattr(obj, "describe", None)) else {}
                except Exception as err:
                    self.log_failure(f"{what} metric {name} compute", err)
                    out[name] = {"status": "failed", "reason": _short(err), "values": {}}
                    continue
                hib = dict(getattr(obj, "higher_is_better", None) or self.items[("metrics", name)].spec.higher_is_better)
                result = {"status": "ok", "reason": None, "values": values, "higher_is_better": {k: bool(v) for k, v in hib.items()}}
                if info:
                    result["info"] = {str(k): str(v) for k, v in info.items()}
                self.cache.write(self.cache.metric_file(key), result)
                self.computed["metrics"] += 1
                out[name] = result
        return self.shard.broadcast(out)


def _parallel(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Cost of ranks running side by side: images add up, wall time is the slowest rank's."""
    if not records:
        return None
    if len(records) == 1:
        return records[0]
    gpu = [r["peak_gpu_mb"] for r in records if r.get("peak_gpu_mb") is not None]
    return cost_record(
        records[0]["stage"],
        sum(r["images"] for r in records),
        max(r["seconds"] for r in records),
        max(r["peak_host_mb"] for r in records),
        max(gpu) if gpu else None,
        records[0]["device"],
    )


def _skipped_of(summary: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    """``None`` when there is no complete summary, else its list of skipped images."""
    if summary is None:
        return None
    return list(summary.get("skipped") or [])


def _coverage(backbone: Any, record: Any, valid: Any) -> tuple[float, float]:
    """Share of the valid patch grid's height and width that the image's content covers."""
    if valid is None:
        return (1.0, 1.0)
    p = backbone.preprocessing.patch_size
    rows, cols = int(valid.any(dim=1).sum()), int(valid.any(dim=0).sum())
    ch, cw = backbone.preprocessing.content_size(record.height, record.width)
    return (min(1.0, ch / max(1, rows * p)), min(1.0, cw / max(1, cols * p)))


def _valid_region(features: Any, valid: Any) -> Any:
    """Crop ``(C, h, w)`` features to the bounding box of valid patches (pad-resized backbones)."""
    if valid is None:
        return features
    rows = valid.any(dim=1).nonzero().flatten()
    cols = valid.any(dim=0).nonzero().flatten()
    if rows.numel() == 0 or cols.numel() == 0:
        return features
    return features[:, int(rows[0]) : int(rows[-1]) + 1, int(cols[0]) : int(cols[-1]) + 1]

