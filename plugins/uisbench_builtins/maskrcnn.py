"""Built-in student ``maskrcnn``: torchvision's Mask R-CNN trained on pseudo-masks, CutLER's recipe.

Two classes (background, object). The detector's backbone is chosen by ``detector_backbone``:

- ``frozen-ssl`` (default): the backbone under evaluation, frozen, its patch features turned into a
  ViTDet-style simple feature pyramid (trainable) that feeds torchvision's RPN and RoI heads, so the
  score reflects that backbone. The detector works in the backbone's input frame (its
  ``preprocessing.size``); predictions are mapped back to each image's own size.
- ``resnet50-fpn`` (as CutLER) or ``resnet18-fpn`` (light): torchvision ResNet-FPN, initialised from
  a local ``detector_weights`` file or at random (recorded in ``provenance()``).

The CutLER recipe, each part switchable and recorded: DropLoss, copy-paste, self-training rounds.
Training checkpoints go to ``workdir/maskrcnn-checkpoint.pt`` (atomically, every
``checkpoint_every`` iterations); calling ``fit`` again with the same inputs resumes from it.
Work directories get copied and shared, so the checkpoint is read with torch's weights-only
unpickler (it holds only tensors and plain containers: the RNG states are stored as lists and
numbers), and checked against the freshly built model before anything is restored. A checkpoint
that is unreadable, of an older format, of another run or damaged means starting afresh, with a
warning naming the file.

Settings: :class:`MaskRCNNConfig`, one typed, validated field per entry of :data:`PARAMS`.

Under ``torchrun`` the student is :attr:`~uisbench.Student.distributed`: every rank trains its share
of each global batch (``batch_size`` images, split as evenly as possible), each loss weighted by
its share of what it averages over, and the ranks sum the gradients (in float64) before every
optimiser step, so the gradient is the one-process gradient of the same images; every random draw
(image order, flips, copy-paste, the sampled anchors and proposals, torch's global generator) is
seeded per sample. On CPU each image is forwarded and backpropagated alone, so the ``frozen-ssl``
detectors train the same weights on any number of ranks, up to a rare last-bit rounding of the
gradient sum (:meth:`MaskRCNNStudent._step`); so does a checkpoint, which any number of ranks
resumes. Rank 0 writes the checkpoints; every rank reads them (a shared work directory).
Prediction (and self-training targets) is sharded by chunks of ``predict_batch_size`` images and
gathered. Differences from one process: with the ResNet detectors (BatchNorm) and on CUDA a rank's
share is one batch, so floating-point summation order; on CPU the ResNet detectors' BatchNorm
normalises over each rank's share (SyncBatchNorm needs CUDA; on CUDA it is used), and with images
of different sizes torchvision pads each rank's share to its own largest image;
``feature_cache_mb`` is a budget per rank.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import uisbench

P = uisbench.Param

DETECTOR_BACKBONES = ("frozen-ssl", "resnet50-fpn", "resnet18-fpn")
CHECKPOINT = "maskrcnn-checkpoint.pt"
#: 2: RNG states as lists and numbers, so that the weights-only unpickler reads the file
_FORMAT = 2
#: How every file torch.save writes (zip format) begins; anything else is not ours and is not unpickled at all.
_ZIP_MAGIC = b"PK\x03\x04"

PARAMS: tuple[uisbench.Param, ...] = (
    P("detector_backbone", "str", "frozen-ssl", "frozen-ssl: the evaluated backbone, frozen, under a simple feature pyramid; resnet50-fpn / resnet18-fpn: torchvision ResNet-FPN", choices=DETECTOR_BACKBONES),
    P("detector_weights", "path", None, "resnet*-fpn only: local ResNet state dict (e.g. DINO ResNet-50); null = random init"),
    P("iterations", "int", 40000, "training iterations of the first round", ge=1),
    P("batch_size", "int", 16, "images per iteration (the global batch: under torchrun the ranks share it)", ge=1),
    P("optimizer", "str", "sgd", "sgd (momentum 0.9) or adamw", choices=("sgd", "adamw")),
    P("lr", "float", 0.01, "base learning rate", gt=0),
    P("weight_decay", "float", 5e-5, "weight decay", ge=0),
    P("warmup_iters", "int", 1000, "linear warm-up iterations (from lr/1000)", ge=0),
    P("lr_steps", "list[float]", [0.5], "fractions of the iterations where the lr is multiplied by lr_gamma", ge=0, le=1),
    P("lr_gamma", "float", 0.02, "lr factor at each step", gt=0),
    P("grad_clip", "float", 1.0, "clip the gradient norm of the whole model to this (0 = off)", ge=0),
    P("amp", "bool", True, "bf16 autocast on CUDA (ignored on CPU)"),
    P("min_size", "int", 800, "resnet*-fpn: shorter image side after resizing (frozen-ssl uses the backbone's size)", ge=1),
    P("max_size", "int", 1333, "resnet*-fpn: longest image side after resizing", ge=1),
    P("fpn_channels", "int", 256, "channels of the feature pyramid (frozen-ssl)", ge=1),
    P("representation_size", "int", 1024, "width of the box head's two MLP layers", ge=1),
    P("mask_head_channels", "int", 256, "channels of the four mask-head convolutions", ge=1),
    P("anchor_sizes", "list[int]", [32, 64, 128, 256, 512], "RPN anchor size per pyramid level (5 levels), in detector-frame pixels", ge=1),
    P("rpn_post_nms_top_n_train", "int", 4000, "proposals kept per image after RPN NMS in training (CutLER 4000)", ge=1),
    P("rpn_nms_thresh", "float", 0.65, "RPN NMS IoU threshold (CutLER 0.65)", ge=0, le=1),
    P("rpn_batch_size_per_image", "int", 256, "anchors sampled per image for the RPN loss", ge=1),
    P("box_batch_size_per_image", "int", 512, "proposals sampled per image for the RoI heads", ge=1),
    P("box_positive_fraction", "float", 0.25, "positive fraction of the sampled proposals (CutLER 0.25)", gt=0, le=1),
    P("droploss", "bool", True, "DropLoss: no classification loss for proposals whose best IoU with any pseudo-mask box is <= droploss_iou"),
    P("droploss_iou", "float", 0.01, "DropLoss IoU threshold", gt=0),
    P("copy_paste", "bool", True, "copy-paste augmentation: paste instances of another training image"),
    P("copy_paste_rate", "float", 1.0, "probability that an image gets pasted instances", ge=0, le=1),
    P("copy_paste_scale", "list[float]", [0.3, 1.0], "range of the pasted instances' scale factor", gt=0),
    P("hflip", "bool", True, "random horizontal flips"),
    P("self_training_rounds", "int", 0, "self-training rounds after the first training (CutLER: 1-2)", ge=0),
    P("self_training_thresholds", "list[float]", [0.7, 0.65], "score threshold of kept predictions, per round (the last repeats)", ge=0, le=1),
    P("self_training_merge_iou", "float", 0.5, "earlier pseudo-masks are kept when their IoU with every kept prediction is below this", ge=0, le=1),
    P("self_training_iterations", "int", None, "iterations of each self-training round (null = half of iterations)", nullable=True, ge=1),
    P("self_training_lr", "float", None, "lr of the self-training rounds (null = half of lr)", nullable=True, gt=0),
    P("self_training_droploss", "bool", False, "DropLoss during self-training rounds (CutLER: off)"),
    P("self_training_max_detections", "int", 30, "detections per image used to build self-training targets", ge=1),
    P("max_detections", "int", 100, "detections per evaluation image (300 for LVIS)", ge=1),
    P("score_thresh", "float", 0.0, "minimum detection score at evaluation", ge=0, le=1),
    P("checkpoint_every", "int", 1000, "write a checkpoint every this many iterations (and at the end of each round)", ge=1),
    P("feature_cache_mb", "int", 0, "frozen-ssl: keep the frozen features of unaltered (not copy-pasted) training images, up to this many MB per rank (0 = off)", ge=0),
    P("num_workers", "int", 0, "data-loader worker processes (0 = in the training process)", ge=0),
    P("predict_batch_size", "int", 8, "images per batch at prediction time", ge=1),
)


_DEFAULTS: dict[str, Any] = {p.name: p.default for p in PARAMS}


def check_params(params: Mapping[str, Any]) -> Any:
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
    """The student's settings as one typed, validated record (one field per entry of :data:`PARAMS`,
    whose help texts document them). Build it with :meth:`from_params`; construction checks every
    value against its :class:`uisbench.Param` and then :func:`check_params`, raising one
    :class:`uisbench.ConfigError` that lists every problem. Lists are stored as tuples."""

    detector_backbone: str
    detector_weights: str | None
    iterations: int
    batch_size: int
    optimizer: str
    lr: float
    weight_decay: float
    warmup_iters: int
    lr_steps: tuple[float, ...]
    lr_gamma: float
    grad_clip: float
    amp: bool
    min_size: int
    max_size: int
    fpn_channels: int
    representation_size: int
    mask_head_channels: int
    anchor_sizes: tuple[int, ...]
    rpn_post_nms_top_n_train: int
    rpn_nms_thresh: float
    rpn_batch_size_per_image: int
    box_batch_size_per_image: int
    box_positive_fraction: float
    droploss: bool
    droploss_iou: float
    copy_paste: bool
    copy_paste_rate: float
    copy_paste_scale: tuple[float, float]
    hflip: bool
    self_training_rounds: int
    self_training_thresholds: tuple[float, ...]
    self_training_merge_iou: float
    self_training_iterations: int | None
    self_training_lr: float | None
    self_training_droploss: bool
    self_training_max_detections: int
    max_detections: int
    score_thresh: float
    checkpoint_every: int
    feature_cache_mb: int
    num_workers: int
    predict_batch_size: int

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


def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (the one rule: uisbench.io.json_default)."""
    return json.loads(json.dumps(value, default=uisbench.io.json_default))


