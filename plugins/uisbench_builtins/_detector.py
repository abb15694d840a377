"""Model pieces of the ``maskrcnn`` student: torchvision's Mask R-CNN with either a frozen SSL
backbone under a ViTDet-style simple feature pyramid, or a ResNet-FPN; DropLoss RoI heads.

Private helper of :mod:`uisbench_builtins.maskrcnn`. It imports torch at module level, so it is only
ever imported *inside* that plugin's functions (``platform --help`` stays torch-free).

Geometry (``frozen-ssl``): the detector works in the backbone's input frame. Every image goes through
``backbone.preprocess`` (``S x S``; with ``resize: pad`` the content fills the top-left ``h x w``),
targets are resized into that frame, the pyramid levels have sizes ``S/4, S/8, S/16, S/32`` (exact
when ``S`` is a multiple of 32) and predictions are mapped back by torchvision's own
``GeneralizedRCNNTransform.postprocess`` from the content size ``(h, w)`` to the original
``(height, width)``: boxes are scaled per axis and masks pasted at full image resolution.
With ``resnet*-fpn`` torchvision's transform does the usual resizing (``min_size``/``max_size``).

Randomness: the anchors and proposals sampled for the RPN and RoI losses are drawn per image, from a
generator seeded by the sample's own seed (:class:`SeededSampler`), so they do not depend on which
other images share the batch or the process: a torchrun rank draws for its share what one process
draws for the same images. :data:`LOSS_NORMALISERS` says over what each loss is a mean (the student
backpropagates each image's share of the global batch's losses: ``maskrcnn.MaskRCNNStudent._step``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss, maskrcnn_loss
from torchvision.ops import box_iou

if TYPE_CHECKING:  # the student imports this module: no import cycle at run time
    from .maskrcnn import MaskRCNNConfig

__all__ = [
    "SimpleFeaturePyramid",
    "SeededSampler",
    "DropLossRoIHeads",
    "LOSS_NORMALISERS",
    "classification_loss",
    "build_maskrcnn",
    "Detector",
]

PYRAMID_STRIDES = (4, 8, 16, 32)


def _groups(channels: int) -> int:
    for g in (32, 16, 8, 4, 2):
        if channels % g == 0:
            return g
    return 1


def _power_of_two(x: float) -> bool:
    return x > 0 and float(x).is_integer() and (int(x) & (int(x) - 1)) == 0


class SimpleFeaturePyramid(nn.Module):
    """ViTDet-style simple feature pyramid (Li et al. 2022) over one stride-``patch_size`` map.

    Per level: deconvolutions (upsampling by powers of two), identity or max-pooling, then
    ``1x1`` and ``3x3`` convolutions with GroupNorm to ``out_channels``. A patch size that is not a
    power of two (14) is bridged by bilinear resampling to the exact level size. Input channels are
    layer-normalised first, so features of any scale (keys, tokens, pixels) train alike.
    Output: ``OrderedDict`` ``"0".."3"`` (strides 4..32) and ``"pool"`` (stride 64), what torchvision's
    RPN and ``MultiScaleRoIAlign`` expect of a ``BackboneWithFPN``.
    """

    def __init__(self, in_channels: int, patch_size: int, out_channels: int = 256, strides=PYRAMID_STRIDES) -> None:
        super().__init__()
        self.patch_size = int(patch_size)
        self.strides = tuple(strides)
        self.out_channels = int(out_channels)
        self.input_norm = nn.LayerNorm(in_channels)
        self.resample = nn.ModuleList()
        self.heads = nn.ModuleList()
        for stride in self.strides:
            factor = self.patch_size / stride
            layers: list[nn.Module] = []
            ch = in_channels
            if factor >= 2 and _power_of_two(factor):
                n = int(math.log2(factor))
                for i in range(n):
                    out = max(ch // 2, 16)
                    layers.append(nn.ConvTranspose2d(ch, out, 2, stride=2))
                    if i < n - 1:
                        layers += [nn.GroupNorm(_groups(out), out), nn.GELU()]
                    ch = out
            elif factor < 1 and _power_of_two(1 / factor):
                layers.append(nn.MaxPool2d(int(1 / factor)))
            self.resample.append(nn.Sequential(*layers))
            c = self.out_channels
            self.heads.append(
                nn.Sequential(
                    nn.Conv2d(ch, c, 1, bias=False),
                    nn.GroupNorm(_groups(c), c),
                    nn.Conv2d(c, c, 3, padding=1, bias=False),
                    nn.GroupNorm(_groups(c), c),
                )
            )

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        x = self.input_norm(x.float().permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        frame_h, frame_w = x.shape[-2] * self.patch_size, x.shape[-1] * self.patch_size
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for i, (stride, resample, head) in enumerate(zip(self.strides, self.resample, self.heads, strict=True)):
            y = resample(x)
            size = (max(1, round(frame_h / stride)), max(1, round(frame_w / stride)))
            if tuple(y.shape[-2:]) != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            out[str(i)] = head(y)
        out["pool"] = F.max_pool2d(out[str(len(self.strides) - 1)], 1, 2, 0)
        return out


class SeededSampler(BalancedPositiveNegativeSampler):
    """torchvision's balanced positive/negative sampler, drawing image ``i``'s sample from its own CPU
    generator seeded with ``seeds[i]`` (and ``salt``, one per sampler), so an image's draw does not
    depend on the images before it in the batch, nor on the device. ``seeds=None``: torchvision's
    draw from the global generator. ``counts`` holds ``(sampled, positives)`` of the last seeded call:
    the denominators of the losses that average over the sample."""

    def __init__(self, batch_size_per_image: int, positive_fraction: float, salt: int) -> None:
        super().__init__(batch_size_per_image, positive_fraction)
        self.salt = int(salt)
        self.seeds: list[int] | None = None
        self.counts: tuple[int, int] | None = None

    @classmethod
    def replacing(cls, sampler: BalancedPositiveNegativeSampler, salt: int) -> SeededSampler:
        return cls(sampler.batch_size_per_image, sampler.positive_fraction, salt)

    def __call__(self, matched_idxs: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        seeds = self.seeds
        if seeds is None or len(seeds) != len(matched_idxs):
            self.counts = None
            return super().__call__(matched_idxs)
        pos_idx, neg_idx = [], []
        sampled = positives = 0
        for matched, seed in zip(matched_idxs, seeds, strict=True):
            positive = torch.where(matched >= 1)[0]
            negative = torch.where(matched == 0)[0]
            num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)
            gen = torch.Generator().manual_seed((int(seed) + self.salt * 0x9E3779B97F4A7C15) % (1 << 63))
            perm1 = torch.randperm(positive.numel(), generator=gen)[:num_pos].to(positive.device)
            perm2 = torch.randperm(negative.numel(), generator=gen)[:num_neg].to(negative.device)
            pos_mask = torch.zeros_like(matched, dtype=torch.uint8)
            neg_mask = torch.zeros_like(matched, dtype=torch.uint8)
            pos_mask[positive[perm1]] = 1
            neg_mask[negative[perm2]] = 1
            pos_idx.append(pos_mask)
            neg_idx.append(neg_mask)
            sampled += num_pos + num_neg
            positives += num_pos
        self.counts = (sampled, positives)
        return pos_idx, neg_idx


#: Over what each training loss is a mean, across the images of the batch: the anchors the RPN
#: sampled, the proposals the RoI heads sampled, or the positive proposals among them (the mask
#: loss). A rank of a distributed run weights its loss by its share of that count, so that the
#: averaged gradient is the one of the whole global batch in one process.
LOSS_NORMALISERS = {
    "loss_objectness": "anchors",
    "loss_rpn_box_reg": "anchors",
    "loss_classifier": "proposals",
    "loss_box_reg": "proposals",
    "loss_mask": "positives",
}


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy of the box classifier; ``weights`` (per sampled proposal) as in CutLER's
    ``FastRCNNOutputLayers.losses``: ``mean(weights * CE)``. ``None`` is torchvision's plain mean."""
    ce = F.cross_entropy(logits.float(), labels, reduction="none")
    if weights is None:
        return ce.mean()
    return (weights.to(ce.dtype) * ce).mean()


