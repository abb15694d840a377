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
  stage's results, so a rerun knows the answer without building anything;
- healing: a per-image stage's summary lists the size of every file it covers; a cached result whose
  files are missing or of another size (a kill, a full disk, a copied work directory) is logged,
  removed and recomputed, and a file found unreadable while a later stage loads it
  (:class:`CacheDamaged`) is removed and its stage redone. The cell does not fail for it.

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

__all__ = ["Stage", "StageError", "StageOutput", "StageRunner", "CacheDamaged"]

#: how often one stage is healed and retried before its cell fails
_HEAL_ATTEMPTS = 3


class StageError(Exception):
    """A stage ended the cell: ``status`` is ``unavailable``, ``skipped`` or ``failed``."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


class CacheDamaged(Exception):
    """A stage's cached file could not be read back: ``stage``'s result must be redone."""

    def __init__(self, stage: Stage, key: str, path: Path, reason: str) -> None:
        super().__init__(f"damaged cache entry {path} ({reason})")
        self.stage, self.key, self.path, self.reason = stage, key, path, reason


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
    #: whole stages: compute on every torchrun rank (e.g. distributed training), not on rank 0 alone;
    #: :meth:`finish` still runs on rank 0 with every rank's report
    all_ranks: ClassVar[bool] = False

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

    def item_sizes(self, key: str, ids: list[int]) -> dict[str, int]:
        """``{image id: file size}`` of the stage's files, for its summary (``items``): a later run
        checks them before trusting the summary."""
        return {str(i): self.item_path(key, i).stat().st_size for i in ids}

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
        self._peeked: dict[str, StageOutput | None] = {}
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
        for attempt in range(_HEAL_ATTEMPTS + 1):
            try:
                output = self._run(stage, key)
                break
            except CacheDamaged as err:  # an input's file (or one of its own) read back wrong
                if attempt == _HEAL_ATTEMPTS:
                    self._failures[key] = StageError("failed", f"{stage.label}: {err}; removed, but it came back damaged")
                    raise self._failures[key] from err
                self.heal(err)
            except StageError as err:
                self._failures[key] = err
                raise
        stage.adopt(output)
        self._outputs[key] = output
        self._peeked.pop(key, None)
        return output

    def heal(self, err: CacheDamaged) -> None:
        """Remove a damaged file and the summary that vouched for it; the next run of its stage redoes it."""
        self.ctx.log_failure(f"damaged cache entry {err.path}", err)
        self.ctx.say(f"warning: damaged cache entry {err.path} ({err.reason}): removed, recomputing")
        if self.ctx.shard.main:
            err.path.unlink(missing_ok=True)
            for summary in self.ctx.cache.summaries(err.stage.folder(err.key)):
                summary.unlink(missing_ok=True)
            (err.stage.folder(err.key) / "summary.json").unlink(missing_ok=True)
        self._outputs.pop(err.key, None)
        self._peeked.pop(err.key, None)
        self._failures.pop(err.key, None)

    def peek(self, stage: Stage) -> StageOutput | None:
        """The stage's output if this run or an earlier one finished it; never computes. What it reads
        from the cache is not taken for this run's result: a forced stage still runs."""
        key = self.key(stage)
        if key in self._outputs:
            return self._outputs[key]
        if key not in self._peeked:
            summary = self.ctx.cache.read(stage.summary_path(key))
            self._peeked[key] = None if summary is None else StageOutput(stage.name, key, stage.summary_path(key), summary)
        return self._peeked[key]

    # -- the one skeleton ---------------------------------------------------------------------

    def _run(self, stage: Stage, key: str) -> StageOutput:
        ctx = self.ctx
        forced = stage.name in ctx.force
        path = stage.summary_path(key)
        refusal = stage.folder(key) / "refused.json"
        found = self.decide(lambda: None if forced else self._look(stage, key, path, refusal))
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
            compute_here = ctx.shard.main or stage.all_ranks
            report = self.collective(stage.label, lambda: stage.compute(key, None) if compute_here else None)
        reports = ctx.shard.all_gather(report)

        def finish() -> dict[str, Any] | None:
            if not ctx.shard.main:
                return None
            summary = stage.finish(key, reports)
            ctx.cache.write(path, summary)
            # what a later run reads back (JSON: string keys, lists): a fresh and a cached run see the same
            return ctx.cache.read(path)

        summary = ctx.shard.broadcast(self.collective(f"{stage.label} summary", finish))
        return StageOutput(stage.name, key, path, summary)

    def _look(self, stage: Stage, key: str, path: Path, refusal: Path) -> dict[str, Any] | None:
        refused = self.ctx.cache.read(refusal)
        if isinstance(refused, dict) and isinstance(refused.get("reason"), str):
            return {"refused": refused["reason"]}
        summary = self.ctx.cache.read(path)
        if summary is None:
            return None
        problem = self._summary_problem(stage, key, summary)
        if problem is None:
            return {"summary": summary}
        self.ctx.say(f"warning: cached result {path} {problem}: removed, recomputing")
        path.unlink(missing_ok=True)
        return None

    def _summary_problem(self, stage: Stage, key: str, summary: Any) -> str | None:
        """Why a summary found in the cache cannot be trusted (and its damaged files are removed)."""
        if not isinstance(summary, dict) or summary.get("key") != key:
            return "is not this stage's summary"
        if not stage.per_image:
            return None
        items = summary.get("items")
        if not isinstance(items, dict):
            return "does not list its files"
        damaged = []
        for image_id, size in items.items():
            item = stage.item_path(key, int(image_id))
            try:
                ok = item.stat().st_size == size
            except OSError:
                ok = False
            if not ok:
                damaged.append(item)
                item.unlink(missing_ok=True)
        if damaged:
            return f"vouches for {len(damaged)} missing or damaged file(s) (e.g. {damaged[0].name})"
        return None

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
        except CacheDamaged as err:
            if not self.ctx.shard.distributed:
                raise  # healed and retried by run()
            err.path.unlink(missing_ok=True)  # under torchrun the ranks cannot retry in step: next run
            problem = ("failed", f"{what}: {err}; removed, rerun to recompute it")
        except BackboneUnavailable as err:
            problem = ("unavailable", short_error(err))
        except IncompatibleError as err:
            problem = ("skipped", short_error(err))
        except KeyboardInterrupt:
            raise
        except Exception as err:
            self.ctx.log_failure(what, err)
            problem = ("failed", f"{what}: {short_error(err)} (traceback in {self.ctx.log_path})")
        problems = self.ctx.shard.all_gather(problem)
        first = next((p for p in problems if p), None)
        if first:
            raise StageError(*first)
        return result

    def decide(self, fn: Callable[[], Any]) -> Any:
        """Rank 0 looks (e.g. at the cache), every rank follows its answer."""
        return self.ctx.shard.broadcast(fn() if self.ctx.shard.main else None)
