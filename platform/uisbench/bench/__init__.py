"""The bench engine behind ``platform bench`` and ``platform leaderboard``.

Public surface::

    from uisbench.bench import BenchOptions, run_bench, render_leaderboard, validate_results

    outcome = run_bench(host, registry, BenchOptions(backbones=["pixels"], workdir=Path("runs/x")))
    print(render_leaderboard(outcome, "markdown")); raise SystemExit(outcome.exit_code)

Nothing heavy is imported here; torch loads when a run starts.
"""

from __future__ import annotations

from typing import Any

from ._cache import STAGES
from ._context import BenchOptions
from ._run import BenchOutcome, run_bench
from .report.leaderboard import FORMATS

__all__ = ["BenchOptions", "BenchOutcome", "run_bench", "dry_run", "render_leaderboard", "validate_results", "load_results", "FORMATS", "STAGES"]


def render_leaderboard(results: dict[str, Any], fmt: str = "table", columns: str | list[str] | None = None) -> str:
    """The leaderboard of a results dict as text (``table``, ``markdown``, ``json`` or ``csv``);
    ``columns`` for the table: ``None`` (fits 120 characters), ``"all"`` or a list of column names."""
    from .report.leaderboard import render

    return render(results, fmt, columns)


def dry_run(host: Any, registry: Any, options: BenchOptions, *, wrap: bool = False) -> list[str]:
    """The plan of ``options``' run (cells, cache hits, downloads, estimated time), computing nothing:
    one line per fact, or with ``wrap`` the lines as the terminal shows them (120 columns)."""
    from ._context import fit_to_terminal
    from ._outlook import outlook
    from ._run import open_pipeline

    pipeline = open_pipeline(host, registry, options)
    try:
        lines = outlook(pipeline)
        return [part for line in lines for part in fit_to_terminal(line)] if wrap else lines
    finally:
        pipeline.close()


def validate_results(results: Any) -> list[str]:
    """Problems of a results.json document against ``results.schema.json`` (empty list: valid)."""
    from ._results import validate

    return validate(results)


def load_results(path: Any) -> dict[str, Any]:
    """Read a results.json (a work directory or the file itself); ConfigError when absent or invalid."""
    import json
    from pathlib import Path

    from ..errors import ConfigError

    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ConfigError(f"{p}: no results.json here; run `platform bench --workdir {p.parent}` first.") from err
    except (ValueError, RecursionError) as err:  # bad JSON, not UTF-8, nested absurdly deep
        raise ConfigError(f"{p}: not a readable results file ({type(err).__name__}); rerun `platform bench` to rewrite it.") from err
    except OSError as err:  # a folder named results.json, no permission, ...
        raise ConfigError(f"{p}: cannot read it ({err.strerror or err}); check the path and its permissions.") from err
    problems = validate_results(data)
    if problems:
        raise ConfigError(f"{p}: does not match results.schema.json; rerun `platform bench`.", [f"{p}: {x}" for x in problems])
    return data
