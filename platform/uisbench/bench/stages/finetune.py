"""Stage ``finetune``: how many labels does a backbone need? The student trained on pseudo-masks is
fine-tuned on ``k`` train images with their ground-truth masks, for each ``k`` of a ``finetune:``
entry's budgets, and scored on val like the student; the baseline is the same student architecture
fine-tuned on the same images from no pseudo-mask training. Their gap is what the pseudo-masks are
worth; *labels saved* is the ``k`` the baseline needs to reach the pseudo-mask student's AP.

Subsets are deterministic and nested (the 8 images are among the 16): ``random`` takes a prefix of a
permutation seeded per repeat, ``uncertain`` the images whose pseudo-masks the masker was least sure
of (mean mask score, lowest first). Only train images with ground truth are candidates. Fine-tuning
resumes from the student's own checkpoints in the stage's folder, like the student stage.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ...contracts import Prediction
from ...errors import ConfigError, IncompatibleError
from ...io import atomic_write_json
from .._stage import Stage
from .student import train_and_predict

if TYPE_CHECKING:
    from .._pipeline import Pipeline

__all__ = ["FinetuneStage", "resolve_budgets", "choose_subset", "labels_saved", "INITS"]

#: ``pseudo``: from the student trained on pseudo-masks; ``baseline``: from the student's own init
INITS = ("pseudo", "baseline")


def resolve_budgets(budgets: tuple[int | str, ...], n_candidates: int) -> list[int]:
    """Counts of labelled images, ascending and distinct: ``"5%"`` of the candidates (at least 1),
    capped at the number of candidates."""
    out = set()
    for budget in budgets:
        k = max(1, round(n_candidates * float(budget[:-1]) / 100)) if isinstance(budget, str) else int(budget)
        out.add(min(k, n_candidates))
    return sorted(out)


def choose_subset(candidates: list[int], k: int, selection: str, seed: int, uncertainty: dict[int, float] | None = None) -> list[int]:
    """The ``k`` images to label: a prefix of one ordering per (selection, seed), so budgets nest."""
    import numpy as np

    ids = sorted(candidates)
    if selection == "random":
        order = [ids[i] for i in np.random.default_rng((int(seed) % 2**63, 104729)).permutation(len(ids))]
    elif selection == "uncertain":
        scores = uncertainty or {}
        order = sorted(ids, key=lambda i: (scores.get(i, 0.0), i))  # least sure first, ties by id
    else:
        raise ConfigError(f"finetune selection {selection!r}: use random or uncertain.")
    return order[:k]


def labels_saved(pseudo: list[tuple[int, float | None]], baseline: list[tuple[int, float | None]]) -> tuple[float | None, str]:
    """The ``k`` the baseline curve needs to reach the pseudo-mask curve's value at its smallest ``k``
    (linear interpolation between budgets): ``(k, text)``; ``(None, ">k_max")`` when never reached,
    ``(k_min, "<=k_min")`` when the baseline's first point already does."""
    points = [(k, v) for k, v in sorted(baseline) if v is not None]
    first = next((v for k, v in sorted(pseudo) if v is not None), None)
    if first is None or not points:
        return None, "-"
    if points[0][1] >= first:
        return float(points[0][0]), f"<={points[0][0]}"
    for (k0, a0), (k1, a1) in zip(points, points[1:], strict=False):
        if a1 >= first:
            k = k0 + (first - a0) / (a1 - a0) * (k1 - k0)
            return round(k, 2), f"{k:.1f}"
    return None, f">{points[-1][0]}"


