"""``platform leaderboard``: re-render the leaderboard of a work directory from results.json (no computing)."""

from __future__ import annotations

import argparse
import sys

from ..bench import FORMATS
from ._common import parse_columns


def add_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("leaderboard", parents=[common], help="print the leaderboard of a finished bench run")
    p.add_argument("--workdir", default="runs/default", metavar="DIR", help="work directory of `platform bench` (default: runs/default)")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    p.add_argument("--columns", type=parse_columns, metavar="all|A,B",
                   help="table columns: all, or a comma list (default: what fits 120 characters)")
    p.add_argument("--write", action="store_true", help="also rewrite leaderboard.md and leaderboard.csv in the work directory")
    p.add_argument("--merge", nargs="+", metavar="RUN",
                   help="merge these work directories or results.json files (the first is the reference) into one "
                        "leaderboard; runs that measured something else are listed apart with the difference")
    p.add_argument("--out", metavar="DIR", help="with --merge: folder for the merged results.json, merge.json and leaderboards")
    p.add_argument("--rescore", action="store_true",
                   help="recompute every run's metric values from its saved predictions with the installed dataset and metric "
                        "plugins and name each value that differs from its results.json (exit 1 when one differs or a run "
                        "cannot be rescored); the runs: --merge's, else --workdir")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..bench import load_results, render_leaderboard
    from ..io import atomic_write_text

    if args.merge:  # several runs -> one leaderboard (bench/report/merge.py)
        from ..bench.report.merge import merge_runs, write_merged
        from ..errors import ConfigError

        if len(args.merge) < 2:
            raise ConfigError("leaderboard --merge: give at least two work directories or results.json files.")
        results, record = write_merged(args.merge, args.out) if args.out else merge_runs(args.merge)
        sys.stdout.write(render_leaderboard(results, args.format, args.columns))
        for apart in record["apart"]:
            print(f"not ranked: {apart['id']} from {apart['run']}: {apart['reason']}", file=sys.stderr)
        return _rescore(args, args.merge)
    results = load_results(args.workdir)
    sys.stdout.write(render_leaderboard(results, args.format, args.columns))
    if args.write:
        atomic_write_text(Path(args.workdir) / "leaderboard.md", render_leaderboard(results, "markdown"))
        atomic_write_text(Path(args.workdir) / "leaderboard.csv", render_leaderboard(results, "csv"))
    return _rescore(args, [args.workdir])


def _rescore(args: argparse.Namespace, runs: list[str]) -> int:
    """``--rescore`` (bench/_rescore.py): 1 when a value differs or a run cannot be rescored."""
    if not args.rescore:
        return 0
    from ..bench._rescore import rescore_command

    return rescore_command(runs, args.out, args.strict_plugins)
