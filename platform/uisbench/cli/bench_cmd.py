"""``platform bench``: score backbones through features -> pseudo-masks -> student -> metrics.

Every stage is cached under ``--workdir``; a rerun computes only what changed. Exit status 1 when
a cell failed; unavailable backbones (no weights offline) and skipped combinations are normal (0).
"""

from __future__ import annotations

import argparse
import sys

from ..bench import FORMATS, STAGES
from ..registry import MAX_BOOTSTRAP
from ._common import parse_columns


def _names(text: str) -> list[str]:
    """``A,B`` -> ["A", "B"]; ``none`` or an empty string -> []."""
    if text.strip().lower() in ("", "none"):
        return []
    return [p.strip() for p in text.split(",") if p.strip()]


def _integer(low: int, high: int | None = None):
    """An argparse ``type`` for an integer option in ``[low, high]``: anything else is a usage error
    (exit 2) naming the option and its range, before any work starts."""
    bound = f">= {low} and <= {high}" if high is not None else f">= {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be an integer {bound} (got {text})")
        return value

    return parse


class _DeprecatedAlias(argparse.Action):
    """An option kept under an old name: it sets its new option's value and says the new name on stderr."""

    NEW = {"--seeds": "--repeats"}

    def __call__(self, parser, namespace, values, option_string=None):
        new = self.NEW[option_string]
        print(f"platform bench: warning: {option_string} is deprecated and will be removed; use {new} {values} "
              f"(the number of repeats; --seed is the bench seed)", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "bench",
        parents=[common],
        help="run the benchmark matrix and print the leaderboard",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="every backbone entry of the registry (and installed backbone plugins)")
    which.add_argument("--backbones", type=_names, metavar="A,B", help="backbone entries to score")
    p.add_argument("--maskers", type=_names, metavar="A,B", help="masker entries (default: the registry's bench maskers)")
    p.add_argument("--students", type=_names, metavar="A,B", help="student entries, or 'none' (default: the registry's bench students)")
    p.add_argument("--metrics", type=_names, metavar="A,B", help="metric entries (default: the registry's bench metrics)")
    p.add_argument("--dataset", metavar="NAME", help="dataset entry (default: the registry's bench dataset, synth-instances)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--workdir", default="runs/default", metavar="DIR", help="cache and outputs (default: runs/default)")
    p.add_argument("--format", choices=FORMATS, default="table", help="how to print the leaderboard (default: table)")
    p.add_argument("--columns", type=parse_columns, metavar="all|A,B",
                   help="table columns: all, or a comma list (default: what fits 120 characters)")
    p.add_argument("--force", action="append", choices=STAGES, default=[], metavar="STAGE",
                   help=f"recompute STAGE and the stages after it ({', '.join(STAGES)}); repeatable")
    p.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images (listed in results.json) instead of failing")
    p.add_argument("--limit", type=_integer(1), metavar="N", help="use only the first N images of each split (smoke runs)")
    p.add_argument("--seed", type=int, help="bench seed (default: the registry's bench seed)")
    p.add_argument("--repeats", type=_integer(1), metavar="N",
                   help="run the stochastic stages (k-means init, student training) N times, each masker's and student's "
                   "own seed shifted by 0..N-1; values are means ± std (default: the registry's bench seeds, 1)")
    # The old name of --repeats: one letter away from --seed, which means something else.
    p.add_argument("--seeds", dest="repeats", type=_integer(1), action=_DeprecatedAlias, help=argparse.SUPPRESS)
    p.add_argument("--bootstrap", type=_integer(0, MAX_BOOTSTRAP), metavar="B",
                   help=f"bootstrap resamples of the images per 95%% confidence interval, 0 to {MAX_BOOTSTRAP}; 0: none (default: the registry's, 200)")
    p.add_argument("--rank-by", metavar="[STAGE.]METRIC.VALUE",
                   help="the value the leaderboard ranks by, e.g. coco.AP50mask or pseudo-masks.count-error.count_mae")
    p.add_argument("--batch-size", type=_integer(1), default=8, metavar="N", help="images per batch for features and pseudo-masks (default: 8)")
    p.add_argument("--workers", type=_integer(0), metavar="N", help="data-loader workers (default: 0 on CPU, 4 on CUDA)")
    p.add_argument("--no-report", action="store_true", help="do not render report.html and its PNGs")
    p.add_argument("--finetune", metavar="ENTRY|none",
                   help="the few-label stage's finetune: entry, or none (default: the registry's bench finetune)")
    p.add_argument("--private", action="store_true",
                   help="no image pixels, thumbnails or image paths in results.json or report.html (ids only): "
                   "for images that may not leave the site (registry: report: {images: false})")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (cells, cache hits, downloads, estimated time) and exit without computing")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """A thin layer over :func:`uisbench.evaluate` (``--dry-run``: the plan only)."""
    from pathlib import Path

    selection = dict(
        backbones="all" if args.all else args.backbones,
        maskers=args.maskers,
        students=args.students,
        metrics=args.metrics,
        dataset=args.dataset,
        device=args.device,
        workdir=Path(args.workdir),
        force=frozenset(args.force),
        skip_bad_images=args.skip_bad_images,
        limit=args.limit,
        seed=args.seed,
        seeds=args.repeats,
        bootstrap=args.bootstrap,
        rank_by=args.rank_by,
        finetune=args.finetune,
        batch_size=args.batch_size,
        num_workers=args.workers,
        report=not args.no_report,
        private=args.private,
    )
    if args.dry_run:
        print("\n".join(_dry_run(args, selection)))
        return 0
    from ..api import evaluate

    results = evaluate(**selection, registry=args.registry, strict_plugins=args.strict_plugins, argv=list(sys.argv))
    if results["run"]["world_size"] > 1 and not _is_rank0():
        return results.exit_code
    sys.stdout.write(results.leaderboard(args.format, args.columns))
    sys.stdout.flush()
    failed = [c for c in results.rows if c["status"] == "failed"]
    if failed:
        print(f"{len(failed)} cell(s) failed; tracebacks in {Path(args.workdir) / 'logs'}.", file=sys.stderr)
    report = f"  report: {results.report_path}" if results.report_path else ""
    print(f"results: {Path(args.workdir) / 'results.json'}{report}", file=sys.stderr)
    return results.exit_code


def _dry_run(args: argparse.Namespace, selection: dict) -> list[str]:
    from ..bench import BenchOptions, dry_run
    from ._common import host_and_registry

    host, registry = host_and_registry(args)
    if selection["backbones"] == "all":
        selection = {**selection, "backbones": list(registry.names("backbones"))}
    return dry_run(host, registry, BenchOptions(**selection, argv=list(sys.argv)), wrap=True)


def _is_rank0() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"
