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
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
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
    P("iterations", "int", 40000, "training iterations of the first round"),
    P("batch_size", "int", 16, "images per iteration"),
    P("optimizer", "str", "sgd", "sgd (momentum 0.9) or adamw", choices=("sgd", "adamw")),
    P("lr", "float", 0.01, "base learning rate"),
    P("weight_decay", "float", 5e-5, "weight decay"),
    P("warmup_iters", "int", 1000, "linear warm-up iterations (from lr/1000)"),
    P("lr_steps", "list[float]", [0.5], "fractions of the iterations where the lr is multiplied by lr_gamma"),
    P("lr_gamma", "float", 0.02, "lr factor at each step"),
    P("grad_clip", "float", 1.0, "clip the gradient norm of the whole model to this (0 = off)"),
    P("amp", "bool", True, "bf16 autocast on CUDA (ignored on CPU)"),
    P("min_size", "int", 800, "resnet*-fpn: shorter image side after resizing (frozen-ssl uses the backbone's size)"),
    P("max_size", "int", 1333, "resnet*-fpn: longest image side after resizing"),
    P("fpn_channels", "int", 256, "channels of the feature pyramid (frozen-ssl)"),
    P("representation_size", "int", 1024, "width of the box head's two MLP layers"),
    P("mask_head_channels", "int", 256, "channels of the four mask-head convolutions"),
    P("anchor_sizes", "list[int]", [32, 64, 128, 256, 512], "RPN anchor size per pyramid level (5 levels), in detector-frame pixels"),
    P("rpn_post_nms_top_n_train", "int", 4000, "proposals kept per image after RPN NMS in training (CutLER 4000)"),
    P("rpn_nms_thresh", "float", 0.65, "RPN NMS IoU threshold (CutLER 0.65)"),
    P("rpn_batch_size_per_image", "int", 256, "anchors sampled per image for the RPN loss"),
    P("box_batch_size_per_image", "int", 512, "proposals sampled per image for the RoI heads"),
    P("box_positive_fraction", "float", 0.25, "positive fraction of the sampled proposals (CutLER 0.25)"),
    P("droploss", "bool", True, "DropLoss: no classification loss for proposals whose best IoU with any pseudo-mask box is <= droploss_iou"),
    P("droploss_iou", "float", 0.01, "DropLoss IoU threshold"),
    P("copy_paste", "bool", True, "copy-paste augmentation: paste instances of another training image"),
    P("copy_paste_rate", "float", 1.0, "probability that an image gets pasted instances"),
    P("copy_paste_scale", "list[float]", [0.3, 1.0], "range of the pasted instances' scale factor"),
    P("hflip", "bool", True, "random horizontal flips"),
    P("self_training_rounds", "int", 0, "self-training rounds after the first training (CutLER: 1-2)"),
    P("self_training_thresholds", "list[float]", [0.7, 0.65], "score threshold of kept predictions, per round (the last repeats)"),
    P("self_training_merge_iou", "float", 0.5, "earlier pseudo-masks are kept when their IoU with every kept prediction is below this"),
    P("self_training_iterations", "int", None, "iterations of each self-training round (null = half of iterations)", nullable=True),
    P("self_training_lr", "float", None, "lr of the self-training rounds (null = half of lr)", nullable=True),
    P("self_training_droploss", "bool", False, "DropLoss during self-training rounds (CutLER: off)"),
    P("self_training_max_detections", "int", 30, "detections per image used to build self-training targets"),
    P("max_detections", "int", 100, "detections per evaluation image (300 for LVIS)"),
    P("score_thresh", "float", 0.0, "minimum detection score at evaluation"),
    P("checkpoint_every", "int", 1000, "write a checkpoint every this many iterations (and at the end of each round)"),
    P("feature_cache_mb", "int", 0, "frozen-ssl: keep the frozen features of unaltered (not copy-pasted) training images, up to this many MB (0 = off)"),
    P("num_workers", "int", 0, "data-loader worker processes (0 = in the training process)"),
    P("predict_batch_size", "int", 8, "images per batch at prediction time"),
)


_AT_LEAST_ONE = ("iterations", "batch_size", "checkpoint_every", "predict_batch_size", "max_detections",
                 "self_training_max_detections", "fpn_channels", "representation_size", "mask_head_channels",
                 "rpn_post_nms_top_n_train", "rpn_batch_size_per_image", "box_batch_size_per_image", "min_size", "max_size")


