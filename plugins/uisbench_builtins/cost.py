"""Metric ``cost``: throughput, wall time and peak memory of each pipeline stage, hardware named.

The engine measures every stage it runs and hands the measurement over as a
:class:`uisbench.StageCost` through :meth:`Cost.observe_cost` (the metric declares
``needs={"cost"}`` and reads nothing else). For each stage in ``stages``
(``features``, ``pseudo-masks``, ``student-train``, ``student-predict`` by default)
:meth:`Cost.compute` reports four floats, the stage name with ``-`` turned into ``_``::

    features_images_per_s    images / seconds                 (higher is better)
    features_seconds         wall time of the stage           (lower is better)
    features_peak_host_mb    peak resident host memory, MiB   (lower is better)
    features_peak_gpu_mb     peak GPU memory, MiB; nan on CPU (lower is better)

Images are what the stage processed: for ``student-train`` the training samples (iterations x batch
size, as the student's ``fit`` reports them), so ``student_train_images_per_s`` is training
throughput; ``student-predict`` counts the images predicted.

A stage that was not observed (no student in the run, or taken from the cache) reports ``nan``.

Values must be floats, so the hardware is not among them: :meth:`Cost.describe` returns it as
text (``{"hardware": ..., "features_device": ..., "features_hardware": ...}``) and the engine
copies that into the cell's provenance. Numbers from different hardware are not comparable.

Aggregation: several observations of one stage in a process are consecutive pieces (times and
image counts add up, peaks take the maximum); shards merged with :meth:`Cost.merge` ran side by
side (images add up, the wall time is the slowest shard's, peaks take the maximum), so
``images_per_s`` is the throughput of all shards together.
"""

from __future__ import annotations

import math
from typing import Any

import uisbench

STAGES = ("features", "pseudo-masks", "student-train", "student-predict")
_VALUES = (("images_per_s", True), ("seconds", False), ("peak_host_mb", False), ("peak_gpu_mb", False))


def value_names(stages=STAGES) -> dict[str, bool]:
    """``higher_is_better`` of the values reported for ``stages``."""
    return {f"{s.replace('-', '_')}_{v}": better for s in stages for v, better in _VALUES}


class Cost(uisbench.Metric):
    """Cost per pipeline stage from the engine's :class:`uisbench.StageCost` measurements."""

    def __init__(self, stages: list[str] | tuple[str, ...] = STAGES) -> None:
        super().__init__()
        if not stages or len(set(stages)) != len(stages):
            raise uisbench.ConfigError(
                f"metric cost: stages must be a non-empty list of distinct names, got {stages!r}."
            )
        self.stages = tuple(stages)
        self.higher_is_better = value_names(self.stages)
        #: stage -> {"images", "seconds", "peak_host_mb", "peak_gpu_mb", "device", "hardware"};
        #: merged by state()/merge() below (shards ran side by side: no simple rule fits)
        self.costs: dict[str, dict[str, Any]] = {}

    def reset(self) -> None:
        self.costs = {}

    def update(self, sample: uisbench.EvalSample) -> None:
        """Per-image samples carry no cost; nothing to do."""

    def observe_cost(self, cost: uisbench.StageCost) -> None:
        if cost.stage not in self.stages:
            raise uisbench.PluginError(
                f"metric cost: unknown stage {cost.stage!r}; known stages are {', '.join(self.stages)} "
                "(add it to the `stages` parameter of the registry's cost entry)."
            )
        new = {
            "images": int(cost.images),
            "seconds": float(cost.seconds),
            "peak_host_mb": float(cost.peak_host_mb),
            "peak_gpu_mb": math.nan if cost.peak_gpu_mb is None else float(cost.peak_gpu_mb),
            "device": str(cost.device),
            "hardware": str(cost.hardware),
        }
        old = self.costs.get(cost.stage)
        self.costs[cost.stage] = new if old is None else _combine(old, new, seconds=lambda a, b: a + b)

    def state(self) -> dict[str, Any]:
        return {"costs": {k: dict(v) for k, v in self.costs.items()}}

    def merge(self, states) -> None:
        for other in states:
            for stage, new in other["costs"].items():
                old = self.costs.get(stage)
                self.costs[stage] = dict(new) if old is None else _combine(old, new, seconds=max)

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for stage in self.stages:
            key = stage.replace("-", "_")
            c = self.costs.get(stage)
            if c is None:
                out.update({f"{key}_{v}": math.nan for v, _ in _VALUES})
                continue
            out[f"{key}_images_per_s"] = c["images"] / c["seconds"] if c["seconds"] > 0 else math.nan
            out[f"{key}_seconds"] = c["seconds"]
            out[f"{key}_peak_host_mb"] = c["peak_host_mb"]
            out[f"{key}_peak_gpu_mb"] = c["peak_gpu_mb"]
        return out

    def describe(self) -> dict[str, str]:
        """Where the numbers were measured, as text for the results' provenance.

        ``hardware`` lists the distinct hardware of all observed stages (``"; "``-separated);
        ``<stage>_device`` and ``<stage>_hardware`` give each stage's own.
        """
        out: dict[str, str] = {}
        for stage, c in self.costs.items():
            key = stage.replace("-", "_")
            out[f"{key}_device"] = c["device"]
            out[f"{key}_hardware"] = c["hardware"]
        out["hardware"] = "; ".join(dict.fromkeys(c["hardware"] for c in self.costs.values()))
        return out


def _combine(old: dict[str, Any], new: dict[str, Any], *, seconds) -> dict[str, Any]:
    """Two measurements of one stage: images add up, seconds by ``seconds``, peaks by maximum."""

    def peak(a: float, b: float) -> float:
        return a if math.isnan(b) else b if math.isnan(a) else max(a, b)

    def text(a: str, b: str) -> str:  # distinct values, first seen first
        return "; ".join(dict.fromkeys([*a.split("; "), *b.split("; ")]))

    return {
        "images": old["images"] + new["images"],
        "seconds": seconds(old["seconds"], new["seconds"]),
        "peak_host_mb": peak(old["peak_host_mb"], new["peak_host_mb"]),
        "peak_gpu_mb": peak(old["peak_gpu_mb"], new["peak_gpu_mb"]),
        "device": text(old["device"], new["device"]),
        "hardware": text(old["hardware"], new["hardware"]),
    }


@uisbench.hookimpl
def uisbench_metrics():
    stages = uisbench.Param("stages", "list[str]", list(STAGES), "pipeline stages reported, in order")
    description = "Per stage: images/s, wall time, peak host and GPU memory; hardware via describe()."
    yield uisbench.MetricSpec(name="cost", description=description, factory=Cost, params=(stages,),
                              needs=frozenset({"cost"}), stages=frozenset({"features", "pseudo-masks", "student"}))
