"""Stage ``student``: a student trained on one cell's train-split pseudo-masks, and its val predictions.

The student's checkpoints live in the stage's cache folder (its ``workdir``), so a killed run resumes
training; the summary holds the val predictions, the training and prediction cost and the
student's provenance. A student that refuses the combination (``IncompatibleError``, e.g. a
``frozen-ssl`` student on a calibration backbone) is refused before any train-split work.

Under torchrun the stage runs on every rank (``all_ranks``): the student is built everywhere, and a
:attr:`~uisbench.Student.distributed` student trains and predicts on all ranks together (rank 0 gets
the predictions and writes every file); any other student runs on rank 0 alone while the others wait.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ...contracts import Prediction
from ...io import atomic_write_json
from .._cache import ids_digest
from .._context import seed_everything, short_error
from .._cost import Meter
from .._stage import Stage

if TYPE_CHECKING:
    from .._pipeline import Pipeline
    from .masks import MasksStage

__all__ = ["StudentStage", "train_and_predict"]


def train_and_predict(stage: Any, student: Any, key: str, cost: str, fit: Callable[[], int | None]) -> dict[str, Any] | None:
    """What every training stage does once its targets are chosen: ``fit()`` on the train split and
    a prediction of every usable val image, each timed (costs ``<cost>-train``, ``<cost>-predict``);
    then, on rank 0, the summary fields they share (``key``, ``predictions``, ``cost``,
    ``provenance``). ``None`` on the other ranks: rank 0 holds every prediction and reports for all."""
    ctx, data = stage.ctx, stage.pipeline.data
    handle = stage.pipeline.backbones[stage.backbone]
    handle.bind("train")
    seed_everything(stage.seed)
    with Meter(f"{cost}-train", ctx.device) as fit_meter:
        samples = fit()
    # Throughput is samples processed (iterations x batch size; all ranks together) over the
    # training time, not the size of the training set: a student that does not say reports none.
    fit_meter.images = int(samples or 0)
    val_ids = data.usable("val")
    handle.bind("val")
    with Meter(f"{cost}-predict", ctx.device) as predict_meter:
        predictions = student.predict(data.dataset("val"), val_ids)
    predict_meter.images = len(val_ids)
    if not ctx.shard.main:
        return None
    try:
        provenance = dict(student.provenance() or {})
    except Exception as err:
        provenance = {"error": short_error(err)}
    ctx.computed[stage.name] += 1
    return {
        "key": key,
        "predictions": {str(i): [p.to_coco() for p in predictions.get(i, [])] for i in val_ids},
        "cost": {"train": fit_meter.record(), "predict": predict_meter.record()},
        "provenance": provenance,
    }


class StudentStage(Stage):
    """Student ``student`` trained on ``backbone`` x ``masker`` train pseudo-masks, predicting val."""

    name = "student"
    all_ranks = True

    def __init__(self, pipeline: Pipeline, backbone: str, masker: str, student: str, repeat: int = 0) -> None:
        label = f"{backbone} / {masker} / {student} student" + (f" seed +{repeat}" if repeat else "")
        super().__init__(pipeline.ctx, label)
        self.pipeline = pipeline
        self.backbone = backbone
        self.masker = masker
        self.student = student
        self.repeat = repeat  # training is stochastic: every repetition (--seeds) trains anew
        self.seed = pipeline.ctx.seed + repeat
        self.train_masks: MasksStage = pipeline.pseudo_masks(backbone, masker, "train", repeat)
        self._built: Any = None

    @property
    def address(self) -> tuple[Any, ...]:
        return (self.name, self.backbone, self.masker, self.student, self.repeat)

    def identity(self) -> dict[str, Any]:
        data = self.pipeline.data
        return {
            "backbone": self.pipeline.backbones[self.backbone].entry.identity,
            "student": self.pipeline.plan.entry("students", self.student).identity,
            "train_ids": ids_digest(data.ids("train")),
            "val": data.identity("val"),
            "val_ids": ids_digest(data.ids("val")),
            "device": self.ctx.device_type,
            "seed": self.seed,
        }

    def inputs(self) -> list[Stage]:
        return [self.train_masks]

    def prepare(self, key: str) -> None:
        # Built before the train split is touched: a refused combination costs no train-split work.
        # Every rank builds it (each refuses alike); a one-process student is kept on rank 0 only.
        backbone = self.pipeline.backbones[self.backbone].bind("train")
        student = self.pipeline.plan.entry("students", self.student).build(backbone=backbone)
        if self.ctx.shard.main:
            self.ctx.built.append(f"student:{self.student}")
        self._built = None
        if self.ctx.shard.main or self._distributed(student):
            self._built = student.to(self.ctx.device) or student

    def _distributed(self, student: Any) -> bool:
        return self.ctx.shard.distributed and bool(getattr(student, "distributed", False))

    def compute(self, key: str, chunks: list[list[int]] | None) -> dict[str, Any] | None:
        ctx, data = self.ctx, self.pipeline.data
        student = self._built
        if student is None:  # a one-process student: rank 0 trains it, this rank waits
            return None
        main = ctx.shard.main
        workdir = self.folder(key)
        if main:
            workdir.mkdir(parents=True, exist_ok=True)
        train = self.pipeline.run(self.train_masks).summary
        pseudo = {int(k): [Prediction.from_coco(p) for p in v] for k, v in train["predictions"].items()}
        if main:
            atomic_write_json(workdir / "started.json", {"started": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        summary = train_and_predict(self, student, key, "student",
                                    lambda: student.fit(data.dataset("train"), pseudo, workdir=workdir, seed=self.seed))
        # the entry names let `--dry-run` estimate another cell of the same student and backbone
        return None if summary is None else {**summary, "backbone": self.backbone, "student": self.student}

    def finish(self, key: str, reports: list[Any]) -> dict[str, Any]:
        return reports[0]
