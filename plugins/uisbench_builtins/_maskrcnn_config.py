"""The ``maskrcnn`` student's settings, declared once: :class:`MaskRCNNConfig`.

Private helper of :mod:`uisbench_builtins.maskrcnn`. Each field of the config carries its own
:class:`uisbench.Param` (type, default, help, bounds), and :data:`PARAMS` (what the student's spec
declares, ``platform validate`` checks and ``platform list`` shows) is made from the fields, so a
parameter is added, renamed or documented in one line. ``tests/test_student.py`` checks that every
field's annotation fits its parameter's type (the one thing the two could still disagree on).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import uisbench

DETECTOR_BACKBONES = ("frozen-ssl", "resnet50-fpn", "resnet18-fpn")


def _param(type: str, default: Any, help: str, **options: Any) -> Any:
    """A config field declared with its :class:`uisbench.Param` (named after the field; ``options``:
    ``choices``, ``nullable``, bounds). The field's own default stores lists as tuples (the config is
    frozen); the Param keeps the list, as the registry spells it."""
    return field(default=tuple(default) if isinstance(default, list) else default,
                 metadata={"param": (type, default, help, options)})


def check_params(params: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """Problems the student would raise when built (``platform validate`` runs this too): the
    validation of :class:`MaskRCNNConfig`, on values that passed their own :class:`uisbench.Param` checks."""
    if len(params["anchor_sizes"]) != 5:  # each size's bound (>= 1) is declared in PARAMS
        yield "anchor_sizes", "needs 5 sizes, one per pyramid level (strides 4..64)"
    scale = params["copy_paste_scale"]
    if len(scale) != 2 or not scale[0] <= scale[1]:
        yield "copy_paste_scale", f"is [low, high] with low <= high, e.g. [0.3, 1.0]; got {list(scale)}"
    if not params["self_training_thresholds"]:
        yield "self_training_thresholds", "needs at least one score threshold in [0, 1]"
    if params["detector_weights"] is not None and params["detector_backbone"] == "frozen-ssl":
        yield "detector_weights", "initialises a resnet*-fpn detector; frozen-ssl uses the evaluated backbone"


@dataclass(frozen=True)
class MaskRCNNConfig:
    """The student's settings as one typed, validated record; each field is declared with its
    :class:`uisbench.Param`, whose help text documents it (:data:`PARAMS` is made from the fields).
    Build it with :meth:`from_params`; construction checks every value against its Param and then
    :func:`check_params`, raising one :class:`uisbench.ConfigError` that lists every problem. Lists
    are stored as tuples."""

    detector_backbone: str = _param("str", "frozen-ssl", "frozen-ssl: the evaluated backbone, frozen, under a simple feature pyramid; resnet50-fpn / resnet18-fpn: torchvision ResNet-FPN", choices=DETECTOR_BACKBONES)
    detector_weights: str | None = _param("path", None, "resnet*-fpn only: local ResNet state dict (e.g. DINO ResNet-50); null = random init")
    iterations: int = _param("int", 40000, "training iterations of the first round", ge=1)
    batch_size: int = _param("int", 16, "images per iteration (the global batch: under torchrun the ranks share it)", ge=1)
    optimizer: str = _param("str", "sgd", "sgd (momentum 0.9) or adamw", choices=("sgd", "adamw"))
    lr: float = _param("float", 0.01, "base learning rate", gt=0)
    weight_decay: float = _param("float", 5e-5, "weight decay", ge=0)
    warmup_iters: int = _param("int", 1000, "linear warm-up iterations (from lr/1000)", ge=0)
    lr_steps: tuple[float, ...] = _param("list[float]", [0.5], "fractions of the iterations where the lr is multiplied by lr_gamma", ge=0, le=1)
    lr_gamma: float = _param("float", 0.02, "lr factor at each step", gt=0)
    grad_clip: float = _param("float", 1.0, "clip the gradient norm of the whole model to this (0 = off)", ge=0)
    amp: bool = _param("bool", True, "bf16 autocast on CUDA (ignored on CPU)")
    min_size: int = _param("int", 800, "resnet*-fpn: shorter image side after resizing (frozen-ssl uses the backbone's size)", ge=1)
    max_size: int = _param("int", 1333, "resnet*-fpn: longest image side after resizing", ge=1)
    fpn_channels: int = _param("int", 256, "channels of the feature pyramid (frozen-ssl)", ge=1)
    representation_size: int = _param("int", 1024, "width of the box head's two MLP layers", ge=1)
    mask_head_channels: int = _param("int", 256, "channels of the four mask-head convolutions", ge=1)
    anchor_sizes: tuple[int, ...] = _param("list[int]", [32, 64, 128, 256, 512], "RPN anchor size per pyramid level (5 levels), in detector-frame pixels", ge=1)
    rpn_post_nms_top_n_train: int = _param("int", 4000, "proposals kept per image after RPN NMS in training (CutLER 4000)", ge=1)
    rpn_nms_thresh: float = _param("float", 0.65, "RPN NMS IoU threshold (CutLER 0.65)", ge=0, le=1)
    rpn_batch_size_per_image: int = _param("int", 256, "anchors sampled per image for the RPN loss", ge=1)
    box_batch_size_per_image: int = _param("int", 512, "proposals sampled per image for the RoI heads", ge=1)
    box_positive_fraction: float = _param("float", 0.25, "positive fraction of the sampled proposals (CutLER 0.25)", gt=0, le=1)
    droploss: bool = _param("bool", True, "DropLoss: no classification loss for proposals whose best IoU with any pseudo-mask box is <= droploss_iou")
    droploss_iou: float = _param("float", 0.01, "DropLoss IoU threshold", gt=0)
    copy_paste: bool = _param("bool", True, "copy-paste augmentation: paste instances of another training image")
    copy_paste_rate: float = _param("float", 1.0, "probability that an image gets pasted instances", ge=0, le=1)
    copy_paste_scale: tuple[float, float] = _param("list[float]", [0.3, 1.0], "range of the pasted instances' scale factor", gt=0)
    hflip: bool = _param("bool", True, "random horizontal flips")
    self_training_rounds: int = _param("int", 0, "self-training rounds after the first training (CutLER: 1-2)", ge=0)
    self_training_thresholds: tuple[float, ...] = _param("list[float]", [0.7, 0.65], "score threshold of kept predictions, per round (the last repeats)", ge=0, le=1)
    self_training_merge_iou: float = _param("float", 0.5, "earlier pseudo-masks are kept when their IoU with every kept prediction is below this", ge=0, le=1)
    self_training_iterations: int | None = _param("int", None, "iterations of each self-training round (null = half of iterations)", nullable=True, ge=1)
    self_training_lr: float | None = _param("float", None, "lr of the self-training rounds (null = half of lr)", nullable=True, gt=0)
    self_training_droploss: bool = _param("bool", False, "DropLoss during self-training rounds (CutLER: off)")
    self_training_max_detections: int = _param("int", 30, "detections per image used to build self-training targets", ge=1)
    max_detections: int = _param("int", 100, "detections per evaluation image (300 for LVIS)", ge=1)
    score_thresh: float = _param("float", 0.0, "minimum detection score at evaluation", ge=0, le=1)
    checkpoint_every: int = _param("int", 1000, "write a checkpoint every this many iterations (and at the end of each round)", ge=1)
    feature_cache_mb: int = _param("int", 0, "frozen-ssl: keep the frozen features of unaltered (not copy-pasted) training images, up to this many MB per rank (0 = off)", ge=0)
    num_workers: int = _param("int", 0, "data-loader worker processes (0 = in the training process)", ge=0)
    predict_batch_size: int = _param("int", 8, "images per batch at prediction time", ge=1)

    def __post_init__(self) -> None:
        uisbench.complete_params("maskrcnn", PARAMS, self.as_params(), check_params)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> MaskRCNNConfig:
        """The config of ``params`` (missing ones take their :data:`PARAMS` default)."""
        unknown = set(params) - set(_DEFAULTS)
        if unknown:
            raise uisbench.ConfigError(f"maskrcnn student: unknown parameter(s) {sorted(unknown)}; see `platform list students`.")
        values = {}
        for p in PARAMS:
            v = params.get(p.name, p.default)
            if p.type == "path" and isinstance(v, os.PathLike):
                v = os.fspath(v)
            elif p.type == "float" and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            elif p.type == "list[float]" and isinstance(v, list):
                v = [float(x) if isinstance(x, int) and not isinstance(x, bool) else x for x in v]
            values[p.name] = tuple(v) if isinstance(v, list) else v
        return cls(**values)

    def as_params(self) -> dict[str, Any]:
        """The settings as plain values (tuples as lists), in :data:`PARAMS` order."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {name: list(v) if isinstance(v, tuple) else v for name, v in values.items()}

    # -- what a round uses ---------------------------------------------------------------------------

    def round_iterations(self, r: int) -> int:
        if r == 0:
            return self.iterations
        return self.self_training_iterations or max(1, self.iterations // 2)

    def round_lr(self, r: int) -> float:
        return self.lr if r == 0 else (self.self_training_lr or self.lr / 2)

    def round_droploss(self, r: int) -> bool:
        return self.droploss if r == 0 else self.self_training_droploss

    def self_training_threshold(self, r: int) -> float:
        thresholds = self.self_training_thresholds or (0.7,)
        return float(thresholds[min(r - 1, len(thresholds) - 1)])


#: The student's parameters, in field order: made from :class:`MaskRCNNConfig`'s fields.
PARAMS: tuple[uisbench.Param, ...] = tuple(
    uisbench.Param(f.name, type_, default, help_, **options)
    for f in fields(MaskRCNNConfig)
    for type_, default, help_, options in [f.metadata["param"]]
)
_DEFAULTS: dict[str, Any] = {p.name: p.default for p in PARAMS}

__all__ = ["DETECTOR_BACKBONES", "PARAMS", "MaskRCNNConfig", "check_params"]