class DropLossRoIHeads(RoIHeads):
    """torchvision ``RoIHeads`` whose box-classification loss ignores proposals far from every
    pseudo-mask (CutLER's DropLoss).

    A sampled proposal's box is regressed (deltas applied, object class); when its best IoU with any
    target box of its image is ``<= drop_iou`` (0.01) its classification loss gets weight 0, so
    objects missing from the pseudo-masks are not taught as background. Box-regression and mask
    losses are torchvision's. ``drop_iou=None`` turns DropLoss off (then identical to ``RoIHeads``).
    Inference is the parent's.
    """

    def __init__(self, *args: Any, drop_iou: float | None = 0.01, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.drop_iou = drop_iou

    @classmethod
    def from_roi_heads(cls, heads: RoIHeads, drop_iou: float | None) -> DropLossRoIHeads:
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.__dict__.update(heads.__dict__)
        new.drop_iou = drop_iou
        return new

    @torch.no_grad()
    def droploss_weights(self, box_regression: torch.Tensor, proposals: list[torch.Tensor], targets) -> torch.Tensor:
        """1 for proposals whose regressed box overlaps some target box by IoU > ``drop_iou``, else 0."""
        pred = self.box_coder.decode(box_regression.float(), [p.float() for p in proposals])
        pred = pred[:, -1]  # the object class (two classes: background, object)
        weights = []
        for boxes, target in zip(pred.split([len(p) for p in proposals]), targets, strict=True):
            gt = target["boxes"].float()
            if gt.numel() == 0 or boxes.numel() == 0:
                weights.append(boxes.new_zeros(len(boxes)))
                continue
            best = box_iou(boxes, gt).max(dim=1).values
            weights.append((best > self.drop_iou).float())
        return torch.cat(weights)

    def forward(self, features, proposals, image_shapes, targets=None):  # type: ignore[override]
        if not self.training or self.drop_iou is None:
            return super().forward(features, proposals, image_shapes, targets)
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        _, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
        weights = self.droploss_weights(box_regression.detach(), proposals, targets)
        losses = {
            "loss_classifier": classification_loss(class_logits, torch.cat(labels), weights),
            "loss_box_reg": loss_box_reg,
        }
        mask_proposals, pos_matched = [], []
        for props, lab, matched in zip(proposals, labels, matched_idxs, strict=True):
            pos = torch.where(lab > 0)[0]
            mask_proposals.append(props[pos])
            pos_matched.append(matched[pos])
        mask_logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, mask_proposals, image_shapes)))
        losses["loss_mask"] = maskrcnn_loss(
            mask_logits, mask_proposals, [t["masks"] for t in targets], [t["labels"] for t in targets], pos_matched
        )
        return [], losses


