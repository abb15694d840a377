"""Numbers that can be checked, not only trusted: ``platform leaderboard --merge RUN... --rescore``.

(At the top of bench/, beside the engine whose stages it re-enters: it recomputes values from saved
outputs, so it is code, not presentation; no stage imports it, so it is in no stage's fingerprint.)

A submitted run's results.json states its metric values; its work directory's cache holds what
they were computed from: the pseudo-masks (``cache/pseudo-masks/<key>/summary-<ids>.json``) and
the student's val predictions (``cache/student/<key>/summary.json``), the keys named by each cell
in results.json. Rescoring reads those predictions, builds the dataset and each metric with the
*keeper's* installed plugins (from the plugin names and parameters the run recorded, checked against
the plugins' declared bounds) and recomputes every value and interval of every metric that reads
only predictions and ground truth, exactly as the bench does (same images, same bootstrap draws).

What "differs" means (no rounding): a submitted value ``a`` and a recomputed ``b`` are the same
when both are ``null``, or both are numbers with ``|a - b| <= 1e-6 * max(1, |a|, |b|)``
(:data:`TOLERANCE`). The recomputation runs in one process over the images in sorted order, so it
does not depend on thread or rank count; the tolerance only absorbs the last bits of float
summation order between machines (~1e-12), while a hand edit of a reported (3-decimal) value is
1e-3 or more.

What it proves: each value follows from the saved predictions and the keeper's ground truth, by the
keeper's metric code. Not that the predictions came from the backbone a row names (that takes
rerunning the vendor's plugin: ``platform bench``); it does refuse one saved output named by rows of
different backbones (another row's predictions claimed for this one).

Not checked (listed, never silently accepted): metrics that read features or measured cost (the
features are not trusted input and times are not reproducible), few-label curves, label-free
agreement and stability. The ``≈`` marks are decided again from the recomputed per-draw values by
the bench's own rule (``stats.uncertainty.rank_rows``, submitted values and order) where every row
of a ranking group was recomputed, else listed as not checked. A run whose predictions cannot be
read is *cannot rescore*.

The cache is untrusted input: only JSON is read (never a pickle or a torch file), each file at most
:data:`MAX_FILE_BYTES`, a key must be 24 hex digits and the file must resolve inside the work
directory (a symbolic link out of it is refused).
"""

from __future__ import annotations

import math
import numbers
import re
from pathlib import Path
from typing import Any

__all__ = ["TOLERANCE", "MAX_FILE_BYTES", "same", "recompute_run", "rescore_run", "rescore_lines", "rescore_command"]

#: relative tolerance of :func:`same` (see the module docstring)
TOLERANCE = 1e-6
#: the largest cache file read (a summary of 5000 COCO images' RLE masks is well below)
MAX_FILE_BYTES = 512 * 1024 * 1024
_KEY = re.compile(r"[0-9a-f]{24}")
#: the metrics whose inputs the cache holds: predictions and the keeper's own ground truth
_CHECKABLE_NEEDS = frozenset({"ground_truth", "predictions"})
_STAGES = (("pseudo_masks", "pseudo-masks"), ("student_stage", "student"))


class _CannotRescore(Exception):
    """A part (or the whole run) whose inputs cannot be read or rebuilt; the message says why."""


