"""``uisbench.evaluate``: the bench from Python (a notebook), the role ``simple_evaluate`` plays in
lm-evaluation-harness. ``platform bench`` is a thin layer over it.

Example::

    import uisbench

    results = uisbench.evaluate(backbones=["oracle-instance", "pixels"], maskers=["kmeans"], students=[],
                                device="cpu", workdir="runs/notebook", limit=6)
    print(results.leaderboard())           # the terminal table
    best = results.ranked()[0]             # the best contender: value, interval, stage, calibration flag
    for record in results.to_records():    # one flat record per value
        ...

Nothing heavy is imported until :func:`evaluate` runs.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["evaluate", "Results"]


class Results:
    """The results of a bench run: the results.json document with a few ways to read it.

    ``results.data`` is the document itself (``results["cells"]`` works too); :attr:`rows` its cells;
    :meth:`to_records` one flat record per value; :meth:`leaderboard` the table; :attr:`provenance`
    where the numbers came from; :attr:`exit_code` 1 when a cell failed.
    """

    def __init__(self, data: dict[str, Any], exit_code: int = 0, report_path: Path | None = None) -> None:
        self.data = data
        self.exit_code = exit_code
        self.report_path = report_path

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __repr__(self) -> str:
        ok = sum(c["status"] == "ok" for c in self.rows)
        return f"<uisbench Results: {len(self.rows)} cells ({ok} ok), ranked by {self.ranked_by}>"

    @property
    def rows(self) -> list[dict[str, Any]]:
        return list(self.data["cells"])

    @property
    def provenance(self) -> dict[str, Any]:
        return dict(self.data["provenance"])

    @property
    def ranked_by(self) -> str:
        p = self.data.get("primary_metric") or {}
        return f"{p.get('stage')}.{p.get('metric')}.{p.get('value')}"

    def ranked(self, calibration: bool = False) -> list[dict[str, Any]]:
        """The leaderboard's rows in ranking order, as the table shows them: the contenders
        (``calibration=True``: the calibration rows, ranked apart). Each row: ``rank`` (``None`` without
        a ranking value, the table's ``-``), ``id``, ``backbone``, ``masker``, ``student``, ``stage``,
        ``metric``, ``value_name``, ``value``, ``ci_low``, ``ci_high``, ``within_noise`` (of the row
        above), ``calibration``, ``pretrained``, ``status``. Rows without a value come last."""
        ranking = self.data.get("ranking") or {}
        cells = {_cell_id(c): c for c in self.rows}
        out = []
        for position, entry in enumerate(ranking.get("calibration" if calibration else "rows") or [], start=1):
            cell = cells.get(entry["id"], {})
            low, high = entry.get("ci") or (None, None)
            out.append({
                "rank": position if entry.get("value") is not None else None, "id": entry["id"],
                "backbone": cell.get("backbone"), "masker": cell.get("masker"), "student": cell.get("student"),
                "stage": ranking.get("stage"), "metric": ranking.get("metric"), "value_name": ranking.get("value"),
                "value": entry.get("value"), "ci_low": low, "ci_high": high,
                "within_noise": entry.get("within_noise_of_previous"), "calibration": bool(cell.get("calibration", calibration)),
                "pretrained": cell.get("pretrained"), "status": cell.get("status"),
            })
        return out

    def to_records(self) -> list[dict[str, Any]]:
        """One record per value: backbone, masker, student, stage, metric, value name, number, its
        interval (``ci_low``, ``ci_high``; ``None`` without), its spread over seeds (``std``), status.
        Ready for ``pandas.DataFrame(results.to_records())``."""
        records = []
        for cell in self.rows:
            base = {k: cell.get(k) for k in ("backbone", "masker", "student", "calibration", "status")}
            for stage, part in (("pseudo-masks", cell.get("pseudo_masks")), ("student", cell.get("student_stage"))):
                for metric, result in ((part or {}).get("metrics") or {}).items():
                    ci = result.get("ci") or {}
                    std = ((result.get("seeds") or {}).get("std")) or {}
                    for name, number in (result.get("values") or {}).items():
                        low, high = ci.get(name) or (None, None)
                        records.append({**base, "stage": stage, "metric": metric, "value": name, "score": number,
                                        "ci_low": low, "ci_high": high, "std": std.get(name)})
        return records

    def leaderboard(self, fmt: str = "table", columns: str | list[str] | None = None) -> str:
        """The leaderboard as text: ``table`` (fits 120 characters by default), ``markdown``, ``csv``, ``json``."""
        from .bench import render_leaderboard

        return render_leaderboard(self.data, fmt, columns)


def _cell_id(cell: dict[str, Any]) -> str:
    return f"{cell.get('backbone') or '*'}/{cell.get('masker')}/{cell.get('student') or '-'}"


def _names(what: str, value: Sequence[str] | str | None) -> list[str] | None:
    """Entry names as the CLI reads them: a list of names, or one string ``"a,b"`` (``"none"`` or
    ``""``: none); ``None`` keeps the registry's default. Anything else is refused, naming the argument."""
    from .errors import ConfigError

    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        return [] if text.lower() in ("", "none") else [p.strip() for p in text.split(",") if p.strip()]
    try:
        names = list(value)
    except TypeError:
        raise ConfigError(f"evaluate({what}=...): pass a list of entry names or a comma-separated string, "
                          f"not {type(value).__name__}") from None
    wrong = [n for n in names if not isinstance(n, str)]
    if wrong:
        raise ConfigError(f"evaluate({what}=...): entry names are strings, got {wrong[0]!r}; pass e.g. {what}=['name']")
    return names


def evaluate(
    backbones: Sequence[str] | str | None = None,
    maskers: Sequence[str] | str | None = None,
    students: Sequence[str] | str | None = None,
    metrics: Sequence[str] | str | None = None,
    dataset: str | None = None,
    *,
    device: str = "auto",
    workdir: str | Path = "runs/default",
    registry: Iterable[str | Path] = (),
    seeds: int | None = None,
    bootstrap: int | None = None,
    rank_by: str | None = None,
    finetune: str | None = None,
    limit: int | None = None,
    force: Iterable[str] = (),
    private: bool = False,
    report: bool = True,
    batch_size: int = 8,
    num_workers: int | None = None,
    skip_bad_images: bool = False,
    seed: int | None = None,
    strict_plugins: bool | None = None,
    argv: Sequence[str] | None = None,
) -> Results:
    """Run the bench and return its :class:`Results` (also written to ``workdir``: results.json, the
    leaderboard files, report.html).

    Entry names are the registry's (``platform list backbones``), as a list or, as on the command
    line, one comma-separated string (``backbones="pixels,dino-vits16"``, ``students="none"``);
    ``None`` takes the registry's bench default for this device, ``backbones="all"`` every backbone
    entry, ``students=[]`` or ``"none"`` none.
    ``registry`` adds registry files (your own entries). The other arguments are ``platform bench``'s
    options of the same names. Raises :class:`uisbench.ConfigError` (and its kin) for bad input.
    """
    from ._manager import load_plugins
    from .bench import BenchOptions, run_bench
    from .registry import load_registry

    host = load_plugins(strict=strict_plugins)
    reg = load_registry([str(p) for p in registry], host)
    if isinstance(backbones, str) and backbones.strip() == "all":
        backbones = list(reg.names("backbones"))
    options = BenchOptions(
        backbones=_names("backbones", backbones),
        maskers=_names("maskers", maskers),
        students=_names("students", students),
        metrics=_names("metrics", metrics),
        dataset=dataset,
        device=device,
        workdir=Path(workdir),
        force=frozenset(force),
        skip_bad_images=skip_bad_images,
        limit=limit,
        seed=seed,
        seeds=seeds,
        bootstrap=bootstrap,
        rank_by=rank_by,
        finetune=finetune,
        batch_size=batch_size,
        num_workers=num_workers,
        report=report,
        private=private,
        argv=list(sys.argv if argv is None else argv),
    )
    outcome = run_bench(host, reg, options)
    return Results(dict(outcome), outcome.exit_code, outcome.report_path)
