"""``run_bench``: walk the matrix cell by cell through the pipeline's stages, then write results.json,
the leaderboard and the report.

Stages of a cell (backbone x masker x student)::

    features (per backbone, train and val) -> pseudo-masks (per backbone x masker)
        -> masker metrics (val pseudo-masks vs ground truth)
        -> student (fit on train pseudo-masks, predict val) -> student metrics

Work is demand-driven: a stage runs only when something downstream is not cached, and plugin objects
(backbones above all) are built only when a stage must run. Failure isolation:
:class:`uisbench.BackboneUnavailable` makes the row ``unavailable``, :class:`uisbench.IncompatibleError`
from a student makes its part ``skipped``, any other exception makes the cell ``failed`` (traceback in
``<workdir>/logs``); the run goes on.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ._cells import CellWalker
from ._context import BenchContext, BenchOptions, WorkdirWriteError, fit_to_terminal, write_failure
from ._data import BenchData
from ._outlook import outlook
from ._pipeline import Pipeline
from ._plan import make_plan
from ._private import private_argv, redactor_for
from ._shard import check_shared_workdir
from ._signals import terminate_as_interrupt
from ._workdir import WorkdirLock, check_workdir, remove_stale_temporaries
from .stats.label_efficiency import label_efficiency
from .stats.ranking import build_ranking, parse_rank_by, resolve_rank_by

__all__ = ["run_bench", "open_pipeline", "BenchOutcome"]


class BenchOutcome(dict):
    """The results dict, plus ``exit_code`` (1 when a cell or a backbone's own metrics failed, else 0)
    and ``report_path`` (report.html, or ``None`` when it was not written)."""

    report_path: Path | None = None

    @property
    def exit_code(self) -> int:
        parts = [*self["cells"], *self.get("backbones", {}).values()]
        return 1 if any(p["status"] == "failed" for p in parts) else 0


def _device_type(device: str) -> str:
    """``cpu`` or ``cuda``, as ``--device`` will resolve (without building the run's context)."""
    from ._context import resolve_device

    return resolve_device(device).split(":")[0]


def open_pipeline(host: Any, registry: Any, options: BenchOptions) -> Pipeline:
    """The pipeline of ``options``' matrix, nothing computed yet: the work directory checked and
    locked, stale temporary files removed, the process group up under torchrun. Release all that
    with ``pipeline.close()``."""
    bench = registry.bench.for_device(_device_type(options.device))
    ctx = BenchContext(
        options,
        seed=options.seed if options.seed is not None else bench.seed,
        seeds=options.seeds if options.seeds is not None else bench.seeds,
        bootstrap=options.bootstrap if options.bootstrap is not None else bench.bootstrap,
    )
    lock = WorkdirLock(ctx.workdir)
    try:
        problem = None
        if ctx.shard.main:
            try:
                check_workdir(ctx.workdir)
                private = bool(options.private or not registry.report_images)
                lock.acquire(private_argv(options.argv) if private else list(options.argv), private=private)
                removed = remove_stale_temporaries(ctx.workdir)
                if removed:
                    ctx.say(f"removed {removed} temporary file(s) an interrupted run left in {ctx.workdir}")
            except ConfigError as err:
                problem = str(err)
        problem = ctx.shard.broadcast(problem)
        if problem:
            raise ConfigError(problem)
        check_shared_workdir(ctx.shard, ctx.workdir)  # multi-node: every rank must see the same folder
        ctx.private = bool(options.private or not registry.report_images)
        plan = make_plan(host, registry, options, ctx.cache.hash_memo(), ctx.device_type)
        data = BenchData(plan.entry("datasets", plan.dataset), options.limit, options.skip_bad_images, ctx.cache.hash_memo())
        pipeline = Pipeline(ctx, plan, data, lock)
        if ctx.private:
            ctx.redact = redactor_for(pipeline, registry).text
        return pipeline
    except BaseException:
        lock.release()
        ctx.shard.close()
        raise


def run_bench(host: Any, registry: Any, options: BenchOptions) -> BenchOutcome:
    """Run the bench matrix of ``options``; write results.json, leaderboard.{md,csv} and report.html
    into ``options.workdir`` (rank 0), and return the results with an ``exit_code``."""
    with terminate_as_interrupt():  # a scheduler's SIGTERM: the same clean stop and message as Ctrl-C
        try:
            return _run_bench(host, registry, options)
        except (OSError, RuntimeError) as err:  # a full disk outside the stages: results.json, the report
            reason = write_failure(err)
            if reason is None:
                raise
            raise WorkdirWriteError(Path(options.workdir), reason, err) from None


def _run_bench(host: Any, registry: Any, options: BenchOptions) -> BenchOutcome:
    from ._results import build_results
    from .report.outputs import write_outputs

    started_wall = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    pipeline = open_pipeline(host, registry, options)
    ctx, plan = pipeline.ctx, pipeline.plan
    try:
        for line in outlook(pipeline):
            for part in fit_to_terminal(line):
                ctx.say(part)
        for failure in host.failures:
            ctx.say(f"warning: plugin {failure.name} ({failure.distribution} {failure.version}) failed to load: {failure.error}")
        rank_by_text = options.rank_by or registry.bench.for_device(ctx.device_type).rank_by
        walker = CellWalker(pipeline, parse_rank_by(rank_by_text, plan.metrics))  # a typo fails before any work
        cells, backbones = walker.walk()
        rank_by = resolve_rank_by(rank_by_text, plan.metrics, cells)
        ranking = build_ranking(cells, walker.draws, rank_by, ctx.bootstrap, ctx.seeds)
        computed = ctx.shard.all_gather(dict(ctx.computed))
        total = {k: sum(c[k] for c in computed) for k in ctx.computed}
        results = build_results(pipeline, host, registry, cells, backbones, ranking, total, started_wall, time.perf_counter() - t0)
        efficiency = label_efficiency(cells, ranking)
        if efficiency is not None:
            results["label_efficiency"] = efficiency
        if ctx.shard.main and any(plan.entry("metrics", n).spec.name == "label-free" for n in plan.metrics):
            # agreement: a post-pass over the cached masks of every row (a metric sees one cell);
            # stability: reruns each row on flipped and rescaled val images (cached)
            from .stats.agreement import agreement
            from .stats.stability import stability

            results["label_free"] = agreement(pipeline, cells, walker.evaluator.draws())
            results["label_free"]["stability"] = stability(pipeline, cells, walker.evaluator.draws())
        outcome = BenchOutcome(results)
        if ctx.shard.main:
            outcome.report_path = write_outputs(pipeline, outcome, report=options.report)
        ctx.shard.barrier()
        return outcome
    finally:
        pipeline.close()