def _rng_state(device: str = "cpu") -> dict[str, Any]:
    """The RNG states of torch, numpy and python in forms torch's weights-only unpickler accepts:
    numpy's ``(name, uint32 keys, pos, has_gauss, gauss)`` and python's ``(version, internal, gauss)``
    tuples become dicts of str, int, float and lists of ints. On CUDA, the state of the training
    device alone (not of every visible GPU: a resume may see other GPUs, or fewer)."""
    import random

    import numpy as np
    import torch

    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(name), "keys": [int(k) for k in keys], "pos": int(pos), "has_gauss": int(has_gauss),
                  "gauss": float(gauss)},
        "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
    }
    if str(device).startswith("cuda") and torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Mapping[str, Any], device: str = "cpu") -> None:
    """Restore what :func:`_rng_state` saved, bit for bit (a CUDA state only on a CUDA device)."""
    import random

    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"], device)


def _restore_rng(state: Any, device: str = "cpu") -> str | None:
    """Set the saved RNG states; if they are malformed, put the current ones back and say why."""
    current = _rng_state(device)
    try:
        _set_rng_state(state, device)
    except Exception as err:  # whatever numpy, torch or random raise on a malformed state
        _set_rng_state(current, device)
        return f"holds a malformed RNG state ({type(err).__name__}: {err})"
    return None


def _same_layout(saved: Any, fresh: Any) -> bool:
    """``saved`` has ``fresh``'s types, keys and lengths all the way down (values may differ)."""
    if type(saved) is not type(fresh):
        return False
    if isinstance(fresh, dict):
        return saved.keys() == fresh.keys() and all(_same_layout(saved[k], fresh[k]) for k in fresh)
    if isinstance(fresh, (list, tuple)):
        return len(saved) == len(fresh) and all(_same_layout(a, b) for a, b in zip(saved, fresh, strict=True))
    return True