def same(a: Any, b: Any) -> bool:
    """Whether a submitted value ``a`` equals a recomputed ``b`` (rule in the module docstring)."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, bool) or not isinstance(a, numbers.Real) or not math.isfinite(float(a)):
        return False
    return abs(float(a) - float(b)) <= TOLERANCE * max(1.0, abs(float(a)), abs(float(b)))


def _read_json(workdir: Path, relative: str) -> Any:
    """A cache file of ``workdir`` as JSON, refusing what is not plainly inside it or too large."""
    import json

    path = workdir / relative
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise _CannotRescore(f"{relative} is missing; send the whole work directory, cache/ included") from None
    if not real.is_relative_to(workdir.resolve()):
        raise _CannotRescore(f"{relative} points outside the work directory ({real}); refused")
    if not real.is_file():
        raise _CannotRescore(f"{relative} is not a regular file")
    size = real.stat().st_size
    if size > MAX_FILE_BYTES:
        raise _CannotRescore(f"{relative} is {size} bytes, over the {MAX_FILE_BYTES}-byte limit; refused")
    try:
        return json.loads(real.read_bytes())
    except (ValueError, RecursionError, OSError) as err:
        raise _CannotRescore(f"{relative} is not readable JSON ({type(err).__name__})") from None


def _prediction(item: Any, image_id: str, size: list[int]) -> Any:
    """One saved prediction as a :class:`~uisbench.Prediction`, refused unless it is a COCO result of
    this image at its size: a mask of another size would be decoded at that size (a hostile
    ``[100000, 100000]`` is 10 GB), so the size is checked before any metric sees it."""
    from ..contracts import Prediction

    if not isinstance(item, dict) or not isinstance(item.get("segmentation"), dict):
        raise ValueError("not a COCO result with an RLE segmentation")
    rle = item["segmentation"]
    if rle.get("size") != size or not isinstance(rle.get("counts"), str):
        raise ValueError(f"its mask is not a compressed RLE of the image's size {size} (size {str(rle.get('size'))[:40]})")
    prediction = Prediction.from_coco(item)
    scalars = [*prediction.bbox, prediction.score]
    if str(prediction.image_id) != image_id or len(prediction.bbox) != 4 or not all(math.isfinite(v) for v in scalars):
        raise ValueError("its image_id, bbox or score is not this image's or not finite")
    return prediction


def _predictions(workdir: Path, stage: str, key: Any, keeper: _Keeper) -> dict[str, list[Any]]:
    """The saved predictions of one stage output ``key``, as ``{str(image id): [Prediction]}``, checked."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise _CannotRescore(f"its {stage} cache key {str(key)[:40]!r} is not 24 hex digits; refused")
    relative = (f"cache/pseudo-masks/{key}/summary-{keeper.all_ids_digest}.json" if stage == "pseudo-masks"
                else f"cache/student/{key}/summary.json")
    summary = _read_json(workdir, relative)
    if not isinstance(summary, dict) or summary.get("key") != key or not isinstance(summary.get("predictions"), dict):
        raise _CannotRescore(f"{relative} is not a {stage} summary of key {key}")
    raw = summary["predictions"]
    wanted = {str(i) for i in keeper.ids}
    if set(raw) != wanted:
        extra, missing = sorted(set(raw) - wanted)[:3], sorted(wanted - set(raw))[:3]
        raise _CannotRescore(f"{relative} holds predictions of other images than the keeper's split "
                             f"(not in the split: {extra}, missing: {missing})")
    out: dict[str, list[Any]] = {}
    for image_id, items in raw.items():
        record = keeper.dataset.record(int(image_id))
        try:
            if not isinstance(items, list):
                raise TypeError("not a list of predictions")
            out[image_id] = [_prediction(p, image_id, [record.height, record.width]) for p in items]
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise _CannotRescore(f"{relative}: a prediction of image {image_id} is malformed ({type(err).__name__}: {err})") from None
    return out


