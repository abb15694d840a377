"""Metric ``count-error``: how far the number of predicted instances is from the true number.

This is the example of a *domain metric*, written to be copied. A team that counts cells, fruit or
parcels cares less about mask AP than about getting the count right; this plugin scores exactly
that: per image ``|#predictions with score >= score_threshold - #ground-truth instances|``,
averaged over images (crowd regions are not instances and are not counted).

The recipe, in the order of this file:

1. A :class:`uisbench.Metric` subclass: state in :meth:`reset`, one image at a time in
   :meth:`update`, a pure :meth:`compute` that returns floats named as in ``higher_is_better``.
2. State made of plain numbers and lists, so shards merge without extra code: the inherited
   :meth:`uisbench.Metric.merge` adds numbers and concatenates lists.
3. A hook that yields a :class:`uisbench.MetricSpec`: name, one-line description, factory,
   parameters, the direction of each value, what it ``needs`` and the ``stages`` it applies to.
4. An entry point in your package's ``pyproject.toml`` (``[project.entry-points.uisbench]``)
   and an entry under ``metrics:`` in a registry file.

Only the public ``uisbench`` API is imported; put heavy imports inside methods.
"""

from __future__ import annotations

import math

import uisbench


class CountError(uisbench.Metric):
    """Mean absolute error of the instance count per image."""

    # 1. The direction of every value compute() returns: a lower count error is better.
    higher_is_better = {"count_mae": False}

    def __init__(self, score_threshold: float = 0.5) -> None:
        # Check arguments eagerly, with a message that says what to change.
        if not 0.0 <= score_threshold <= 1.0:
            raise uisbench.ConfigError(
                f"metric count-error: score_threshold must be in [0, 1], got {score_threshold!r}."
            )
        self.score_threshold = float(score_threshold)
        super().__init__()  # calls reset()

    def reset(self) -> None:
        # 2. State: plain numbers (and lists), which the default merge() adds (and concatenates).
        #    Parameters such as score_threshold are left out of state() below, so they are not added.
        self.images = 0
        self.abs_error = 0

    def update(self, sample: uisbench.EvalSample) -> None:
        # One image: ground truth and predictions of the stage being scored.
        true_count = sum(1 for g in (sample.ground_truth or []) if not g.iscrowd)
        predicted = sum(1 for p in sample.predictions if p.score >= self.score_threshold)
        self.images += 1
        self.abs_error += abs(predicted - true_count)

    def state(self) -> dict[str, int]:
        # What another shard sends to be merged: only the accumulated numbers.
        return {"images": self.images, "abs_error": self.abs_error}

    def compute(self) -> dict[str, float]:
        # Pure: no state change. nan, not 0, when nothing was seen (0 would read as "perfect").
        return {"count_mae": self.abs_error / self.images if self.images else math.nan}


@uisbench.hookimpl
def uisbench_metrics():
    # 3. The spec: cheap to build, the factory runs only when the metric is used.
    yield uisbench.MetricSpec(
        name="count-error",
        description="Mean absolute difference between predicted and true instance counts per image.",
        factory=CountError,
        params=(
            uisbench.Param(
                "score_threshold", "float", 0.5, "predictions with at least this score are counted (0: all)"
            ),
        ),
        higher_is_better={"count_mae": False},
        needs=frozenset({"ground_truth", "predictions"}),  # the engine skips it on data without ground truth
        stages=frozenset({"pseudo-masks", "student"}),
        version="1",
    )