def _unpickle_checkpoint(path: Path) -> tuple[Any, str | None]:
    """``(contents, None)``, or ``(None, why it cannot be read)``.

    Only torch's weights-only unpickler ever sees the file (a crafted one must not run code), and only
    when it starts like a torch.save file: a plain pickle or random bytes are not unpickled at all.
    """
    import torch

    try:
        with open(path, "rb") as fh:
            head = fh.read(len(_ZIP_MAGIC))
    except OSError as err:
        return None, f"cannot be read ({err.strerror})"
    if head != _ZIP_MAGIC:
        return None, "is not a torch checkpoint (not written by uisbench, or damaged)"
    try:
        return torch.load(path, map_location="cpu", weights_only=True), None
    except Exception as err:  # damaged, or holding objects the safe loader refuses: all the same here
        return None, (f"cannot be read by torch's weights-only loader ({type(err).__name__}): a checkpoint of an "
                      "older uisbench, a damaged file, or not written by uisbench")


def _checkpoint_problem(state: Any, key: str) -> str | None:
    """Why unpickled ``state`` is not a usable checkpoint of the run ``key``, or ``None``."""
    fields = {"round": int, "iteration": int, "model": dict, "optimizer": dict, "scheduler": dict, "rng": dict,
              "history": dict}
    if not isinstance(state, dict):
        return "is not a maskrcnn training checkpoint"
    if state.get("format") != _FORMAT:
        return f"has checkpoint format {state.get('format')!r:.40}; this version writes format {_FORMAT}"
    if state.get("key") != key:
        return "belongs to another run (other data, seed or parameters)"
    if any(not isinstance(state.get(k), t) or isinstance(state.get(k), bool) for k, t in fields.items()):
        return "is damaged (fields missing or of the wrong type)"
    rounds = state["history"].get("rounds")
    if not (state["round"] >= 0 and state["iteration"] >= 0 and isinstance(rounds, list)
            and len(rounds) > state["round"] and all(isinstance(r, dict) for r in rounds)):
        return "is damaged (its round, iteration and history do not fit together)"
    return None


def _read_checkpoint(path: Path, key: str, *, warn: bool = True) -> dict[str, Any] | None:
    """The training state in ``path`` if it is this run's and well-formed, else ``None`` with a warning
    naming the file (``warn``: rank 0 speaks for all): anything unusable means starting afresh (the
    next checkpoint overwrites it)."""
    state, problem = _unpickle_checkpoint(path)
    problem = problem or _checkpoint_problem(state, key)
    if problem is not None:
        if warn:
            warnings.warn(f"maskrcnn: {path} {problem}; starting afresh.", stacklevel=3)
        return None
    return state


def _forward_seed(sample_seeds: Sequence[int]) -> int:
    """Seed of torch's global generator during a micro-batch's forward (a draw a module makes there,
    such as dropout): a function of its samples' own seeds alone, so an image draws the same on any rank."""
    from ._student_data import derive_seed

    return derive_seed(*sample_seeds, "global")


_NOT_IN_RUN_KEY = frozenset({"num_workers", "checkpoint_every", "predict_batch_size", "feature_cache_mb"})
#: Enters the run key: 2 = anchors and proposals sampled per image from the sample's seed; 3 = on CPU
#: one forward and backward per image, gradients summed in float64 (a checkpoint of an earlier
#: recipe is not continued with the new one).
_RECIPE = 3