class _Keeper:
    """The keeper's side of one run: its dataset split and metric entries rebuilt from the keeper's
    plugins, the image ids and bootstrap draws the bench used."""

    def __init__(self, host: Any, results: dict[str, Any]) -> None:
        from ..types import complete_params
        from ._cache import ids_digest
        from .stats.uncertainty import bootstrap_draws

        self.host, self.results = host, results
        ds = results["dataset"]
        spec = self._spec("datasets", ds["plugin"], ds.get("version"), "dataset")
        params = dict(ds.get("params") or {})
        try:
            params = complete_params(f"dataset {ds['plugin']}", spec.params, params, getattr(spec, "check", None))
        except Exception as err:
            raise _CannotRescore(f"the run's dataset parameters are refused by the keeper's plugin: {err}") from None
        options = (results.get("run") or {}).get("options") or {}
        extra = {"split": "val"}
        if options.get("skip_bad_images") and spec.param("skip_bad_images") is not None:
            extra["skip_bad_images"] = True
        try:
            self.dataset = spec.factory(**{**params, **extra})
        except Exception as err:
            raise _CannotRescore(f"the keeper cannot build dataset {ds['plugin']!r}: {type(err).__name__}: {err}") from None
        ids = sorted(int(i) for i in self.dataset.image_ids())
        limit = options.get("limit")
        if limit is not None:
            ids = ids[: max(0, int(limit))]
        submitted = (ds.get("splits") or {}).get("val") or {}
        mine = {"fingerprint": self.dataset.fingerprint(), "images": len(ids)}
        if submitted.get("fingerprint") != mine["fingerprint"] or submitted.get("images") != mine["images"]:
            raise _CannotRescore(f"the keeper's val split is not the run's: fingerprint {mine['fingerprint']} vs "
                                 f"{submitted.get('fingerprint')}, images {mine['images']} vs {submitted.get('images')}")
        self.all_ids_digest = ids_digest(ids)
        skipped = {int(s["image_id"]) for s in ds.get("skipped_images") or [] if s.get("split") == "val" and s.get("image_id") is not None}
        self.ids = [i for i in ids if i not in skipped]
        ranking = results.get("ranking") or {}
        self.draws = bootstrap_draws(self.ids, int(ranking.get("bootstrap") or 0), int((results.get("run") or {}).get("seed") or 0))
        self._gt: dict[int, Any] = {}

    def _spec(self, kind: str, plugin: Any, version: Any, what: str) -> Any:
        try:
            spec = self.host.spec(kind, str(plugin))
        except Exception:
            raise _CannotRescore(f"the keeper has no {what} plugin {plugin!r} installed") from None
        if str(spec.version) != str(version):
            raise _CannotRescore(f"the keeper's {what} plugin {plugin!r} is version {spec.version}, the run used {version}")
        return spec

    def metric(self, name: str) -> tuple[Any, Any]:
        """``(spec, built metric)`` of the run's metric entry ``name`` with the keeper's plugin."""
        from ..types import complete_params

        entry = (self.results.get("metrics") or {}).get(name)
        if not isinstance(entry, dict):
            raise _CannotRescore(f"metric {name!r} is not described in results.json")
        spec = self._spec("metrics", entry.get("plugin"), entry.get("version"), f"metric {name!r}")
        try:
            params = complete_params(f"metric {name}", spec.params, dict(entry.get("params") or {}), getattr(spec, "check", None))
            return spec, spec.factory(**params)
        except Exception as err:
            raise _CannotRescore(f"the keeper cannot build metric {name!r}: {type(err).__name__}: {err}") from None

    def ground_truth(self, image_id: int) -> Any:
        if image_id not in self._gt:
            self._gt[image_id] = self.dataset.ground_truth(image_id)
        return self._gt[image_id]

    def score(self, name: str, predictions: dict[str, list[Any]]) -> dict[str, Any]:
        """One metric over one stage output, as the bench computes it (values, headline intervals)."""
        from ..contracts import EvalSample
        from .stages.evaluate import _checked_values
        from .stats.uncertainty import with_intervals

        spec, metric = self.metric(name)
        needs = set(spec.needs)
        try:
            for image_id in self.ids:
                metric.update(EvalSample(
                    record=self.dataset.record(image_id),
                    ground_truth=self.ground_truth(image_id) if "ground_truth" in needs else None,
                    predictions=predictions.get(str(image_id), []),
                ))
            values = _checked_values(name, metric.compute(), dict(metric.higher_is_better))
            return with_intervals({"status": "ok", "values": values}, metric, self.draws)
        except Exception as err:  # malformed masks in the predictions end here, named
            raise _CannotRescore(f"metric {name!r} failed on the saved predictions: {type(err).__name__}: {err}") from None


