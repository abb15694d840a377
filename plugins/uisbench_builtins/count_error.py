"""Metric ``count-error``: how far the number of predicted instances is from the true number.

This is the example of a *domain metric*, written to be copied. A team that counts cells, fruit or
parcels cares less about mask AP than about getting the count right; this plugin scores exactly
that: per image ``|#predictions with score >= score_threshold - #ground-truth instances|``,
averaged over images (crowd regions are not instances and are not counted).

The recipe, in the order of this file:

1. A :class:`uisbench.Metric` subclass: ``super().__init__()``, then its state declared with
   :meth:`~uisbench.Metric.add_state` (how shards merge it: here a dict keyed by image id, merged by
   ``union``), one image at a time in :meth:`update`, and a pure :meth:`compute` that returns floats
   named as in ``higher_is_better``. ``headline`` names the values the leaderboard shows.
2. Optionally :meth:`resample`: the values on bootstrap resamples of the images, from which the
   bench reports a 95 % confidence interval. Keeping per-image evidence (not a running total) is what
   makes it a few lines.
3. A hook that yields a :class:`uisbench.MetricSpec`: name, one-line description, factory,
   parameters, what it ``needs`` and the ``stages`` it applies to.
4. An entry point in your package's ``pyproject.toml`` (``[project.entry-points.uisbench]``)
   and an entry under ``metrics:`` in a registry file.

Only the public ``uisbench`` API is imported; put heavy imports inside methods.
"""

from __future__ import annotations

import math

import uisbench

#: The parameters, declared once with their bounds: the spec hands them to `platform validate`, the
#: factory checks its arguments against them.
PARAMS = (
    uisbench.Param("score_threshold", "float", 0.5, "predictions with at least this score are counted (0: all)", ge=0, le=1),
)


class CountError(uisbench.Metric):
    """Mean absolute error of the instance count per image."""

    # 1. The direction of every value compute() returns (a lower count error is better), and the
    #    values the leaderboard shows first.
    higher_is_better = {"count_mae": False}
    headline = ("count_mae",)

    def __init__(self, score_threshold: float = 0.5) -> None:
        super().__init__()
        # Check arguments eagerly against the declared PARAMS (type, bounds), as `platform validate` does:
        # a uisbench.ConfigError that says what to change.
        uisbench.complete_params("metric count-error", PARAMS, {"score_threshold": score_threshold})
        self.score_threshold = float(score_threshold)  # a parameter, not state: never merged
        # 2. State: the error of each image, keyed by its id; shards merge by union.
        self.add_state("errors", default={}, merge="union")

    def update(self, sample: uisbench.EvalSample) -> None:
        # One image: ground truth and predictions of the stage being scored.
        true_count = sum(1 for g in (sample.ground_truth or []) if not g.iscrowd)
        predicted = sum(1 for p in sample.predictions if p.score >= self.score_threshold)
        self.errors[sample.record.id] = abs(predicted - true_count)

    def compute(self) -> dict[str, float]:
        # Pure: no state change. nan, not 0, when nothing was seen (0 would read as "perfect").
        return {"count_mae": self._mean(self.errors)}

    def resample(self, draws):
        # 3. Each draw lists image ids, with repeats: the same mean over those images.
        return [{"count_mae": self._mean([self.errors[i] for i in draw if i in self.errors])} for draw in draws]

    @staticmethod
    def _mean(errors) -> float:
        values = list(errors.values()) if isinstance(errors, dict) else list(errors)
        return sum(values) / len(values) if values else math.nan


@uisbench.hookimpl
def uisbench_metrics():
    # 3. The spec: cheap to build, the factory runs only when the metric is used.
    yield uisbench.MetricSpec(
        factory=CountError,
        name="count-error",
        description="Mean absolute difference between predicted and true instance counts per image.",
        params=PARAMS,
        needs=frozenset({"ground_truth", "predictions"}),  # the engine skips it on data without ground truth
        stages=frozenset({"pseudo-masks", "student"}),
        version="1",
    )