class MaskRCNNStudent(uisbench.Student):
    """Class-agnostic torchvision Mask R-CNN trained on pseudo-masks (see the module docstring)."""

    distributed = True

    def __init__(self, backbone: uisbench.Backbone | None = None, **params: Any) -> None:
        self.config = config = MaskRCNNConfig.from_params(params)
        if config.detector_backbone == "frozen-ssl":
            if backbone is None:
                raise uisbench.ConfigError(
                    "maskrcnn: detector_backbone 'frozen-ssl' needs the backbone under evaluation (factory argument "
                    "backbone=...); use detector_backbone: resnet50-fpn for a backbone-independent student."
                )
            if getattr(backbone, "calibration", False):
                raise uisbench.IncompatibleError(
                    f"maskrcnn with detector_backbone 'frozen-ssl' cannot use calibration backbone "
                    f"{type(backbone).__name__}: calibration rows are references, not contenders (an oracle reads the "
                    "evaluation ground truth, so a student built on it would see the answers at prediction time; a "
                    "control such as position has no content to learn from). Score calibration backbones at the pseudo-mask "
                    "stage, or use a student entry with detector_backbone: resnet50-fpn."
                )
        self.backbone = backbone if config.detector_backbone == "frozen-ssl" else None
        self.device = "cpu"
        self.model = None
        self._init_info: dict[str, Any] = {}
        self._history: dict[str, Any] = {}
        self._distributed_info: dict[str, Any] = {"ranks": 1}
        #: one forward and backward per image (set by :meth:`_distribute`)
        self._per_image = False
        self._key = ""
        #: Called as ``on_checkpoint(round, iteration)`` after each checkpoint is written, on the rank
        #: that writes it (rank 0) (tests, monitoring).
        self.on_checkpoint: Callable[[int, int], None] | None = None
        #: Called as ``on_iteration(round, iteration, loss)`` after each optimiser step on every rank,
        #: with the loss of the whole (global) batch (tests, monitoring).
        self.on_iteration: Callable[[int, int, float], None] | None = None

    # -- plumbing --------------------------------------------------------------------------------

    def to(self, device: str) -> MaskRCNNStudent:
        self.device = str(device)
        if self.backbone is not None:
            self.backbone.to(self.device)
        if self.model is not None:
            self.model.to(self.device)
        return self

    @property
    def _cuda(self) -> bool:
        return self.device.startswith("cuda")

    def _ranks(self):
        from ._student_data import Ranks

        return Ranks.current(self.device)

    def _autocast(self):
        import torch

        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self._cuda and self.config.amp)

    def _build(self, dataset: uisbench.Dataset, probe_id: int) -> None:
        import torch

        from ._detector import build_maskrcnn

        c = self.config
        in_channels = patch = None
        if self.backbone is not None:
            self.backbone.to(self.device)
            pixels = self.backbone.preprocess(dataset.load_image(probe_id))[None].to(self.device)
            with torch.no_grad():
                fm = self.backbone.extract(pixels, [probe_id])
            in_channels = int(fm.features.shape[1])
            patch = int(fm.patch_size)
        model, info = build_maskrcnn(c, in_channels=in_channels, patch_size=patch)
        self.model = model.to(self.device)
        self._init_info = info

    def _distribute(self, ranks) -> None:
        """Under torchrun: BatchNorm (the ResNet detectors) becomes SyncBatchNorm on CUDA, so its
        statistics are those of the global batch as in one process; torch has no CPU SyncBatchNorm,
        so on CPU (gloo) each rank normalises over its own share (recorded in provenance).

        On CPU without BatchNorm (the ``frozen-ssl`` detectors) every image is its own micro-batch
        (:attr:`_per_image`): CPU kernels give the same bits for the same shapes and thread count, so
        an image's gradient is the same on any rank, and the trained weights do not depend on the
        number of ranks (see :meth:`_step`). A rank's share is one batch where that buys nothing:
        BatchNorm normalises over the batch (an image alone would be another model), and CUDA's
        kernels are not deterministic anyway (atomic adds in RoIAlign's backward)."""
        import torch

        norm = None
        if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in self.model.modules()):
            norm = "batch"
            if ranks.distributed and self._cuda:
                self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
                norm = "synchronised across ranks (SyncBatchNorm)"
            elif ranks.distributed:
                norm = "per rank: statistics over each rank's share of the batch (SyncBatchNorm needs CUDA)"
        share = [len(type(ranks)(r, ranks.world).share(self.config.batch_size)) for r in range(ranks.world)]
        self._per_image = not self._cuda and norm is None
        self._distributed_info = {"ranks": ranks.world, "backend": ranks.backend, "per_rank_batch": share,
                                  "batch_norm": norm, "micro_batch": "image" if self._per_image else "rank share"}

    def _detector(self, training: bool = False):
        from ._detector import Detector

        budget = self.config.feature_cache_mb * 2**20 if training else 0
        return Detector(self.model, self.backbone, cache={}, cache_bytes=budget)

    @staticmethod
    def _init_state(init_from: Path | None) -> dict[str, Any] | None:
        """The final training state of the fit in ``init_from`` (weights-only read), for fine-tuning."""
        if init_from is None:
            return None
        path = Path(init_from) / CHECKPOINT
        state, problem = _unpickle_checkpoint(path) if path.exists() else (None, "does not exist")
        if problem is None and not (isinstance(state, dict) and state.get("format") == _FORMAT and isinstance(state.get("model"), dict)):
            problem = "is not a finished maskrcnn training checkpoint"
        if problem is not None:
            raise uisbench.DataError(f"maskrcnn: cannot fine-tune from {path}: it {problem}; rerun the student stage (--force student).")
        return state

    def _run_key(self, dataset: uisbench.Dataset, pseudo: Mapping[int, Sequence[uisbench.Prediction]], seed: int,
                 init_key: str | None = None) -> str:
        # Parameters that change how, not what, is computed stay out: a run killed with 4 loader
        # workers may resume with 8 (batches depend only on seed, round and iteration), and so is the
        # number of ranks (each builds its share of the same global batch).
        training = {k: v for k, v in self.config.as_params().items() if k not in _NOT_IN_RUN_KEY}
        h = hashlib.sha256()
        h.update(json.dumps(_jsonable(training), sort_keys=True).encode())
        h.update(f"seed={seed}/fp={dataset.fingerprint()}/recipe={_RECIPE}/init={init_key}".encode())
        if self.backbone is not None:
            h.update(json.dumps(_jsonable(self.backbone.provenance()), sort_keys=True).encode())
        for image_id in sorted(pseudo):
            for m in pseudo[image_id]:
                counts = m.segmentation.get("counts")
                h.update(f"{image_id}:{m.segmentation.get('size')}:{counts}".encode())
        return h.hexdigest()[:20]

    # -- training --------------------------------------------------------------------------------

    def fit(
        self,
        dataset: uisbench.Dataset,
        pseudo_masks: Mapping[int, list[uisbench.Prediction]],
        *,
        workdir: Path,
        seed: int = 0,
        init_from: Path | None = None,
    ) -> int:
        """Train (resuming from ``workdir``'s checkpoint); returns the training samples processed by
        this call (iterations run x global batch size, over every round; the same on every rank).

        ``init_from``: the workdir of a finished fit of this student entry (same architecture): its
        final weights are the starting point (fine-tuning on a few labelled images); the optimiser
        and schedule start afresh with this entry's settings. Its run key enters this run's key.

        Under ``torch.distributed`` every rank calls it: each trains on its share of every global
        batch, the ranks sum the gradients, rank 0 writes the checkpoints (``workdir`` must be one
        folder that every rank reads), and the result is the one-process result whatever the number
        of ranks (see the module docstring for where it is so only up to float summation order)."""
        import torch

        c = self.config
        ranks = self._ranks()
        if c.batch_size < ranks.world:
            raise uisbench.ConfigError(
                f"maskrcnn: batch_size {c.batch_size} is the global batch, shared by the {ranks.world} torchrun "
                "ranks, and each rank needs at least one image per iteration; raise batch_size or run fewer ranks."
            )
        workdir = Path(workdir)
        if ranks.main:
            workdir.mkdir(parents=True, exist_ok=True)
        known = set(dataset.image_ids())
        targets: dict[int, list[uisbench.Prediction]] = {
            int(i): list(v) for i, v in pseudo_masks.items() if int(i) in known
        }
        trainable = [i for i in sorted(targets) if any(uisbench.masks.area(m.segmentation) > 0 for m in targets[i])]
        if not trainable:  # the masker found nothing on these features: a cell to skip, not a fault
            raise uisbench.IncompatibleError(
                f"maskrcnn: the pseudo-masks are empty for all {len(known)} training images of dataset "
                f"{type(dataset).__name__} ({len(targets)} images have an entry); nothing to train on. "
                "Check the masker's output (its parameters, or the backbone's features) before the student stage."
            )
        ckpt_path = workdir / CHECKPOINT
        state, failure = None, None
        try:  # what may fail on one rank alone (its files, its device) is shared before the first collective
            if self.backbone is not None:
                self.backbone.bind(dataset)
            init_state = self._init_state(init_from)
            key = self._key = self._run_key(dataset, targets, seed, None if init_state is None else str(init_state.get("key")))
            state = _read_checkpoint(ckpt_path, key, warn=ranks.main) if ckpt_path.exists() else None
            torch.manual_seed(seed)
            self._build(dataset, trainable[0])
            if init_state is not None and state is None:  # a resumed fine-tuning has its own weights
                self.model.load_state_dict(init_state["model"], strict=True)
            if state is not None:
                problem = self._resume_problem(state, workdir) or _restore_rng(state["rng"], self.device)
                if problem is not None:
                    if ranks.main:
                        warnings.warn(f"maskrcnn: {ckpt_path} {problem}; starting afresh.", stacklevel=2)
                    state = None
        except Exception as err:
            if not ranks.distributed:
                raise
            failure = err
        self._agree_on_resume(state, ckpt_path, ranks, failure)
        self._distribute(ranks)
        rounds = 1 + c.self_training_rounds
        history: dict[str, Any] = {
            "resumed_from": None,
            "rounds": [],
            "train_images": len(trainable),
            "images_without_pseudo_masks": len(known) - len(trainable),
            "init_from": None if init_from is None else str(init_from),
        }
        start_round, start_it = 0, 0
        if state is not None:  # checked by _resume_problem, RNG already restored
            self.model.load_state_dict(state["model"])
            start_round, start_it = state["round"], state["iteration"]
            history = state["history"]
            history["resumed_from"] = {"round": start_round, "iteration": start_it}
        samples = 0
        for r in range(start_round, rounds):
            iters = c.round_iterations(r)
            resume = state if (state is not None and r == start_round) else None
            if r > 0 and resume is not None:  # this round's targets were made before its checkpoint
                targets = self._load_targets(workdir, r)
            elif r > 0:
                targets, info = self._self_training_targets(dataset, targets, r, workdir)
                history["rounds"].append(info)
            elif not history["rounds"]:
                history["rounds"].append({"round": 0, "targets": sum(len(targets[i]) for i in trainable)})
            if resume is not None and int(resume["iteration"]) >= iters:
                continue
            samples += self._train_round(dataset, targets, r, iters, seed, workdir, key, history, resume, ranks)
        self._history = history
        return samples

    @staticmethod
    def _agree_on_resume(state: dict[str, Any] | None, path: Path, ranks, failure: BaseException | None = None) -> None:
        """Every rank resumes from the same point, or every rank stops: ranks that read different
        checkpoints (work directories that are not one shared folder) would train different models,
        and a rank that failed to set up would leave the others waiting in a collective."""
        point = None if state is None else (int(state["round"]), int(state["iteration"]))
        mine = ("failed", f"{type(failure).__name__}: {failure}") if failure is not None else point
        points = ranks.all_gather(mine)
        if failure is not None:
            raise failure
        failed = [(r, p[1]) for r, p in enumerate(points) if isinstance(p, tuple) and p and p[0] == "failed"]
        if failed:
            raise RuntimeError(f"maskrcnn: torchrun rank {failed[0][0]} failed to set up training ({failed[0][1]})")
        if any(p != points[0] for p in points):
            seen = ", ".join(f"rank {r}: {'none' if p is None else f'round {p[0]} iteration {p[1]}'}" for r, p in enumerate(points))
            raise uisbench.ConfigError(
                f"maskrcnn: the torchrun ranks read different checkpoints at {path} ({seen}); every rank must see "
                "the same work directory: put --workdir on a file system that all nodes share."
            )

    def _resume_problem(self, state: dict[str, Any], workdir: Path) -> str | None:
        """Why this run's checkpoint cannot be restored into the freshly built model, or ``None``.

        Checked before anything is restored, so a damaged file means starting afresh rather than a
        crash halfway through loading (or, worse, in the middle of training).
        """
        import torch

        expected, saved = self.model.state_dict(), state["model"]
        if saved.keys() != expected.keys() or any(
            not isinstance(saved[k], torch.Tensor) or saved[k].shape != v.shape or saved[k].dtype != v.dtype
            for k, v in expected.items()
        ):
            return "holds model weights that do not fit this model"
        r = state["round"]
        opt, sched, _ = self._optimizer(r, self.config.round_iterations(r))
        fresh_opt, fresh_sched = opt.state_dict(), sched.state_dict()
        saved_opt = state["optimizer"]
        params = [q for q in self.model.parameters() if q.requires_grad]
        groups = saved_opt.get("param_groups")
        if not (_same_layout(groups, fresh_opt["param_groups"])
                and [g["params"] for g in groups] == [g["params"] for g in fresh_opt["param_groups"]]
                and isinstance(saved_opt.get("state"), dict) and set(saved_opt["state"]) <= set(range(len(params)))):
            return "holds an optimizer state that does not fit this model"
        for index, slots in saved_opt["state"].items():  # momentum / Adam moments: the parameter's shape, or a scalar
            if not isinstance(slots, dict) or any(
                not isinstance(v, torch.Tensor) or (v.dim() > 0 and v.shape != params[index].shape) for v in slots.values()
            ):
                return "holds an optimizer state that does not fit this model"
        if not _same_layout(state["scheduler"], fresh_sched):
            return "holds a malformed learning-rate schedule"
        if r > 0 and self._read_targets(workdir, r) is None:
            return f"needs {self._targets_file(workdir, r).name} (round {r}'s targets), which is missing or unreadable"
        return None

    def _targets_file(self, workdir: Path, r: int) -> Path:
        return workdir / f"maskrcnn-targets-round{r}.json"

    def _read_targets(self, workdir: Path, r: int) -> tuple[dict[int, list[uisbench.Prediction]], dict[str, Any]] | None:
        """Round ``r``'s saved targets and their info if the file is this run's and well-formed, else ``None``
        (a work directory may come from elsewhere: its files are checked, not trusted)."""
        path = self._targets_file(workdir, r)
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved.get("key") != self._key:
                return None
            targets = {int(k): [uisbench.Prediction.from_coco(x) for x in v] for k, v in saved["targets"].items()}
            return targets, dict(saved["info"])
        except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError):  # missing, not json, malformed
            return None

    def _load_targets(self, workdir: Path, r: int) -> dict[int, list[uisbench.Prediction]]:
        saved = self._read_targets(workdir, r)
        if saved is None:  # checked by _resume_problem; only a file changed since then gets here
            raise uisbench.DataError(
                f"maskrcnn: {self._targets_file(workdir, r)} is missing or unreadable; delete {workdir / CHECKPOINT} "
                "to train afresh."
            )
        return saved[0]

    def _self_training_targets(self, dataset, previous, r: int, workdir: Path):
        """Round ``r``'s targets: the current model's confident predictions on the training images
        merged with the previous targets (CutLER ``get_self_training_ann``); saved atomically by rank 0.
        Under torchrun each rank predicts its share of the images and every rank gets all targets."""
        from ._student_data import merge_self_training

        c = self.config
        ranks = self._ranks()
        threshold = c.self_training_threshold(r)
        # made by this run before it was killed (same key); else remade. Rank 0 decides for every rank.
        saved = ranks.broadcast(self._read_targets(workdir, r) if ranks.main else None)
        if saved is not None:
            return saved
        ids = sorted(previous)
        preds = self._predict(dataset, ids, max_detections=c.self_training_max_detections, everyone=True)
        merged = {
            i: merge_self_training(preds.get(i, []), previous[i], score_threshold=threshold, merge_iou=c.self_training_merge_iou)
            for i in ids
        }
        kept = sum(1 for i in ids for x in preds.get(i, []) if x.score >= threshold)
        info = {
            "round": r,
            "score_threshold": threshold,
            "kept_predictions": kept,
            "targets_before": sum(len(previous[i]) for i in ids),
            "targets": sum(len(v) for v in merged.values()),
        }
        if ranks.main:
            uisbench.atomic_write_json(
                self._targets_file(workdir, r),
                {"key": self._key, "info": info, "targets": {str(i): [m.to_coco() for m in v] for i, v in merged.items()}},
                indent=None,
            )
        return merged, info

    def _optimizer(self, r: int, iters: int):
        import torch

        c = self.config
        lr = c.round_lr(r)
        params = [q for q in self.model.parameters() if q.requires_grad]
        if c.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=c.weight_decay)
        else:
            opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=c.weight_decay)
        warmup = max(0, c.warmup_iters)
        steps = sorted(int(f * iters) for f in c.lr_steps)
        gamma = c.lr_gamma

        def factor(it: int) -> float:
            w = 1.0 if it >= warmup or warmup == 0 else 0.001 + (1 - 0.001) * it / warmup
            return w * gamma ** sum(1 for s in steps if it >= s)

        return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor), lr

    def _train_round(self, dataset, targets, r, iters, seed, workdir, key, history, resume, ranks) -> int:
        """Train round ``r`` from its start (or ``resume``); returns the samples processed (global)."""
        import torch
        from tqdm import tqdm

        from ._student_data import IterationBatches

        c = self.config
        model = self.model
        droploss = c.round_droploss(r)
        model.roi_heads.drop_iou = c.droploss_iou if droploss else None
        opt, sched, lr = self._optimizer(r, iters)
        start = 0
        if resume is not None:
            opt.load_state_dict(resume["optimizer"])
            sched.load_state_dict(resume["scheduler"])
            start = int(resume["iteration"])
        trainable = [i for i in sorted(targets) if targets[i]]
        data = IterationBatches(
            dataset,
            targets,
            trainable,
            backbone=self.backbone,
            batch_size=c.batch_size,
            seed=seed,
            round_index=r,
            iterations=iters,
            hflip=c.hflip,
            copy_paste_rate=c.copy_paste_rate if c.copy_paste else 0.0,
            copy_paste_scale=c.copy_paste_scale,
            positions=ranks.share(c.batch_size),
        )
        detector = self._detector(training=True)
        model.train()
        if self.backbone is not None and hasattr(self.backbone, "eval"):
            self.backbone.eval()
        record = {
            "round": r,
            "iterations": iters,
            "lr": lr,
            "droploss": droploss,
            "batch_size": c.batch_size,
        }
        params = [q for q in model.parameters() if q.requires_grad]
        # a failure flag, then every parameter's gradient: summed over the images in float64 (see _step)
        flat = torch.zeros(1 + sum(q.numel() for q in params), dtype=torch.float64, device=self.device)
        bar = tqdm(total=iters, initial=start, desc=f"maskrcnn round {r}", unit="it", disable=None if ranks.main else True,
                   file=sys.stderr)
        t0, seen, last_loss, ckpt_s = time.perf_counter(), 0, float("nan"), 0.0
        ckpt_every = max(1, c.checkpoint_every)
        batches = iter(data.loader(start, c.num_workers, self._cuda))
        try:
            for it in range(start, iters):
                value = self._step(detector, batches, params, flat, ranks, r, it)
                if c.grad_clip and c.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
                opt.step()
                sched.step()
                seen += c.batch_size
                last_loss = value
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.3f}", refresh=False)
                if self.on_iteration is not None:
                    self.on_iteration(r, it, last_loss)
                done = it + 1
                if done % ckpt_every == 0 or done == iters:
                    record.update(final_loss=last_loss)
                    t_ckpt = time.perf_counter()
                    self._save(workdir, key, r, done, opt, sched, history, record, done == iters, ranks)
                    ckpt_s += time.perf_counter() - t_ckpt
        finally:
            bar.close()
        ranks.broadcast_buffers(model)
        elapsed = time.perf_counter() - t0
        record.update(
            final_loss=last_loss,
            seconds=round(elapsed, 3),
            images_per_s=round(seen / elapsed, 3) if seen and elapsed > 0 else None,
            checkpoint_seconds=round(ckpt_s, 3),
            resumed_at=start or None,
        )
        history["rounds"][r].update({"training": record})
        return seen

    def _step(self, detector, batches, params, flat, ranks, r: int, it: int) -> float:
        """The gradient of iteration ``it``'s global batch, set as ``params``' ``.grad`` on every rank;
        returns the batch's loss.

        Each loss is a mean over what the samplers drew in the whole global batch
        (:data:`_detector.LOSS_NORMALISERS`). So every micro-batch of this rank's share (one per image,
        or the whole share: :attr:`_per_image`) is forwarded first, the ranks sum what each drew,
        then each micro-batch's loss, weighted by its share of those counts, is backpropagated alone
        and its float32 gradient added into ``flat`` in float64, which the ranks sum. An image's
        forward and backward are then the same computation on any rank, and a float64 sum of a few
        float32 numbers is exact unless their magnitudes span more than 2**29, so the float32 gradient
        does not depend on how the images are grouped into ranks (but for a last-bit rounding where a
        sum is not exact and lies that close to a float32 rounding boundary).

        Failures are shared before each collective that a failed rank would miss: loading, before
        the forward (with SyncBatchNorm, on CUDA, a collective); the forward, in the counts' sum;
        the backward, in the gradients' sum; then every rank stops.
        """
        import math

        import torch

        from ._detector import LOSS_NORMALISERS
        from ._student_data import split

        where = f"at round {r} iteration {it}"
        failure: BaseException | None = None
        try:
            batch = self._to_device(next(batches))
        except Exception as err:  # an unreadable image: raised below, after every rank knows
            failure = err
        self._stop_if_failed(failure, ranks.count(failure is not None), where)
        names = list(LOSS_NORMALISERS)
        counts, sums = [0] * len(names), [0.0] * len(names)
        forwards: list[tuple[dict[str, Any], list[int]]] = []
        try:
            for part in split(batch) if self._per_image else [batch]:
                torch.manual_seed(_forward_seed(part["seeds"]))  # any draw from the global generator: per image
                with self._autocast():
                    losses = detector.losses(part, part["targets"])
                found = detector.loss_counts(len(part["ids"]))
                if found is None or set(losses) != set(names):
                    raise RuntimeError(f"maskrcnn: cannot weight the losses {sorted(losses)} across images (no sampler counts)")
                drawn = [int(found[LOSS_NORMALISERS[n]]) for n in names]
                forwards.append((losses, drawn))
                for j, (n, k) in enumerate(zip(names, drawn, strict=True)):
                    counts[j] += k
                    sums[j] += float(losses[n].detach()) * k if k else 0.0  # a mean over nothing is no loss
        except Exception as err:
            failure = err
        total = ranks.sum(torch.tensor([float(failure is not None), *counts, *sums], dtype=torch.float64, device=self.device))
        total = total.tolist()
        self._stop_if_failed(failure, int(total[0]), where)
        global_counts, global_sums = total[1 : 1 + len(names)], total[1 + len(names) :]
        means = {n: (s / n_g if n_g > 0 else 0.0) for n, s, n_g in zip(names, global_sums, global_counts, strict=True)}
        value = sum(means.values())
        if not math.isfinite(value):
            raise FloatingPointError(f"maskrcnn: loss is {value} {where} ({means}); lower lr or raise warmup_iters.")
        sizes = [q.numel() for q in params]
        flat.zero_()
        try:
            for losses, drawn in forwards:
                loss = sum(losses[n] * (k / n_g) for n, k, n_g in zip(names, drawn, global_counts, strict=True) if k)
                for q in params:
                    q.grad = None
                if isinstance(loss, torch.Tensor):
                    loss.backward()
                for q, g in zip(params, flat[1:].split(sizes), strict=True):
                    if q.grad is not None:  # a parameter that no loss of this micro-batch reached: zero
                        g.add_(q.grad.flatten())
        except Exception as err:
            failure = err
        flat[0] = float(failure is not None)
        reduced = ranks.sum(flat)
        self._stop_if_failed(failure, int(reduced[0].item()), where)
        for q, g in zip(params, reduced[1:].split(sizes), strict=True):
            q.grad = g.view_as(q).to(q.dtype)
        return value

    @staticmethod
    def _stop_if_failed(failure: BaseException | None, failed: int, where: str) -> None:
        """After the ranks counted their failures: this rank's own error, or the others'."""
        if failure is not None:
            raise failure
        if failed:
            raise RuntimeError(
                f"maskrcnn: {failed} other torchrun rank(s) failed {where} (their error is in their own log); "
                "stopping this rank too."
            )

    def _save(self, workdir, key, r, done, opt, sched, history, record, final, ranks) -> None:
        """Rank 0 writes the checkpoint (atomically); it holds nothing rank-specific, so any number of
        ranks resumes from it. Under torchrun a failed write (a full disk) stops every rank."""
        import torch

        if final:
            history["rounds"][r]["training"] = dict(record)
        failure = None
        if ranks.main:
            try:
                state = {
                    "format": _FORMAT,
                    "key": key,
                    "round": r,
                    "iteration": done,
                    "model": self.model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "rng": _rng_state(self.device),
                    "history": history,
                }
                with uisbench.atomic_path(workdir / CHECKPOINT) as tmp:
                    torch.save(state, tmp)
                if self.on_checkpoint is not None:
                    self.on_checkpoint(r, done)
            except Exception as err:
                if not ranks.distributed:
                    raise
                failure = err
        if ranks.distributed:
            self._stop_if_failed(failure, ranks.count(failure is not None), f"writing {workdir / CHECKPOINT}")

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        dev = self.device
        out = dict(batch)
        if "pixels" in batch:
            out["pixels"] = batch["pixels"].to(dev, non_blocking=True)
        if "images" in batch:
            out["images"] = [x.to(dev, non_blocking=True) for x in batch["images"]]
        if "targets" in batch:
            out["targets"] = [{k: v.to(dev, non_blocking=True) for k, v in t.items()} for t in batch["targets"]]
        return out

    # -- prediction ------------------------------------------------------------------------------

    def predict(self, dataset: uisbench.Dataset, image_ids: Sequence[int]) -> dict[int, list[uisbench.Prediction]]:
        """Detections of ``image_ids``. Under ``torch.distributed`` every rank calls it: each predicts its
        share (chunks of ``predict_batch_size`` images, round robin, as the bench's per-image stages),
        and rank 0 returns the predictions of every image; the other ranks return an empty dict."""
        if self.model is None:
            raise uisbench.ConfigError("maskrcnn: predict() before fit(); train the student first.")
        if self.backbone is not None:
            self.backbone.bind(dataset)
        return self._predict(dataset, list(image_ids), max_detections=self.config.max_detections)

    def _predict(self, dataset, image_ids: list[int], *, max_detections: int, everyone: bool = False
                 ) -> dict[int, list[uisbench.Prediction]]:
        """This rank's share of ``image_ids`` predicted, then gathered: on rank 0 (on every rank when
        ``everyone``)."""
        import numpy as np
        import torch

        from ._student_data import PredictImages

        c = self.config
        ranks = self._ranks()
        size = c.predict_batch_size
        mine = [i for chunk in ranks.mine([image_ids[j : j + size] for j in range(0, len(image_ids), size)]) for i in chunk]
        model = self.model
        was_training = model.training
        model.eval()
        heads = model.roi_heads
        saved = heads.detections_per_img
        heads.detections_per_img = max_detections
        detector = self._detector()
        out: dict[int, list[uisbench.Prediction]] = {}
        failure: BaseException | None = None
        try:
            for batch in PredictImages(dataset, mine, self.backbone).loader(size, c.num_workers):
                batch = self._to_device(batch)
                with self._autocast():
                    detections = detector.detect(batch)
                for image_id, det in zip(batch["ids"], detections, strict=True):
                    masks = (det["masks"][:, 0] >= 0.5).to("cpu", torch.uint8).numpy()
                    boxes = det["boxes"].float().cpu().numpy()
                    scores = det["scores"].float().cpu().numpy()
                    preds = []
                    for m, b, s in zip(masks, boxes, scores, strict=True):
                        x1, y1, x2, y2 = (float(v) for v in b)
                        preds.append(
                            uisbench.Prediction(
                                image_id=int(image_id),
                                segmentation=uisbench.masks.encode(np.asarray(m)),
                                bbox=(x1, y1, max(0.0, x2 - x1), max(0.0, y2 - y1)),
                                score=float(s),
                            )
                        )
                    out[int(image_id)] = preds
        except Exception as err:
            if not ranks.distributed:
                raise
            failure = err  # raised after the gather, which every rank must reach
        finally:
            heads.detections_per_img = saved
            model.train(was_training)
        if not ranks.distributed:
            return out
        mine_out = (f"{type(failure).__name__}: {failure}", {}) if failure is not None else (None, out)
        parts = ranks.all_gather(mine_out) if everyone else ranks.gather(mine_out)
        if failure is not None:
            raise failure
        if parts is None:
            return {}
        failed = [(r, why) for r, (why, _) in enumerate(parts) if why is not None]
        if failed:
            raise RuntimeError(f"maskrcnn: torchrun rank {failed[0][0]} failed to predict its images ({failed[0][1]})")
        merged = {i: p for _, part in parts for i, p in part.items()}
        return {int(i): merged[int(i)] for i in image_ids if int(i) in merged}

    # -- provenance ------------------------------------------------------------------------------

    def provenance(self) -> dict[str, Any]:
        import torch
        import torchvision

        c = self.config
        prov: dict[str, Any] = {
            "student": "maskrcnn",
            "model": "torchvision.models.detection.MaskRCNN (2 classes: background, object)",
            "detector_backbone": c.detector_backbone,
            "init": self._init_info or None,
            "droploss": {"enabled": c.droploss, "iou_threshold": c.droploss_iou},
            "copy_paste": {"enabled": c.copy_paste, "rate": c.copy_paste_rate, "scale": list(c.copy_paste_scale)},
            "self_training": {
                "rounds": c.self_training_rounds,
                "thresholds": list(c.self_training_thresholds),
                "merge_iou": c.self_training_merge_iou,
                "droploss": c.self_training_droploss,
            },
            "schedule": {
                "iterations": c.iterations,
                "batch_size": c.batch_size,
                "optimizer": c.optimizer,
                "lr": c.lr,
                "warmup_iters": c.warmup_iters,
                "lr_steps": list(c.lr_steps),
                "lr_gamma": c.lr_gamma,
                "weight_decay": c.weight_decay,
                "grad_clip": c.grad_clip,
            },
            "amp": "bf16" if (self._cuda and c.amp) else None,
            "device": self.device,
            "distributed": _jsonable(self._distributed_info),
            "params": _jsonable(c.as_params()),
            "history": _jsonable(self._history),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
        }
        if self.backbone is not None:
            frame = self.backbone.preprocessing
            prov["frame"] = {"size": frame.size, "resize": frame.resize, "patch_size": frame.patch_size}
            prov["ssl_backbone"] = _jsonable(self.backbone.provenance())
        else:
            prov["frame"] = {"min_size": c.min_size, "max_size": c.max_size}
        return prov


@uisbench.hookimpl
def uisbench_students():
    description = "Class-agnostic torchvision Mask R-CNN trained on pseudo-masks (CutLER recipe: DropLoss, copy-paste, self-training)."
    yield uisbench.StudentSpec(name="maskrcnn", description=description, factory=MaskRCNNStudent, params=PARAMS, version="1",
                               check=check_params)


__all__ = ["MaskRCNNStudent", "MaskRCNNConfig", "PARAMS", "DETECTOR_BACKBONES", "uisbench_students"]