def _checkable(host: Any, results: dict[str, Any], name: str) -> str | None:
    """``None`` when metric ``name`` can be recomputed from saved predictions, else why not."""
    needs = set(((results.get("metrics") or {}).get(name) or {}).get("needs") or [])
    try:
        needs = set(host.spec("metrics", results["metrics"][name]["plugin"]).needs)
    except Exception:
        pass  # a plugin the keeper lacks: _Keeper.metric says so when it is needed
    if needs - _CHECKABLE_NEEDS:
        return f"reads {', '.join(sorted(needs - _CHECKABLE_NEEDS))}, not in the saved predictions"
    return None


def _backbone_identity(results: dict[str, Any], name: Any) -> str:
    """A cell's backbone entry as results.json records it (plugin, version, parameters); ``-`` for an
    ensemble's own row, which has none."""
    import json

    entry = (results.get("backbones") or {}).get(name) if name else None
    if not isinstance(entry, dict):
        return "-" if not name else f"unrecorded {name}"
    return json.dumps({k: entry.get(k) for k in ("plugin", "version", "params")}, sort_keys=True, default=str)


def _compare(found: dict[str, Any], where: str, name: str, submitted: dict[str, Any], recomputed: dict[str, Any]) -> int:
    """Add each differing value and interval bound of one metric result to ``found``; the number compared."""
    compared = 0
    sub_values, new_values = submitted.get("values") or {}, recomputed.get("values") or {}
    for value in sorted(set(sub_values) | set(new_values)):
        compared += 1
        if not same(sub_values.get(value), new_values.get(value)):
            found["differences"].append({"where": where, "metric": name, "value": value,
                                         "submitted": sub_values.get(value), "recomputed": new_values.get(value)})
    sub_ci, new_ci = submitted.get("ci") or {}, recomputed.get("ci") or {}
    for value in sorted(set(sub_ci) | set(new_ci)):
        a, b = sub_ci.get(value), new_ci.get(value)
        compared += 1
        ok = (a is None and b is None) or (isinstance(a, list) and isinstance(b, list) and len(a) == len(b) == 2
                                           and all(same(x, y) for x, y in zip(a, b, strict=True)))
        if not ok:
            found["differences"].append({"where": where, "metric": name, "value": f"{value} interval",
                                         "submitted": a, "recomputed": b})
    return compared


