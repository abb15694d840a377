"""The pipeline of a run: the stages of every cell, created by name, run through one :class:`StageRunner`.

::

    features(b, split) -> pseudo_masks(b, m, split) -> student(b, m, s) -> finetune(b, m, s, k, ...)

An ensemble masker's ``pseudo_masks`` reads its members' ``pseudo_masks`` instead of features.

A new stage is a :class:`~uisbench.bench._stage.Stage` subclass plus one method here that creates it.
"""

from __future__ import annotations

from typing import Any

from ._context import BenchContext
from ._data import BenchData
from ._plan import BackboneHandle, Plan
from ._stage import Stage, StageOutput, StageRunner
from .stages.ensemble import EnsembleMasksStage
from .stages.features import FeaturesStage
from .stages.finetune import FinetuneStage
from .stages.masks import MasksStage, PseudoMasksStage
from .stages.student import StudentStage

__all__ = ["Pipeline"]


class Pipeline:
    """Stage factories and the plugin objects they share (backbones, maskers), for one run."""

    def __init__(self, ctx: BenchContext, plan: Plan, data: BenchData, lock: Any = None) -> None:
        self.ctx = ctx
        self.plan = plan
        self.data = data
        self._lock = lock
        self.runner = StageRunner(ctx)
        self.backbones = {b: BackboneHandle(plan.entry("backbones", b), ctx, data) for b in plan.backbones + plan.member_backbones()}
        self._maskers: dict[tuple[str, int], Any] = {}

    # -- stages -------------------------------------------------------------------------------

    def features(self, backbone: str, split: str) -> FeaturesStage:
        return FeaturesStage(self, backbone, split)

    def pseudo_masks(self, backbone: str, masker: str, split: str, repeat: int = 0) -> MasksStage:
        if self.plan.is_ensemble(masker):  # reads its members' pseudo-masks, the same for every row
            return EnsembleMasksStage(self, backbone, masker, split)
        return PseudoMasksStage(self, backbone, masker, split, repeat)

    def student(self, backbone: str, masker: str, student: str, repeat: int = 0) -> StudentStage:
        return StudentStage(self, backbone, masker, student, repeat)

    def finetune(self, backbone: str, masker: str, student: str, settings: Any, k: int, selection: str, init: str,
                 repeat: int = 0) -> FinetuneStage:
        return FinetuneStage(self, backbone, masker, student, settings, k, selection, init, repeat)

    def run(self, stage: Stage) -> StageOutput:
        return self.runner.run(stage)

    def peek(self, stage: Stage) -> StageOutput | None:
        return self.runner.peek(stage)

    def close(self) -> None:
        """Release the work directory and, under torchrun, the process group."""
        if self._lock is not None:
            self._lock.release()
        self.ctx.shard.close()

    # -- shared plugin objects ----------------------------------------------------------------

    def masker_params(self, name: str, repeat: int = 0) -> dict[str, Any]:
        """Entry ``name``'s parameters for repetition ``repeat`` of ``--seeds``: its ``seed`` shifted."""
        params = dict(self.plan.entry("maskers", name).params)
        if repeat:
            params["seed"] = int(params["seed"]) + repeat
        return params

    def masker(self, name: str, repeat: int = 0) -> Any:
        """The masker object of entry ``name`` (for repetition ``repeat``), built once per run."""
        if (name, repeat) not in self._maskers:
            entry = self.plan.entry("maskers", name)
            masker = entry.spec.factory(**self.masker_params(name, repeat))
            self._maskers[(name, repeat)] = masker.to(self.ctx.device) or masker
            self.ctx.built.append(f"masker:{name}")
        return self._maskers[(name, repeat)]