def check_params(params: Mapping[str, Any]) -> Any:
    """Problems the student would raise when built (``platform validate`` runs this too)."""
    if len(params["anchor_sizes"]) != 5 or min(params["anchor_sizes"], default=0) <= 0:
        yield "anchor_sizes", "needs 5 positive sizes, one per pyramid level (strides 4..64)"
    scale = params["copy_paste_scale"]
    if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
        yield "copy_paste_scale", f"is [low, high] with 0 < low <= high, e.g. [0.3, 1.0]; got {scale}"
    for name in _AT_LEAST_ONE:
        if params[name] < 1:
            yield name, f"must be >= 1, got {params[name]}"
    for name in ("lr", "droploss_iou"):
        if not params[name] > 0:
            yield name, f"must be > 0, got {params[name]}"
    if params["self_training_rounds"] < 0:
        yield "self_training_rounds", f"must be >= 0, got {params['self_training_rounds']}"
    thresholds = params["self_training_thresholds"]
    if not thresholds or not all(0 <= t <= 1 for t in thresholds):
        yield "self_training_thresholds", f"needs at least one score threshold in [0, 1], got {thresholds}"
    if params["detector_weights"] is not None and params["detector_backbone"] == "frozen-ssl":
        yield "detector_weights", "initialises a resnet*-fpn detector; frozen-ssl uses the evaluated backbone"


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _rng_state() -> dict[str, Any]:
    """The RNG states of torch, numpy and python in forms torch's weights-only unpickler accepts:
    numpy's ``(name, uint32 keys, pos, has_gauss, gauss)`` and python's ``(version, internal, gauss)``
    tuples become dicts of str, int, float and lists of ints."""
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
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`_rng_state` saved, bit for bit."""
    import random

    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _restore_rng(state: Any) -> str | None:
    """Set the saved RNG states; if they are malformed, put the current ones back and say why."""
    current = _rng_state()
    try:
        _set_rng_state(state)
    except Exception as err:  # whatever numpy, torch or random raise on a malformed state
        _set_rng_state(current)
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


def _read_checkpoint(path: Path, key: str) -> dict[str, Any] | None:
    """The training state in ``path`` if it is this run's and well-formed, else ``None`` with a warning
    naming the file: anything unusable means starting afresh (the next checkpoint overwrites it)."""
    state, problem = _unpickle_checkpoint(path)
    problem = problem or _checkpoint_problem(state, key)
    if problem is not None:
        warnings.warn(f"maskrcnn: {path} {problem}; starting afresh.", stacklevel=3)
        return None
    return state


def _iteration_seed(seed: int, round_index: int, it: int) -> int:
    digest = hashlib.sha256(f"{seed}/{round_index}/{it}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


_NOT_IN_RUN_KEY = frozenset({"num_workers", "checkpoint_every", "predict_batch_size", "feature_cache_mb"})


class MaskRCNNStudent(uisbench.Student):
    """Class-agnostic torchvision Mask R-CNN trained on pseudo-masks (see the module docstring)."""

    def __init__(self, backbone: uisbench.Backbone | None = None, **params: Any) -> None:
        self.params = {**{p.name: p.default for p in PARAMS}, **params}
        unknown = set(params) - {p.name for p in PARAMS}
        if unknown:
            raise uisbench.ConfigError(f"maskrcnn student: unknown parameter(s) {sorted(unknown)}; see `platform list students`.")
        kind = self.params["detector_backbone"]
        if kind not in DETECTOR_BACKBONES:
            raise uisbench.ConfigError(f"maskrcnn: detector_backbone {kind!r} is not one of {', '.join(DETECTOR_BACKBONES)}.")
        if kind == "frozen-ssl":
            if backbone is None:
                raise uisbench.ConfigError(
                    "maskrcnn: detector_backbone 'frozen-ssl' needs the backbone under evaluation (factory argument "
                    "backbone=...); use detector_backbone: resnet50-fpn for a backbone-independent student."
                )
            if getattr(backbone, "calibration", False):
                raise uisbench.IncompatibleError(
                    f"maskrcnn with detector_backbone 'frozen-ssl' cannot use calibration backbone "
                    f"{type(backbone).__name__}: it reads the evaluation ground truth, so a student built on it "
                    "would see the answers at prediction time. Score calibration backbones at the pseudo-mask "
                    "stage, or use a student entry with detector_backbone: resnet50-fpn."
                )
        uisbench.raise_problems("maskrcnn", check_params(self.params))
        self.backbone = backbone if kind == "frozen-ssl" else None
        self.device = "cpu"
        self.model = None
        self._init_info: dict[str, Any] = {}
        self._history: dict[str, Any] = {}
        self._key = ""
        #: Called as ``on_checkpoint(round, iteration)`` after each checkpoint is written (tests, monitoring).
        self.on_checkpoint: Callable[[int, int], None] | None = None

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

    def _autocast(self):
        import torch

        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self._cuda and bool(self.params["amp"]))

    def _build(self, dataset: uisbench.Dataset, probe_id: int) -> None:
        import torch

        from ._detector import build_maskrcnn

        p = self.params
        in_channels = patch = None
        if self.backbone is not None:
            self.backbone.to(self.device)
            pixels = self.backbone.preprocess(dataset.load_image(probe_id))[None].to(self.device)
            with torch.no_grad():
                fm = self.backbone.extract(pixels, [probe_id])
            in_channels = int(fm.features.shape[1])
            patch = int(fm.patch_size)
        model, info = build_maskrcnn(
            detector_backbone=p["detector_backbone"],
            in_channels=in_channels,
            patch_size=patch,
            fpn_channels=p["fpn_channels"],
            representation_size=p["representation_size"],
            mask_head_channels=p["mask_head_channels"],
            anchor_sizes=tuple(p["anchor_sizes"]),
            min_size=p["min_size"],
            max_size=p["max_size"],
            rpn_pre_nms_top_n_train=min(2000, p["rpn_post_nms_top_n_train"]),
            rpn_post_nms_top_n_train=p["rpn_post_nms_top_n_train"],
            rpn_nms_thresh=p["rpn_nms_thresh"],
            rpn_batch_size_per_image=p["rpn_batch_size_per_image"],
            box_batch_size_per_image=p["box_batch_size_per_image"],
            box_positive_fraction=p["box_positive_fraction"],
            score_thresh=p["score_thresh"],
            detections_per_img=p["max_detections"],
            drop_iou=p["droploss_iou"] if p["droploss"] else None,
            weights_path=p["detector_weights"],
        )
        self.model = model.to(self.device)
        self._init_info = info

    def _detector(self, training: bool = False):
        from ._detector import Detector

        budget = int(self.params["feature_cache_mb"]) * 2**20 if training else 0
        return Detector(self.model, self.backbone, cache={}, cache_bytes=budget)

    def _run_key(self, dataset: uisbench.Dataset, pseudo: Mapping[int, Sequence[uisbench.Prediction]], seed: int) -> str:
        # Parameters that change how, not what, is computed stay out: a run killed with 4 loader
        # workers may resume with 8 (batches depend only on seed, round and iteration).
        training = {k: v for k, v in self.params.items() if k not in _NOT_IN_RUN_KEY}
        h = hashlib.sha256()
        h.update(json.dumps(_jsonable(training), sort_keys=True).encode())
        h.update(f"seed={seed}/fp={dataset.fingerprint()}".encode())
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
    ) -> int:
        """Train (resuming from ``workdir``'s checkpoint); returns the training samples processed by
        this call (iterations run x batch size, over every round)."""
        import torch

        p = self.params
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        known = set(dataset.image_ids())
        targets: dict[int, list[uisbench.Prediction]] = {
            int(i): list(v) for i, v in pseudo_masks.items() if int(i) in known
        }
        trainable = [i for i in sorted(targets) if any(uisbench.masks.area(m.segmentation) > 0 for m in targets[i])]
        if not trainable:
            raise uisbench.DataError(
                f"maskrcnn: the pseudo-masks are empty for all {len(known)} training images of dataset "
                f"{type(dataset).__name__} ({len(targets)} images have an entry); nothing to train on. "
                "Check the masker's output (its parameters, or the backbone's features) before the student stage."
            )
        if self.backbone is not None:
            self.backbone.bind(dataset)
        key = self._key = self._run_key(dataset, targets, seed)
        ckpt_path = workdir / CHECKPOINT
        state = _read_checkpoint(ckpt_path, key) if ckpt_path.exists() else None
        torch.manual_seed(seed)
        self._build(dataset, trainable[0])
        if state is not None:
            problem = self._resume_problem(state, workdir) or _restore_rng(state["rng"])
            if problem is not None:
                warnings.warn(f"maskrcnn: {ckpt_path} {problem}; starting afresh.", stacklevel=2)
                state = None
        rounds = 1 + int(p["self_training_rounds"])
        history: dict[str, Any] = {
            "resumed_from": None,
            "rounds": [],
            "train_images": len(trainable),
            "images_without_pseudo_masks": len(known) - len(trainable),
        }
        start_round, start_it = 0, 0
        if state is not None:  # checked by _resume_problem, RNG already restored
            self.model.load_state_dict(state["model"])
            start_round, start_it = state["round"], state["iteration"]
            history = state["history"]
            history["resumed_from"] = {"round": start_round, "iteration": start_it}
        samples = 0
        for r in range(start_round, rounds):
            iters = self._round_iterations(r)
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
            samples += self._train_round(dataset, targets, r, iters, seed, workdir, key, history, resume)
        self._history = history
        return samples

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
        opt, sched, _ = self._optimizer(r, self._round_iterations(r))
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

    def _round_iterations(self, r: int) -> int:
        p = self.params
        if r == 0:
            return int(p["iterations"])
        return int(p["self_training_iterations"] or max(1, p["iterations"] // 2))

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
        merged with the previous targets (CutLER ``get_self_training_ann``); saved atomically."""
        from ._student_data import merge_self_training

        p = self.params
        path = self._targets_file(workdir, r)
        thresholds = list(p["self_training_thresholds"]) or [0.7]
        threshold = float(thresholds[min(r - 1, len(thresholds) - 1)])
        saved = self._read_targets(workdir, r)  # made by this run before it was killed (same key); else remade
        if saved is not None:
            return saved
        ids = sorted(previous)
        preds = self._predict(dataset, ids, max_detections=int(p["self_training_max_detections"]))
        merged = {
            i: merge_self_training(preds.get(i, []), previous[i], score_threshold=threshold, merge_iou=p["self_training_merge_iou"])
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
        uisbench.atomic_write_json(
            path, {"key": self._key, "info": info, "targets": {str(i): [m.to_coco() for m in v] for i, v in merged.items()}}, indent=None
        )
        return merged, info

    def _optimizer(self, r: int, iters: int):
        import torch

        p = self.params
        lr = float(p["lr"]) if r == 0 else float(p["self_training_lr"] or p["lr"] / 2)
        params = [q for q in self.model.parameters() if q.requires_grad]
        if p["optimizer"] == "adamw":
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=p["weight_decay"])
        else:
            opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=p["weight_decay"])
        warmup = max(0, int(p["warmup_iters"]))
        steps = sorted(int(f * iters) for f in p["lr_steps"])
        gamma = float(p["lr_gamma"])

        def factor(it: int) -> float:
            w = 1.0 if it >= warmup or warmup == 0 else 0.001 + (1 - 0.001) * it / warmup
            return w * gamma ** sum(1 for s in steps if it >= s)

        return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor), lr

    def _train_round(self, dataset, targets, r, iters, seed, workdir, key, history, resume) -> int:
        """Train round ``r`` from its start (or ``resume``); returns the samples processed."""
        import torch
        from tqdm import tqdm

        from ._student_data import IterationBatches

        p = self.params
        model = self.model
        droploss = bool(p["droploss"]) if r == 0 else bool(p["self_training_droploss"])
        model.roi_heads.drop_iou = float(p["droploss_iou"]) if droploss else None
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
            batch_size=int(p["batch_size"]),
            seed=seed,
            round_index=r,
            iterations=iters,
            hflip=bool(p["hflip"]),
            copy_paste_rate=float(p["copy_paste_rate"]) if p["copy_paste"] else 0.0,
            copy_paste_scale=tuple(p["copy_paste_scale"]),
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
            "batch_size": int(p["batch_size"]),
        }
        params = [q for q in model.parameters() if q.requires_grad]
        bar = tqdm(total=iters, initial=start, desc=f"maskrcnn round {r}", unit="it", disable=None, file=sys.stderr)
        t0, seen, last_loss, ckpt_s = time.perf_counter(), 0, float("nan"), 0.0
        ckpt_every = max(1, int(p["checkpoint_every"]))
        try:
            for it, batch in zip(range(start, iters), data.loader(start, int(p["num_workers"]), self._cuda), strict=True):
                torch.manual_seed(_iteration_seed(seed, r, it))
                batch = self._to_device(batch)
                with self._autocast():
                    losses = detector.losses(batch, batch["targets"])
                loss = sum(losses.values())
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"maskrcnn: loss is {loss.item()} at round {r} iteration {it} ({ {k: float(v) for k, v in losses.items()} }); "
                        "lower lr or raise warmup_iters."
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if p["grad_clip"] and p["grad_clip"] > 0:
                    torch.nn.utils.clip_grad_norm_(params, float(p["grad_clip"]))
                opt.step()
                sched.step()
                seen += len(batch["ids"])
                last_loss = float(loss.detach())
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.3f}", refresh=False)
                done = it + 1
                if done % ckpt_every == 0 or done == iters:
                    record.update(final_loss=last_loss)
                    t_ckpt = time.perf_counter()
                    self._save(workdir, key, r, done, opt, sched, history, record, done == iters)
                    ckpt_s += time.perf_counter() - t_ckpt
        finally:
            bar.close()
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

    def _save(self, workdir, key, r, done, opt, sched, history, record, final) -> None:
        import torch

        if final:
            history["rounds"][r]["training"] = dict(record)
        state = {
            "format": _FORMAT,
            "key": key,
            "round": r,
            "iteration": done,
            "model": self.model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "rng": _rng_state(),
            "history": history,
        }
        with uisbench.atomic_path(workdir / CHECKPOINT) as tmp:
            torch.save(state, tmp)
        if self.on_checkpoint is not None:
            self.on_checkpoint(r, done)

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
        if self.model is None:
            raise uisbench.ConfigError("maskrcnn: predict() before fit(); train the student first.")
        if self.backbone is not None:
            self.backbone.bind(dataset)
        return self._predict(dataset, list(image_ids), max_detections=int(self.params["max_detections"]))

    def _predict(self, dataset, image_ids: list[int], *, max_detections: int) -> dict[int, list[uisbench.Prediction]]:
        import numpy as np
        import torch

        from ._student_data import PredictImages

        model = self.model
        was_training = model.training
        model.eval()
        heads = model.roi_heads
        saved = heads.detections_per_img
        heads.detections_per_img = max_detections
        detector = self._detector()
        out: dict[int, list[uisbench.Prediction]] = {}
        try:
            loader = PredictImages(dataset, image_ids, self.backbone).loader(
                int(self.params["predict_batch_size"]), int(self.params["num_workers"])
            )
            for batch in loader:
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
        finally:
            heads.detections_per_img = saved
            model.train(was_training)
        return out

    # -- provenance ------------------------------------------------------------------------------

    def provenance(self) -> dict[str, Any]:
        import torch
        import torchvision

        p = self.params
        prov: dict[str, Any] = {
            "student": "maskrcnn",
            "model": "torchvision.models.detection.MaskRCNN (2 classes: background, object)",
            "detector_backbone": p["detector_backbone"],
            "init": self._init_info or None,
            "droploss": {"enabled": bool(p["droploss"]), "iou_threshold": p["droploss_iou"]},
            "copy_paste": {"enabled": bool(p["copy_paste"]), "rate": p["copy_paste_rate"], "scale": p["copy_paste_scale"]},
            "self_training": {
                "rounds": int(p["self_training_rounds"]),
                "thresholds": p["self_training_thresholds"],
                "merge_iou": p["self_training_merge_iou"],
                "droploss": bool(p["self_training_droploss"]),
            },
            "schedule": {
                "iterations": p["iterations"],
                "batch_size": p["batch_size"],
                "optimizer": p["optimizer"],
                "lr": p["lr"],
                "warmup_iters": p["warmup_iters"],
                "lr_steps": p["lr_steps"],
                "lr_gamma": p["lr_gamma"],
                "weight_decay": p["weight_decay"],
                "grad_clip": p["grad_clip"],
            },
            "amp": "bf16" if (self._cuda and p["amp"]) else None,
            "device": self.device,
            "params": _jsonable(p),
            "history": _jsonable(self._history),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
        }
        if self.backbone is not None:
            frame = self.backbone.preprocessing
            prov["frame"] = {"size": frame.size, "resize": frame.resize, "patch_size": frame.patch_size}
            prov["ssl_backbone"] = _jsonable(self.backbone.provenance())
        else:
            prov["frame"] = {"min_size": p["min_size"], "max_size": p["max_size"]}
        return prov


def _factory(backbone: uisbench.Backbone | None = None, **params: Any) -> MaskRCNNStudent:
    return MaskRCNNStudent(backbone=backbone, **params)


@uisbench.hookimpl
def uisbench_students():
    yield uisbench.StudentSpec(
        name="maskrcnn",
        description="Class-agnostic torchvision Mask R-CNN trained on pseudo-masks (CutLER recipe: DropLoss, copy-paste, self-training).",
        factory=_factory,
        params=PARAMS,
        version="1",
        check=check_params,
    )


__all__ = ["MaskRCNNStudent", "PARAMS", "DETECTOR_BACKBONES", "uisbench_students"]