def recompute_run(path: str | Path, host: Any, only: set[tuple[str, str, str]] | None = None) -> dict[str, Any]:
    """Recompute one run's metric results from its saved predictions (a work directory, or the
    results.json inside one), with the keeper's plugins, as the bench computed them.

    ``only``: the ``(cell id, stage, metric)`` to recompute (``None``: every checkable one). Returns
    ``{"run", "document", "results", "submitted", "draws", "reason", "problems", "skipped"}``: ``results`` maps
    ``(cell id, stage, metric)`` to the recomputed result, whose ``bootstrap`` holds the per-draw
    headline values (the numbers the bench's ranking pairs for its ``≈`` marks, see
    ``stats.uncertainty.rank_rows``); ``submitted`` maps the same keys to results.json's result,
    ``document`` is results.json itself; ``draws`` are the bootstrap resamples (image ids) used;
    ``reason`` says why nothing could be recomputed (``None`` when the cache and the keeper's dataset
    were usable), ``problems`` why a part could not, ``skipped`` the metrics that read other inputs.
    """
    from . import load_results
    from ._cells import cell_id
    from .stats.uncertainty import combine_repeats

    p = Path(path)
    workdir = p if p.is_dir() else p.parent
    results = load_results(p)
    out: dict[str, Any] = {"run": str(p), "document": results, "results": {}, "submitted": {}, "draws": [],
                           "reason": None, "problems": [], "skipped": {}}
    if not (workdir / "cache").is_dir():
        out["reason"] = (f"no saved predictions: {workdir} has no cache/ folder next to results.json; "
                         "a run is checkable only with its work directory, cache/ included")
        return out
    try:
        keeper = _Keeper(host, results)
    except _CannotRescore as err:
        out["reason"] = str(err)
        return out
    out["draws"] = keeper.draws
    done: dict[tuple[str, str, tuple[Any, ...]], dict[str, Any]] = {}  # every student of a row shares its masks
    # (stage, key) -> {backbone entry as recorded -> the cells}: one saved output named by two rows of
    # different backbones is one row's predictions claimed for another
    named: dict[tuple[str, str], dict[str, set[str]]] = {}
    for cell in results.get("cells") or []:
        cid = cell_id(cell)
        for field, stage in _STAGES:
            part = cell.get(field) or {}
            if part.get("status") != "ok":
                continue
            for name, submitted in sorted((part.get("metrics") or {}).items()):
                if submitted.get("status") != "ok" or (only is not None and (cid, stage, name) not in only):
                    continue
                why = _checkable(host, results, name)
                if why:
                    out["skipped"][name] = why
                    continue
                keys = part.get("keys") or [part.get("key")]  # one per seed where the stage repeats
                backbone = _backbone_identity(results, cell.get("backbone"))
                for k in keys:
                    named.setdefault((stage, str(k)), {}).setdefault(backbone, set()).add(cid)
                memo = (name, stage, tuple(map(str, keys)))
                if memo not in done:
                    try:
                        done[memo] = combine_repeats([keeper.score(name, _predictions(workdir, stage, k, keeper))
                                                      for k in keys])
                    except _CannotRescore as err:
                        out["problems"].append(f"{cid} {stage} metric {name}: {err}")
                        continue
                out["results"][(cid, stage, name)] = done[memo]
                out["submitted"][(cid, stage, name)] = submitted
    for (stage, key), owners in sorted(named.items()):
        if len(owners) > 1:
            cells = sorted(c for ids in owners.values() for c in ids)
            out["problems"].append(f"{stage} key {key} is named by cells of different backbones ({', '.join(cells)}): "
                                   "one row's saved predictions cannot stand for another's")
    return out


def rescore_run(path: str | Path, host: Any) -> dict[str, Any]:
    """Rescore one run (a work directory, or the results.json inside one).

    Returns ``{"run", "status", "reason", "checked", "differences", "problems", "not_checked"}``:
    ``status`` is ``accepted`` (every checkable value recomputed equal), ``differs`` (``differences``
    lists where, which metric and value, submitted vs recomputed) or ``cannot rescore`` (``reason``).
    """
    found: dict[str, Any] = {"run": str(Path(path)), "status": "cannot rescore", "reason": None, "checked": 0,
                             "differences": [], "problems": [], "not_checked": []}
    again = recompute_run(path, host)
    if again["reason"]:
        found["reason"] = again["reason"]
        return found
    recomputed, results = again["results"], again["document"]
    for (cid, stage, name), result in recomputed.items():
        found["checked"] += _compare(found, f"{cid} {stage}", name, again["submitted"][(cid, stage, name)], result)
    found["problems"] = list(again["problems"])
    ranking = results.get("ranking") or {}
    for group in ("rows", "calibration"):  # the leaderboard's own copy of the ranking value
        for row in ranking.get(group) or []:
            result = recomputed.get((row.get("id"), ranking.get("stage"), ranking.get("metric")))
            if result is None:
                continue
            value = ranking.get("value")
            found["checked"] += _compare(found, f"{row.get('id')} ranking", str(ranking.get("metric")),
                                         {"values": {value: row.get("value")}, "ci": {value: row.get("ci")}},
                                         {"values": {value: result["values"].get(value)}, "ci": {value: (result.get("ci") or {}).get(value)}})
    unmarked = _check_marks(found, ranking, recomputed)
    found["not_checked"] = [f"metric {n}: {why}" for n, why in sorted(again["skipped"].items())]
    found["not_checked"] += ["few-label curves, label-free agreement and stability: not recomputed"]
    found["not_checked"] += [f"≈ marks of the {g}: a row's per-draw values were not recomputed" for g in unmarked]
    if found["differences"]:
        found["status"] = "differs"
    elif found["problems"]:
        found["reason"] = found["problems"][0] + (f" (and {len(found['problems']) - 1} more)" if len(found["problems"]) > 1 else "")
    elif not found["checked"]:
        found["reason"] = "nothing to recompute: no cell has an ok metric that reads only predictions and ground truth"
    else:
        found["status"] = "accepted"
    return found


