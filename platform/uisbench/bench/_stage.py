"""The stage contract and the one runner that every stage goes through.

A :class:`Stage` says *what* a step of a cell computes: what its result depends on (``identity`` and
the ``inputs`` stages whose keys enter its own), how to compute it (per image, resumable and sharded
across torchrun ranks, or as a whole), and what its summary holds. :class:`StageRunner` owns *how*,
once for every stage:

- the cache key: SHA-256 of the stage name, its identity, its inputs' keys and the fingerprint of
  the stage's source code (with the core modules it imports; see ``_code.py``);
- memoisation within a run and failure memory (a stage that failed is not retried by the next cell);
- ``--force`` (recompute that stage, and, through the context, every later one);
- the cache decision: rank 0 looks for the stage's summary (or a remembered refusal), every rank follows;
- the collective: a stage raising on any rank ends it with the same :class:`StageError` on every rank;
- refusals: an :class:`uisbench.IncompatibleError` in :meth:`Stage.prepare` is written next to the
  stage's results, so a rerun knows the answer without building anything.

Adding a stage is one subclass plus the pipeline method that creates it (see ``_pipeline.py``).
"""

from __future__ import annotations

import abc
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..errors import BackboneUnavailable, IncompatibleError
from ._cache import ids_digest, make_key
from ._code import code_fingerprint
from ._context import BenchContext, short_error

__all__ = ["Stage", "StageError", "StageOutput", "StageRunner"]


