"""Metric evaluation of one stage's output: each metric cached under its own key, per-image updates
sharded across ranks, metric states merged on rank 0.

A metric result is ``{"status", "reason", "values", "higher_is_better"[, "info"]}``; ``status`` is
``ok``, ``skipped`` (the data lacks what the metric needs) or ``failed`` (traceback in the log).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...contracts import EvalSample, Prediction
from .._cache import ids_digest, make_key
from .._code import code_fingerprint
from .._context import short_error
from .._cost import to_stage_cost
from .._stage import CacheDamaged, StageError
from ..stats.uncertainty import bootstrap_draws, with_intervals

if TYPE_CHECKING:
    from .._pipeline import Pipeline
    from .features import FeaturesStage

__all__ = ["Scoring", "MetricEvaluator"]

#: A metric's result at one stage: {"status", "reason", "values", "higher_is_better", "info"}.
MetricResult = dict[str, Any]


@dataclass
class Scoring:
    """What to score: a stage's output (its key), the predictions and costs it yields, and the
    features stage whose per-image features metrics that need ``features`` read."""

    what: str
    stage: str
    upstream_key: str
    features: FeaturesStage | None
    predictions: Callable[[], dict[str, list[dict[str, Any]]]] | None
    costs: Callable[[], list[dict[str, Any]]]


def _checked_values(name: str, values: Any, higher_is_better: dict[str, Any]) -> dict[str, float | None]:
    """A metric's ``compute()`` held to the contract: a dict of the names in ``higher_is_better`` to
    real numbers; JSON-safe floats out (``nan``/``inf`` become ``null``). Anything else is an error
    naming the metric and the value, so a bug never becomes a silent ``null`` in the leaderboard."""
    import numbers

    if not isinstance(values, dict):
        raise TypeError(f"metric {name}: compute() returned {type(values).__name__}, not a dict of values")
    unknown = sorted(str(k) for k in values if k not in higher_is_better)
    if unknown:
        raise TypeError(f"metric {name}: compute() returned {unknown}, which higher_is_better does not name")
    out: dict[str, float | None] = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"metric {name}: value {key!r} is {type(value).__name__} {value!r:.40}, not a number")
        f = float(value)
        out[str(key)] = f if math.isfinite(f) else None
    return out


class MetricEvaluator:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.ctx = pipeline.ctx
        self.plan = pipeline.plan
        self._draws: list[list[int]] | None = None

    def draws(self) -> list[list[int]]:
        """The run's bootstrap resamples of the val images (the same for every cell: paired)."""
        if self._draws is None:
            self._draws = bootstrap_draws(self.pipeline.data.usable("val"), self.ctx.bootstrap, self.ctx.seed)
        return self._draws

    def _spec(self, name: str) -> Any:
        return self.plan.entry("metrics", name).spec

    def _max_dets_mismatch(self, name: str) -> str | None:
        """A metric entry with a ``max_dets`` parameter must keep as many detections per image as the
        dataset's evaluation protocol (COCO 100, LVIS 300): a mismatch is refused, not scored."""
        entry = self.plan.entry("metrics", name)
        wanted = getattr(self.pipeline.data.dataset("val"), "max_dets", 100)
        if "max_dets" not in entry.params or entry.params["max_dets"] == wanted:
            return None
        fitting = [n for n in self.plan.metrics if self.plan.entry("metrics", n).params.get("max_dets") == wanted]
        hint = f"use metric entry {fitting[0]!r}" if fitting else f"add a metric entry with max_dets: {wanted}"
        return (f"dataset {self.pipeline.data.name!r} is evaluated with {wanted} detections per image, metric entry "
                f"{name!r} keeps {entry.params['max_dets']}; {hint} (e.g. --metrics coco-lvis for LVIS)")

    def key(self, scoring: Scoring, name: str) -> str:
        data = self.pipeline.data
        features = None
        if scoring.features is not None and "features" in self._spec(name).needs:
            features = self.pipeline.runner.key(scoring.features)
        return make_key(
            stage="metrics",
            upstream=scoring.upstream_key,
            features=features,
            metric=self.plan.entry("metrics", name).identity,
            val=data.identity("val"),
            val_ids=ids_digest(data.ids("val")),
            seed=self.ctx.seed,
            bootstrap=self.ctx.bootstrap,
            code=code_fingerprint(__name__),
        )

    def evaluate(self, scoring: Scoring) -> dict[str, MetricResult]:
        """Results of every metric that applies to ``scoring.stage``, from the cache where possible."""
        ctx, runner = self.ctx, self.pipeline.runner
        names = self.plan.metric_names_for(scoring.stage)
        results: dict[str, MetricResult] = {}
        todo: dict[str, str] = {}
        for name in names:
            if "ground_truth" in self._spec(name).needs and not self.pipeline.data.has_ground_truth:
                reason = f"dataset {self.pipeline.data.name!r} has no ground truth"
                results[name] = {"status": "skipped", "reason": reason, "values": {}}
                continue
            mismatch = self._max_dets_mismatch(name)
            if mismatch:
                results[name] = {"status": "skipped", "reason": mismatch, "values": {}}
                continue
            key = self.key(scoring, name)
            path = ctx.cache.metric_file(key)
            cached = runner.decide(lambda path=path: None if "metrics" in ctx.force else ctx.cache.read(path))
            if cached is not None:
                results[name] = cached
            else:
                todo[name] = key
        if todo:
            results.update(self._compute_healing(scoring, todo))
        return {name: results[name] for name in names if name in results}

    def _compute_healing(self, scoring: Scoring, todo: dict[str, str]) -> dict[str, MetricResult]:
        """Compute ``todo``; a features file that reads back damaged is redone, then the metrics again."""
        runner = self.pipeline.runner
        for attempt in range(3):
            if scoring.features is not None and any("features" in self._spec(n).needs for n in todo):
                self.pipeline.run(scoring.features)
            try:
                return runner.collective(f"{scoring.what} metrics", lambda: self._compute(scoring, todo))
            except CacheDamaged as err:
                if attempt == 2:
                    raise StageError("failed", f"{scoring.what} metrics: {err}; removed, but it came back damaged") from err
                runner.heal(err)
        raise AssertionError("unreachable")

    def _compute(self, scoring: Scoring, todo: dict[str, str]) -> dict[str, MetricResult]:
        ctx = self.ctx
        metrics: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for name in todo:
            try:
                metrics[name] = self.plan.entry("metrics", name).build()
            except Exception as err:
                ctx.log_failure(f"{scoring.what} metric {name}", err)
                errors[name] = short_error(err)
        needs = {name: self._spec(name).needs for name in metrics}
        per_image = [n for n in metrics if needs[n] - {"cost"}]
        if per_image:
            self._update(scoring, metrics, needs, per_image, errors)
        if ctx.shard.main:
            for name in metrics:
                if "cost" in needs[name] and name not in errors:
                    try:
                        for record in scoring.costs():
                            metrics[name].observe_cost(to_stage_cost(record))
                    except Exception as err:
                        ctx.log_failure(f"{scoring.what} metric {name} cost", err)
                        errors[name] = short_error(err)
        states: dict[str, Any] = {}
        for name, metric in metrics.items():
            if name not in errors:
                try:
                    states[name] = metric.state() if ctx.shard.distributed else None
                except Exception as err:
                    errors[name] = short_error(err)
        gathered = ctx.shard.all_gather((states, errors))
        out: dict[str, MetricResult] = {}
        if ctx.shard.main:
            all_errors: dict[str, str] = {}
            for _, errs in gathered:
                for k, v in errs.items():
                    all_errors.setdefault(k, v)
            for name, key in todo.items():
                if name in all_errors:
                    out[name] = {"status": "failed", "reason": all_errors[name], "values": {}}
                    continue
                out[name] = self._result(scoring, name, metrics[name], [st[name] for st, _ in gathered[1:] if name in st])
                if out[name]["status"] == "ok":
                    ctx.cache.write(ctx.cache.metric_file(key), out[name])
                    ctx.computed["metrics"] += 1
        return ctx.shard.broadcast(out)

    def _update(self, scoring: Scoring, metrics: dict[str, Any], needs: dict[str, Any], names: list[str], errors: dict[str, str]) -> None:
        """Feed this rank's share of the val images to the per-image metrics."""
        data = self.pipeline.data
        dataset = data.dataset("val")
        need_gt = any("ground_truth" in needs[n] for n in metrics)
        need_feats = scoring.features is not None and any("features" in needs[n] for n in metrics)
        need_preds = any("predictions" in needs[n] for n in metrics)
        preds = scoring.predictions() if (scoring.predictions is not None and need_preds) else {}
        features_key = self.pipeline.runner.key(scoring.features) if need_feats else None
        for image_id in self.ctx.shard.mine(data.usable("val")):
            feats, preprocessing = None, None
            if need_feats:
                from ...contracts import Preprocessing

                loaded = scoring.features.load(features_key, image_id)  # type: ignore[union-attr]
                feats = _valid_region(loaded["features"].float(), loaded["valid"])
                geometry = loaded.get("preprocessing")
                preprocessing = Preprocessing(**geometry) if isinstance(geometry, dict) else None
            sample = EvalSample(
                record=dataset.record(image_id),
                ground_truth=dataset.ground_truth(image_id) if need_gt else None,
                predictions=[Prediction.from_coco(p) for p in preds.get(str(image_id), [])],
                features=None,
                preprocessing=preprocessing,
            )
            for name in names:
                if name in errors:
                    continue
                sample.features = feats if "features" in needs[name] else None
                try:
                    metrics[name].update(sample)
                except Exception as err:
                    self.ctx.log_failure(f"{scoring.what} metric {name} on image {image_id}", err)
                    errors[name] = short_error(err)

    def _result(self, scoring: Scoring, name: str, metric: Any, others: list[Any]) -> MetricResult:
        """Merge the other ranks' states into ``metric`` and compute its values."""
        hib = dict(metric.higher_is_better)
        try:
            if self.ctx.shard.distributed:
                metric.merge(others)
            values = _checked_values(name, metric.compute(), hib)
            info = metric.describe() if callable(getattr(metric, "describe", None)) else {}
        except Exception as err:
            self.ctx.log_failure(f"{scoring.what} metric {name} compute", err)
            return {"status": "failed", "reason": short_error(err), "values": {}}
        result: MetricResult = {
            "status": "ok",
            "reason": None,
            "values": values,
            "higher_is_better": {k: bool(v) for k, v in hib.items()},
            "headline": [k for k in metric.headline if k in values],
        }
        if info:
            result["info"] = {str(k): str(v) for k, v in info.items()}
        if getattr(metric, "descriptive", False) is True:  # e.g. label-free: shown, never the default ranking
            result["descriptive"] = True
        try:
            return with_intervals(result, metric, self.draws())
        except Exception as err:  # an interval is extra: its failure is logged, the values stand
            self.ctx.log_failure(f"{scoring.what} metric {name} resample", err)
            return result


def _valid_region(features: Any, valid: Any) -> Any:
    """Crop ``(C, h, w)`` features to the bounding box of valid patches (pad-resized backbones)."""
    from ...contracts import FeatureMap

    one = FeatureMap(features[None], [0], 1, valid=None if valid is None else valid[None])
    return one.crop(0)