def _check_marks(found: dict[str, Any], ranking: dict[str, Any], recomputed: dict[tuple[str, str, str], dict[str, Any]]) -> list[str]:
    """Decide each ranking group's ``≈`` marks again with the bench's own rule (``rank_rows``) from the
    recomputed per-draw values and add each mark that differs to ``found``; the groups that could not
    be decided (a row with a value but no recomputed result)."""
    from .stats.uncertainty import rank_rows

    value, unmarked = ranking.get("value"), []
    for group, words in (("rows", "contenders"), ("calibration", "calibration rows")):
        rows = ranking.get(group) or []
        again = []
        for row in rows:
            result = recomputed.get((row.get("id"), ranking.get("stage"), ranking.get("metric")))
            if result is None and row.get("value") is not None:
                break
            # a row without a value had no draws in the bench either; a metric without resample neither
            draws = ((result or {}).get("bootstrap") or {}).get(value) or []
            again.append({"id": row.get("id"), "value": row.get("value"), "draws": draws, "tiebreak": row.get("id")})
        else:
            if len(rows) > 1:
                decided = {e["id"]: e["within_noise_of_previous"] for e in rank_rows(again, bool(ranking.get("higher_is_better", True)))}
                for row in rows[1:]:
                    found["checked"] += 1
                    if row.get("within_noise_of_previous") != decided.get(row.get("id")):
                        found["differences"].append({"where": f"{row.get('id')} ranking", "metric": str(ranking.get("metric")),
                                                     "value": "≈ mark (within noise of the row above)",
                                                     "submitted": row.get("within_noise_of_previous"), "recomputed": decided.get(row.get("id"))})
            continue
        unmarked.append(words)
    return unmarked


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return "null" if value is None else str(value)


def rescore_lines(found: dict[str, Any]) -> list[str]:
    """What the CLI prints of one run's rescore, one line per finding, then what was not checked."""
    run = found["run"]
    if found["status"] == "accepted":
        lines = [f"rescore {run}: accepted ({found['checked']} values recomputed, equal within {TOLERANCE:g} relative)"]
    elif found["status"] == "cannot rescore":
        lines = [f"rescore {run}: cannot rescore: {found['reason']}"]
        lines += [f"rescore {run}: cannot rescore {p}" for p in found["problems"][1:]]
    else:
        lines = [f"rescore {run}: DIFFERS {d['where']} metric {d['metric']} {d['value']}: submitted {_fmt(d['submitted'])}, "
                 f"recomputed {_fmt(d['recomputed'])}" for d in found["differences"]]
        lines += [f"rescore {run}: cannot rescore {p}" for p in found["problems"]]
    if found["not_checked"]:
        lines.append(f"rescore {run}: not checked: {'; '.join(found['not_checked'])}")
    return lines


def rescore_command(paths: list[str], out: str | None, strict_plugins: bool | None = None) -> int:
    """``--rescore``: rescore every run with the installed plugins, print the findings on stderr,
    write ``rescore.json`` into ``out`` (when given); 0 when every run is accepted, else 1."""
    import sys

    from .._manager import load_plugins
    from ..io import atomic_write_json

    host = load_plugins(strict=strict_plugins)
    found = [rescore_run(p, host) for p in paths]
    for run in found:
        for line in rescore_lines(run):
            print(line, file=sys.stderr)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(out) / "rescore.json", {"tolerance": TOLERANCE, "runs": found})
    return 0 if all(r["status"] == "accepted" for r in found) else 1