class StageError(Exception):
    """A stage ended the cell: ``status`` is ``unavailable``, ``skipped`` or ``failed``."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class StageOutput:
    """A finished stage as its summary file holds it."""

    stage: str
    key: str
    path: Path
    summary: dict[str, Any]

    @property
    def cost(self) -> dict[str, Any] | None:
        return self.summary.get("cost")

    @property
    def provenance(self) -> dict[str, Any] | None:
        return self.summary.get("provenance")

    @property
    def skipped(self) -> list[dict[str, Any]]:
        return list(self.summary.get("skipped") or [])


class Stage(abc.ABC):
    """One cached step of a cell. Subclasses set ``name`` and ``per_image`` and implement the hooks.

    Per-image stages write one file per image (``item_path``) in :meth:`compute`, for the chunks of
    :meth:`image_ids` the runner hands them (this rank's share, only chunks with a missing file); the
    summary is written by :meth:`finish` on rank 0 once every image is done. Whole stages compute on
    rank 0 and their summary is the result.
    """

    #: stage name: its cache folder, its ``--force`` name, its place in results.json
    name: ClassVar[str]
    per_image: ClassVar[bool] = False
    #: suffix of the per-image files
    item_suffix: ClassVar[str] = ".json"

    def __init__(self, ctx: BenchContext, label: str, split: str | None = None) -> None:
        self.ctx = ctx
        self.label = label
        self.split = split

    # -- what the result depends on -----------------------------------------------------------

    @property
    @abc.abstractmethod
    def address(self) -> tuple[Any, ...]:
        """Which stage this is within a run (e.g. ``("features", "pixels", "val")``): memo key of its key."""

    @abc.abstractmethod
    def identity(self) -> dict[str, Any]:
        """Everything besides its inputs' results that the output depends on (entries, data, seed)."""

    def inputs(self) -> list[Stage]:
        """Stages whose results this one reads; they run first and their keys enter this key."""
        return []

    # -- where the result lives ---------------------------------------------------------------

    def folder(self, key: str) -> Path:
        return self.ctx.cache.dir(self.name, key)

    def summary_path(self, key: str) -> Path:
        if self.per_image:  # items are shared between runs over other id lists (--limit)
            return self.folder(key) / f"summary-{ids_digest(self.summary_ids())}.json"
        return self.folder(key) / "summary.json"

    def item_path(self, key: str, image_id: int) -> Path:
        return self.folder(key) / f"{int(image_id)}{self.item_suffix}"

    def image_ids(self) -> list[int]:
        """Per-image stages: the images this stage computes."""
        raise NotImplementedError

    def summary_ids(self) -> list[int]:
        """Per-image stages: the id list that names the summary (default: :meth:`image_ids`)."""
        return self.image_ids()

    def clear(self, key: str) -> None:
        """``--force``: forget the finished result (per-image files are overwritten as they are redone)."""
        if self.per_image:
            self.summary_path(key).unlink(missing_ok=True)
        else:
            shutil.rmtree(self.folder(key), ignore_errors=True)

    # -- computing ----------------------------------------------------------------------------

    def prepare(self, key: str) -> None:  # noqa: B027 - optional hook
        """Runs on every rank before the inputs: build what can refuse the combination early."""

    @abc.abstractmethod
    def compute(self, key: str, chunks: list[list[int]] | None) -> Any:
        """This rank's work: per-image stages get their chunks of image ids still to do; returns a
        report (e.g. cost) for :meth:`finish`."""

    @abc.abstractmethod
    def finish(self, key: str, reports: list[Any]) -> dict[str, Any]:
        """Rank 0: the summary to write once the stage is complete (reports of every rank given)."""

    def adopt(self, output: StageOutput) -> None:  # noqa: B027 - optional hook
        """Called with the stage's output, fresh or cached (e.g. to note skipped images)."""


class StageRunner:
    """Runs stages through the cache: see the module docstring for what it owns."""

    def __init__(self, ctx: BenchContext) -> None:
        self.ctx = ctx
        self._keys: dict[tuple[Any, ...], str] = {}
        self._outputs: dict[str, StageOutput] = {}
        self._failures: dict[str, StageError] = {}

    def key(self, stage: Stage) -> str:
        if stage.address not in self._keys:
            self._keys[stage.address] = make_key(
                stage=stage.name,
                identity=stage.identity(),
                inputs=[self.key(s) for s in stage.inputs()],
                code=code_fingerprint(type(stage).__module__),
            )
        return self._keys[stage.address]

    def run(self, stage: Stage) -> StageOutput:
        """The stage's output, computed unless cached; raises :class:`StageError`."""
        key = self.key(stage)
        if key in self._outputs:
            return self._outputs[key]
        if key in self._failures:  # do not redo a failed stage for every cell that needs it
            raise self._failures[key]
        try:
            output = self._run(stage, key)
        except StageError as err:
            self._failures[key] = err
            raise
        stage.adopt(output)
        self._outputs[key] = output
        return output

    def peek(self, stage: Stage) -> StageOutput | None:
        """The stage's output if this run or an earlier one finished it; never computes."""
        key = self.key(stage)
        if key not in self._outputs:
            summary = self.ctx.cache.read(stage.summary_path(key))
            if summary is None:
                return None
            self._outputs[key] = StageOutput(stage.name, key, stage.summary_path(key), summary)
        return self._outputs[key]

    # -- the one skeleton ---------------------------------------------------------------------

    def _run(self, stage: Stage, key: str) -> StageOutput:
        ctx = self.ctx
        forced = stage.name in ctx.force
        path = stage.summary_path(key)
        refusal = stage.folder(key) / "refused.json"
        found = self.decide(lambda: None if forced else self._look(path, refusal))
        if found is not None:
            if "refused" in found:
                raise StageError("skipped", found["refused"])
            return StageOutput(stage.name, key, path, found["summary"])
        if forced and ctx.shard.main:
            stage.clear(key)
        self.collective(stage.label, lambda: self._prepare(stage, key, refusal))
        for upstream in stage.inputs():
            self.run(upstream)
        if stage.per_image:
            report = self.collective(stage.label, lambda: stage.compute(key, self._todo(stage, key, forced)))
        else:
            report = self.collective(stage.label, lambda: stage.compute(key, None) if ctx.shard.main else None)
        reports = ctx.shard.gather(report)

        def finish() -> dict[str, Any] | None:
            if not ctx.shard.main:
                return None
            summary = stage.finish(key, reports)
            ctx.cache.write(path, summary)
            return summary

        summary = ctx.shard.broadcast(self.collective(f"{stage.label} summary", finish))
        return StageOutput(stage.name, key, path, summary)

    def _look(self, path: Path, refusal: Path) -> dict[str, Any] | None:
        refused = self.ctx.cache.read(refusal)
        if refused is not None:
            return {"refused": refused["reason"]}
        summary = self.ctx.cache.read(path)
        return None if summary is None else {"summary": summary}

    def _prepare(self, stage: Stage, key: str, refusal: Path) -> None:
        try:
            stage.prepare(key)
        except IncompatibleError as err:
            if self.ctx.shard.main:
                self.ctx.cache.write(refusal, {"reason": short_error(err)})
            raise

    def _todo(self, stage: Stage, key: str, forced: bool) -> list[list[int]]:
        """This rank's chunks of the stage's images that still lack their file (all when forced).

        Chunks are cut from the whole id list before sharding (``chunks[rank::world]``), so every batch
        holds the same images as in a one-process run.
        """
        ids = stage.image_ids()
        size = self.ctx.batch_size
        chunks = self.ctx.shard.mine([ids[i : i + size] for i in range(0, len(ids), size)])
        return [c for c in chunks if forced or not all(stage.item_path(key, i).exists() for i in c)]

    # -- ranks --------------------------------------------------------------------------------

    def collective(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on every rank; if it raised anywhere, raise the same :class:`StageError` everywhere."""
        result, problem = None, None
        try:
            result = fn()
        except StageError as err:
            problem = (err.status, err.reason)
        except BackboneUnavailable as err:
            problem = ("unavailable", short_error(err))
        except IncompatibleError as err:
            problem = ("skipped", short_error(err))
        except KeyboardInterrupt:
            raise
        except Exception as err:
            self.ctx.log_failure(what, err)
            problem = ("failed", f"{what}: {short_error(err)} (traceback in {self.ctx.log_path})")
        problems = self.ctx.shard.gather(problem)
        first = next((p for p in problems if p), None)
        if first:
            raise StageError(*first)
        return result

    def decide(self, fn: Callable[[], Any]) -> Any:
        """Rank 0 looks (e.g. at the cache), every rank follows its answer."""
        return self.ctx.shard.broadcast(fn() if self.ctx.shard.main else None)