def _resnet_fpn(name: str, weights_path: str | None) -> tuple[nn.Module, dict[str, Any]]:
    """torchvision ResNet-FPN, every layer trainable (CutLER ``FREEZE_AT 0``), BatchNorm trainable.

    ``weights_path``: a local file holding a ResNet state dict (torchvision or DINO layout, optionally
    under ``state_dict``/``model``/``teacher``, ``module.``/``backbone.`` prefixes) or a full
    torchvision Mask R-CNN state dict. ``None``: random init, stated in provenance.
    """
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    import uisbench

    backbone = resnet_fpn_backbone(backbone_name=name, weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=5)
    info: dict[str, Any] = {"init": "random", "weights": None}
    if weights_path is None:
        return backbone, info
    from pathlib import Path

    path = Path(weights_path).expanduser()
    problem = uisbench.io.regular_file_problem(path)  # stat only: a FIFO or a device is never opened
    if problem:
        raise uisbench.ConfigError(
            f"detector_weights {str(path)!r} {'does not exist' if problem == 'not found' else problem}; give the path "
            f"of a local ResNet ({name}) state dict "
            "(e.g. DINO ResNet-50) or leave detector_weights null for a random init."
        )
    state = uisbench.weights.read_checkpoint(path, "detector_weights")  # weights-only: a shared file must not run code
    for key in ("state_dict", "model", "teacher"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise uisbench.DataError(
            f"detector_weights {str(path)!r}: holds a {type(state).__name__}, not a state dict; give a ResNet state dict."
        )
    body_state = {}
    for k, v in state.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):  # e.g. an "epoch" counter beside the weights
            continue
        for prefix in ("module.", "backbone.body.", "backbone.", "body."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        body_state[k] = v
    try:
        result = backbone.body.load_state_dict(body_state, strict=False)
    except RuntimeError as err:  # shapes that do not fit (another ResNet depth or width)
        raise uisbench.ConfigError(
            f"detector_weights {str(path)!r}: does not fit a torchvision {name} ({str(err).splitlines()[-1].strip()}); "
            "give weights of that architecture or change detector_backbone."
        ) from err
    loaded = len(backbone.body.state_dict()) - len(result.missing_keys)
    if loaded == 0:
        raise uisbench.ConfigError(
            f"detector_weights {str(path)!r}: no key matches a torchvision {name} (e.g. 'layer1.0.conv1.weight'); "
            "give a ResNet state dict."
        )
    info = {"init": "file", "weights": str(path), "weights_sha256": uisbench.io.file_sha256(path), "loaded_tensors": loaded,
            "missing_keys": len(result.missing_keys)}
    return backbone, info


def build_maskrcnn(
    config: MaskRCNNConfig, *, in_channels: int | None = None, patch_size: int | None = None
) -> tuple[MaskRCNN, dict[str, Any]]:
    """A two-class torchvision ``MaskRCNN`` with DropLoss RoI heads, as ``config`` (the student's
    :class:`~uisbench_builtins.maskrcnn.MaskRCNNConfig`) describes it; returns ``(model, init_info)``.
    ``frozen-ssl`` needs the frozen backbone's channels and patch size."""
    c = config
    if c.detector_backbone == "frozen-ssl":
        assert in_channels is not None and patch_size is not None
        backbone: nn.Module = SimpleFeaturePyramid(in_channels, patch_size, c.fpn_channels)
        info: dict[str, Any] = {"init": "random (pyramid and heads); backbone frozen"}
        image_mean, image_std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]  # unused: pixels come normalised
    else:
        backbone, info = _resnet_fpn(c.detector_backbone.split("-")[0], c.detector_weights)
        if c.fpn_channels != backbone.out_channels:
            info["fpn_channels"] = backbone.out_channels
        image_mean, image_std = None, None
    out = backbone.out_channels
    anchors = AnchorGenerator(sizes=tuple((int(s),) for s in c.anchor_sizes), aspect_ratios=((0.5, 1.0, 2.0),) * len(c.anchor_sizes))
    model = MaskRCNN(
        backbone,
        num_classes=None,
        min_size=c.min_size,
        max_size=c.max_size,
        image_mean=image_mean,
        image_std=image_std,
        rpn_anchor_generator=anchors,
        # per pyramid level, torchvision's 2000 (detectron2's too); the post-NMS count is per image
        rpn_pre_nms_top_n_train=min(2000, c.rpn_post_nms_top_n_train),
        rpn_post_nms_top_n_train=c.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=1000,
        rpn_post_nms_top_n_test=1000,
        rpn_nms_thresh=c.rpn_nms_thresh,
        rpn_batch_size_per_image=c.rpn_batch_size_per_image,
        box_head=TwoMLPHead(out * 7 * 7, c.representation_size),
        box_predictor=FastRCNNPredictor(c.representation_size, 2),
        box_score_thresh=c.score_thresh,
        box_detections_per_img=c.max_detections,
        box_batch_size_per_image=c.box_batch_size_per_image,
        box_positive_fraction=c.box_positive_fraction,
        mask_head=MaskRCNNHeads(out, [c.mask_head_channels] * 4, 1),
        mask_predictor=MaskRCNNPredictor(c.mask_head_channels, c.mask_head_channels, 2),
    )
    model.roi_heads = DropLossRoIHeads.from_roi_heads(model.roi_heads, c.droploss_iou if c.droploss else None)
    model.rpn.fg_bg_sampler = SeededSampler.replacing(model.rpn.fg_bg_sampler, salt=0)
    model.roi_heads.fg_bg_sampler = SeededSampler.replacing(model.roi_heads.fg_bg_sampler, salt=1)
    return model, info


