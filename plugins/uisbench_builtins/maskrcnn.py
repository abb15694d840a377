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

Settings: :class:`MaskRCNNConfig`, one typed, validated field per parameter; :data:`PARAMS` is made
from its fields.

This module holds the hook, ``fit`` (setup, resume point, rounds), ``predict`` and the provenance; its
private helpers hold the rest: ``_maskrcnn_config`` (the settings), ``_maskrcnn_checkpoint`` (checkpoint,
RNG states, run key, self-training targets, resume checks), ``_maskrcnn_training`` (the training loop),
``_detector`` (the model) and ``_student_data`` (batches, ranks).

Under ``torchrun`` the student is :attr:`~uisbench.Student.distributed`: every rank trains its share
of each global batch (``batch_size`` images, split as evenly as possible), each loss weighted by
its share of what it averages over, and the ranks sum the gradients (in float64) before every
optimiser step, so the gradient is the one-process gradient of the same images; every random draw
(image order, flips, copy-paste, the sampled anchors and proposals, torch's global generator) is
seeded per sample. On CPU each image is forwarded and backpropagated alone, so the ``frozen-ssl``
detectors train the same weights on any number of ranks, up to a rare last-bit rounding of the
gradient sum (``_maskrcnn_training.Training.step``); so does a checkpoint, which any number of ranks
resumes. Rank 0 writes the checkpoints; every rank reads them (a shared work directory).
Prediction (and self-training targets) is sharded by chunks of ``predict_batch_size`` images and
gathered. Differences from one process: with the ResNet detectors (BatchNorm) and on CUDA a rank's
share is one batch, so floating-point summation order; on CPU the ResNet detectors' BatchNorm
normalises over each rank's share (SyncBatchNorm needs CUDA; on CUDA it is used), and with images
of different sizes torchvision pads each rank's share to its own largest image;
``feature_cache_mb`` is a budget per rank.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import uisbench

from ._maskrcnn_checkpoint import (
    CHECKPOINT,
    agree_on_resume,
    jsonable,
    load_targets,
    read_checkpoint,
    read_init_state,
    read_targets,
    restore_rng,
    resume_problem,
    run_key,
    write_targets,
)
from ._maskrcnn_config import DETECTOR_BACKBONES, PARAMS, MaskRCNNConfig, check_params
from ._maskrcnn_training import Training, autocast, build_optimizer, to_device


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
        number of ranks (see :meth:`Training.step`). A rank's share is one batch where that buys nothing:
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

    def _detector(self):
        """The detector at prediction time (a training round makes its own: :meth:`Training.detector`)."""
        from ._detector import Detector

        return Detector(self.model, self.backbone, cache={}, cache_bytes=0)

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
            init_state = read_init_state(init_from)
            init_key = None if init_state is None else str(init_state.get("key"))
            key = self._key = run_key(c, self.backbone, dataset, targets, seed, init_key)
            state = read_checkpoint(ckpt_path, key, warn=ranks.main) if ckpt_path.exists() else None
            torch.manual_seed(seed)
            self._build(dataset, trainable[0])
            if init_state is not None and state is None:  # a resumed fine-tuning has its own weights
                self.model.load_state_dict(init_state["model"], strict=True)
            if state is not None:
                problem = (resume_problem(state, self.model, lambda r: build_optimizer(self.model, c, r), workdir, key)
                           or restore_rng(state["rng"], self.device))
                if problem is not None:
                    if ranks.main:
                        warnings.warn(f"maskrcnn: {ckpt_path} {problem}; starting afresh.", stacklevel=2)
                    state = None
        except Exception as err:
            if not ranks.distributed:
                raise
            failure = err
        agree_on_resume(state, ckpt_path, ranks, failure)
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
        if state is not None:  # checked by resume_problem, RNG already restored
            self.model.load_state_dict(state["model"])
            start_round, start_it = state["round"], state["iteration"]
            history = state["history"]
            history["resumed_from"] = {"round": start_round, "iteration": start_it}
        training = self._training(dataset, workdir, key, seed, ranks, history)
        samples = 0
        for r in range(start_round, rounds):
            resume = state if (state is not None and r == start_round) else None
            if r > 0 and resume is not None:  # this round's targets were made before its checkpoint
                targets = load_targets(workdir, r, key)
            elif r > 0:
                targets, info = self._self_training_targets(dataset, targets, r, workdir)
                history["rounds"].append(info)
            elif not history["rounds"]:
                history["rounds"].append({"round": 0, "targets": sum(len(targets[i]) for i in trainable)})
            if resume is not None and int(resume["iteration"]) >= c.round_iterations(r):
                continue
            samples += training.run_round(targets, r, resume)
        self._history = history
        return samples

    def _self_training_targets(self, dataset, previous, r: int, workdir: Path):
        """Round ``r``'s targets: the current model's confident predictions on the training images
        merged with the previous targets (CutLER ``get_self_training_ann``); saved atomically by rank 0.
        Under torchrun each rank predicts its share of the images and every rank gets all targets."""
        from ._student_data import merge_self_training

        c = self.config
        ranks = self._ranks()
        threshold = c.self_training_threshold(r)
        # made by this run before it was killed (same key); else remade. Rank 0 decides for every rank.
        saved = ranks.broadcast(read_targets(workdir, r, self._key) if ranks.main else None)
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
            write_targets(workdir, r, self._key, info, merged)
        return merged, info

    def _training(self, dataset: uisbench.Dataset, workdir: Path, key: str, seed: int, ranks, history: dict[str, Any]
                  ) -> Training:
        """The training loop of a fit over this student's model (built and distributed)."""
        return Training(self.model, self.backbone, self.config, self.device, self._per_image, dataset, workdir, key, seed,
                        ranks, history, on_iteration=self.on_iteration, on_checkpoint=self.on_checkpoint)

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
                batch = to_device(batch, self.device)
                with autocast(self.device, c.amp):
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
            "distributed": jsonable(self._distributed_info),
            "params": jsonable(c.as_params()),
            "history": jsonable(self._history),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
        }
        if self.backbone is not None:
            frame = self.backbone.preprocessing
            prov["frame"] = {"size": frame.size, "resize": frame.resize, "patch_size": frame.patch_size}
            prov["ssl_backbone"] = jsonable(self.backbone.provenance())
        else:
            prov["frame"] = {"min_size": c.min_size, "max_size": c.max_size}
        return prov


@uisbench.hookimpl
def uisbench_students():
    description = "Class-agnostic torchvision Mask R-CNN trained on pseudo-masks (CutLER recipe: DropLoss, copy-paste, self-training)."
    yield uisbench.StudentSpec(name="maskrcnn", description=description, factory=MaskRCNNStudent, params=PARAMS, version="1",
                               check=check_params)


__all__ = ["MaskRCNNStudent", "MaskRCNNConfig", "PARAMS", "DETECTOR_BACKBONES", "uisbench_students"]