class FinetuneStage(Stage):
    """One point of a label-efficiency curve: ``init`` student fine-tuned on ``k`` labelled images."""

    name = "finetune"
    all_ranks = True  # a distributed student fine-tunes on every rank, as it trains

    def __init__(self, pipeline: Pipeline, backbone: str, masker: str, student: str, settings: Any, k: int,
                 selection: str, init: str, repeat: int = 0) -> None:
        if init not in INITS:
            raise ConfigError(f"finetune init {init!r}: use one of {', '.join(INITS)}.")
        # the baseline of a random subset does not depend on the masker: one run serves every masker
        self.masker_free = init == "baseline" and selection == "random"
        label = f"{backbone} / {'-' if self.masker_free else masker} / {student} finetune {init} k={k} {selection}"
        super().__init__(pipeline.ctx, label + (f" seed +{repeat}" if repeat else ""))
        self.pipeline, self.backbone, self.masker, self.student = pipeline, backbone, masker, student
        self.settings, self.k, self.selection, self.init, self.repeat = settings, int(k), selection, init, repeat
        self.seed = pipeline.ctx.seed + repeat
        self._built: Any = None

    @property
    def address(self) -> tuple[Any, ...]:
        masker = None if self.masker_free else self.masker
        return (self.name, self.backbone, masker, self.student, self.settings.name, self.k, self.selection, self.init, self.repeat)

    def _student_stage(self) -> Stage:
        return self.pipeline.student(self.backbone, self.masker, self.student, self.repeat)

    def inputs(self) -> list[Stage]:
        out: list[Stage] = [self._student_stage()] if self.init == "pseudo" else []
        if self.selection == "uncertain":
            out.append(self.pipeline.pseudo_masks(self.backbone, self.masker, "train", self.repeat))
        return out

    def candidates(self) -> list[int]:
        """Train images with at least one ground-truth instance (the only ones a label can teach)."""
        dataset = self.pipeline.data.dataset("train")
        return [i for i in self.pipeline.data.usable("train") if any(not g.iscrowd for g in dataset.ground_truth(i))]

    def subset(self) -> list[int]:
        uncertainty = None
        if self.selection == "uncertain":
            summary = self.pipeline.run(self.pipeline.pseudo_masks(self.backbone, self.masker, "train", self.repeat)).summary
            uncertainty = {int(i): (math.fsum(p["score"] for p in ps) / len(ps) if ps else 0.0) for i, ps in summary["predictions"].items()}
        return choose_subset(self.candidates(), self.k, self.selection, self.seed, uncertainty)

    def identity(self) -> dict[str, Any]:
        data = self.pipeline.data
        subset = self.subset()
        return {
            "backbone": self.pipeline.backbones[self.backbone].entry.identity,
            "student": self.pipeline.plan.entry("students", self.student).identity,
            "overrides": dict(self.settings.student),
            "init": self.init,
            "subset": hashlib.sha256(",".join(map(str, subset)).encode()).hexdigest()[:16],
            "train": data.identity("train"),
            "val": data.identity("val"),
            "device": self.ctx.device_type,
            "seed": self.seed,
        }

    def prepare(self, key: str) -> None:
        backbone = self.pipeline.backbones[self.backbone].bind("train")
        entry = self.pipeline.plan.entry("students", self.student)
        student = entry.spec.factory(**{**entry.params, **self.settings.student}, backbone=backbone)
        if self.init == "pseudo" and "init_from" not in inspect.signature(student.fit).parameters:
            raise IncompatibleError(f"student {self.student!r} cannot start from a trained checkpoint (its fit() takes no "
                                    "init_from): no pseudo-mask-initialised fine-tuning curve")
        if self.ctx.shard.main:
            self.ctx.built.append(f"student:{self.student}")
        if self.ctx.shard.main or (self.ctx.shard.distributed and getattr(student, "distributed", False)):
            self._built = student.to(self.ctx.device) or student

    def compute(self, key: str, chunks: list[list[int]] | None) -> dict[str, Any] | None:
        student, ctx, data = self._built, self.ctx, self.pipeline.data
        if student is None:  # a one-process student: rank 0 fine-tunes it
            return None
        subset = self.subset()
        train = data.dataset("train")
        labels = {i: [Prediction(i, g.segmentation, g.bbox, 1.0) for g in train.ground_truth(i) if not g.iscrowd] for i in subset}
        workdir = self.folder(key)
        if ctx.shard.main:
            workdir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(workdir / "subset.json", {"image_ids": subset, "started": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        init_from = None
        if self.init == "pseudo":
            init_from = self._student_stage().folder(self.pipeline.runner.key(self._student_stage()))
        summary = train_and_predict(self, student, key, "finetune",
                                    lambda: student.fit(train, labels, workdir=workdir, seed=self.seed, init_from=init_from))
        if summary is None:
            return None
        return {**summary, "k": self.k, "init": self.init, "selection": self.selection, "subset": subset}

    def finish(self, key: str, reports: list[Any]) -> dict[str, Any]:
        return next(r for r in reports if r is not None)