class Detector:
    """Runs a torchvision ``MaskRCNN`` on batches in a given frame (see the module docstring).

    ``ssl`` is the frozen ``uisbench.Backbone`` (``frozen-ssl``) or ``None`` (ResNet-FPN: torchvision's
    transform resizes and normalises raw ``[0, 1]`` images).
    """

    def __init__(self, model: MaskRCNN, ssl: Any | None, cache: dict | None = None, cache_bytes: int = 0) -> None:
        self.model = model
        self.ssl = ssl
        self.cache = cache if cache is not None else {}
        self.cache_bytes = cache_bytes
        self._cached = 0

    @torch.no_grad()
    def ssl_features(self, pixels: torch.Tensor, ids: list[int], keys: list[Any] | None = None) -> torch.Tensor:
        """Frozen backbone features; with a cache budget, those of unaltered training images
        (key ``(id, flipped)``) are computed once and reused."""
        keys = keys or [None] * len(ids)
        if not self.cache_bytes or all(k is None for k in keys):
            return self.ssl.extract(pixels, ids).features
        missing = [i for i, k in enumerate(keys) if k is None or k not in self.cache]
        fresh = self.ssl.extract(pixels[missing], [ids[i] for i in missing]).features if missing else None
        out: list[torch.Tensor | None] = [None] * len(ids)
        for j, i in enumerate(missing):
            out[i] = fresh[j]
            size = fresh[j].numel() * fresh[j].element_size()
            if keys[i] is not None and self._cached + size <= self.cache_bytes:
                self.cache[keys[i]] = fresh[j].clone()
                self._cached += size
        for i, k in enumerate(keys):
            if out[i] is None:
                out[i] = self.cache[k]
        return torch.stack(out)  # type: ignore[arg-type]

    def _features(self, batch: dict[str, Any], targets):
        model = self.model
        if self.ssl is not None:
            pixels = batch["pixels"]
            feats = self.ssl_features(pixels, batch["ids"], batch.get("cache_keys") if targets is not None else None)
            images = ImageList(pixels, [tuple(s) for s in batch["sizes"]])
            # a backbone that extracts under torch.inference_mode (as the contract asks) may return
            # inference tensors, which autograd refuses to save for the pyramid's backward: copy them
            feats = feats.clone() if feats.is_inference() else feats.detach()
            return images, model.backbone(feats), targets
        images, targets = model.transform(list(batch["images"]), targets)
        return images, model.backbone(images.tensors), targets

    def _samplers(self) -> list[SeededSampler]:
        found = (getattr(self.model.rpn, "fg_bg_sampler", None), getattr(self.model.roi_heads, "fg_bg_sampler", None))
        return [s for s in found if isinstance(s, SeededSampler)]

    def losses(self, batch: dict[str, Any], targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The batch's training losses; the samplers draw with the batch's per-sample ``seeds``."""
        samplers = self._samplers()
        for sampler in samplers:
            sampler.seeds = batch.get("seeds")
        try:
            images, features, targets = self._features(batch, targets)
            proposals, rpn_losses = self.model.rpn(images, features, targets)
            _, roi_losses = self.model.roi_heads(features, proposals, images.image_sizes, targets)
        finally:
            for sampler in samplers:
                sampler.seeds = None
        return {**rpn_losses, **roi_losses}

    def loss_counts(self, images: int) -> dict[str, int] | None:
        """What the last :meth:`losses` averaged over (see :data:`LOSS_NORMALISERS`), or ``None`` if the
        samplers did not count (no seeds)."""
        rpn, roi = (getattr(self.model.rpn, "fg_bg_sampler", None), getattr(self.model.roi_heads, "fg_bg_sampler", None))
        if not (isinstance(rpn, SeededSampler) and isinstance(roi, SeededSampler) and rpn.counts and roi.counts):
            return None
        return {"anchors": rpn.counts[0], "proposals": roi.counts[0], "positives": roi.counts[1], "images": images}

    @torch.no_grad()
    def detect(self, batch: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        """Detections with boxes (x1, y1, x2, y2) and mask probabilities at original image size."""
        images, features, _ = self._features(batch, None)
        proposals, _ = self.model.rpn(images, features, None)
        detections, _ = self.model.roi_heads(features, proposals, images.image_sizes, None)
        original = [tuple(s) for s in batch["original_sizes"]]
        detections = [{k: v.float() if v.is_floating_point() else v for k, v in d.items()} for d in detections]
        return self.model.transform.postprocess(detections, images.image_sizes, original)

