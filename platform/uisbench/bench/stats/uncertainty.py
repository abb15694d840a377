"""How sure the numbers are: bootstrap confidence intervals over images, repetitions over seeds, and
which neighbours in the leaderboard are within noise of each other.

The method (also in the README, "Uncertainty"):

- **Bootstrap over images.** ``B`` resamples (registry ``bench: bootstrap:``, default 200) of the
  evaluated images, drawn with replacement by numpy's ``default_rng((seed, B, n))`` from the sorted
  image ids: the same draws for every cell of a run, so two cells' draws are paired. Each metric
  recomputes its headline values on every draw (:meth:`uisbench.Metric.resample`; pycocotools'
  per-image evaluation is reused, nothing is re-matched). The 95 % interval is the 2.5th and 97.5th
  percentile of the draws (numpy's linear interpolation), undefined draws (nan) left out.
- **Seeds.** ``--seeds N`` repeats the stochastic stages (k-means initialisation: a masker with a
  ``seed`` parameter; student training) with seeds ``seed .. seed+N-1``; features and deterministic
  maskers are computed once. A value is then the mean over the seeds, with their standard deviation
  (``ddof=1``) and the per-seed values; its interval comes from the per-draw means over the seeds, so
  it covers image sampling around the seed average.
- **Within noise.** Rows are sorted by the ranking value; a row is *within noise of the one above* when
  the paired bootstrap difference (above minus this one, higher-is-better oriented) has a 2.5th
  percentile <= 0, i.e. the data do not show the upper row ahead at 95 %.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["bootstrap_draws", "interval", "with_intervals", "combine_repeats", "rank_rows"]

#: share of defined (non-nan) draws below which no interval is reported
_MIN_DEFINED = 0.5


def bootstrap_draws(image_ids: list[int], n_draws: int, seed: int) -> list[list[int]]:
    """``n_draws`` resamples (with replacement) of ``image_ids``; a pure function of its arguments."""
    import numpy as np

    ids = sorted(int(i) for i in image_ids)
    if not ids or n_draws <= 0:
        return []
    rng = np.random.default_rng((int(seed) % 2**63, int(n_draws), len(ids)))
    picks = rng.integers(0, len(ids), size=(n_draws, len(ids)))
    return [[ids[j] for j in row] for row in picks.tolist()]


def interval(draws: list[float | None]) -> list[float] | None:
    """``[2.5th, 97.5th]`` percentile of the defined draws, or ``None`` when too few are defined."""
    import numpy as np

    defined = [float(v) for v in draws if v is not None and math.isfinite(float(v))]
    if not draws or len(defined) < _MIN_DEFINED * len(draws):
        return None
    lo, hi = np.percentile(np.asarray(defined, dtype=np.float64), [2.5, 97.5])
    return [float(lo), float(hi)]


def with_intervals(result: dict[str, Any], metric: Any, draws: list[list[int]]) -> dict[str, Any]:
    """Add ``bootstrap`` (per-draw headline values) and ``ci`` to an ok metric result."""
    if not draws or not metric.headline:
        return result
    resampled = metric.resample(draws)
    if resampled is None:
        return result
    per_value: dict[str, list[float | None]] = {}
    for name in metric.headline:
        column = []
        for values in resampled:
            value = values.get(name)
            column.append(float(value) if value is not None and math.isfinite(float(value)) else None)
        per_value[name] = column
    result["bootstrap"] = per_value
    result["ci"] = {name: interval(column) for name, column in per_value.items()}
    return result


def combine_repeats(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One metric result from its results under several seeds (all ``ok``): means, their spread,
    and intervals from the per-draw means."""
    import numpy as np

    first = results[0]
    if len(results) == 1:
        return first
    out = {k: v for k, v in first.items() if k not in ("values", "bootstrap", "ci")}
    names = list(first["values"])
    per_seed = {name: [r["values"].get(name) for r in results] for name in names}
    out["values"] = {
        name: (None if any(v is None for v in vs) else float(math.fsum(vs) / len(vs))) for name, vs in per_seed.items()
    }
    out["seeds"] = {
        "n": len(results),
        "std": {
            name: (None if any(v is None for v in vs) else float(np.std(np.asarray(vs, dtype=np.float64), ddof=1)))
            for name, vs in per_seed.items()
        },
        "values": per_seed,
    }
    if all("bootstrap" in r for r in results):
        merged: dict[str, list[float | None]] = {}
        for name in first["bootstrap"]:
            columns = list(zip(*(r["bootstrap"][name] for r in results), strict=True))
            merged[name] = [None if any(v is None for v in col) else float(math.fsum(col) / len(col)) for col in columns]
        out["bootstrap"] = merged
        out["ci"] = {name: interval(column) for name, column in merged.items()}
    return out


def rank_rows(rows: list[dict[str, Any]], higher_is_better: bool) -> list[dict[str, Any]]:
    """Sort ``rows`` (``{"id", "value", "draws", "tiebreak"}``) best first and mark each row within
    noise of the row above (paired bootstrap difference, see the module docstring)."""
    import numpy as np

    sign = 1.0 if higher_is_better else -1.0
    ordered = sorted(rows, key=lambda r: (r["value"] is None, -sign * (r["value"] or 0.0), r["tiebreak"]))
    out = []
    for position, row in enumerate(ordered):
        entry = {"id": row["id"], "value": row["value"], "ci": interval(row["draws"]) if row["draws"] else None}
        entry["within_noise_of_previous"] = None
        if position and row["value"] is not None and ordered[position - 1]["value"] is not None:
            above, here = ordered[position - 1]["draws"], row["draws"]
            if above and here and len(above) == len(here):
                diffs = [sign * (a - b) for a, b in zip(above, here, strict=True) if a is not None and b is not None]
                if len(diffs) >= _MIN_DEFINED * len(above):
                    entry["within_noise_of_previous"] = bool(np.percentile(np.asarray(diffs), 2.5) <= 0.0)
        out.append(entry)
    return out
