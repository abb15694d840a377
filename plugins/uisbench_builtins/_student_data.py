"""Training data of the ``maskrcnn`` student: pseudo-masks to targets, copy-paste, flips, the
backbone frame, deterministic per-iteration batches, the self-training merge, and the ranks of a
``torch.distributed`` run.

Private helper of :mod:`uisbench_builtins.maskrcnn`; numpy, torch and PIL are imported inside functions.
Every random choice for sample ``k`` of iteration ``it`` of round ``r`` comes from
``numpy.random.default_rng((seed, r, it, k))``, and the sample carries :func:`sample_seed` for the
detector's proposal samplers (and torch's global generator), so a sample depends only on those
numbers: a resumed run sees the same batches as an uninterrupted one, whatever the number of loader
workers, and under torchrun each rank builds its share of the global batch (:meth:`Ranks.share`)
exactly as one process would; :func:`split` cuts a batch into one-image batches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import uisbench

if TYPE_CHECKING:
    import numpy as np


__all__ = [
    "Ranks",
    "derive_seed",
    "sample_seed",
    "split",
    "instance_masks",
    "copy_paste",
    "merge_self_training",
    "IterationBatches",
    "PredictImages",
]


def instance_masks(preds: Sequence[uisbench.Prediction], height: int, width: int) -> np.ndarray:
    """Decode predictions to a ``(N, height, width)`` uint8 stack (resized if an RLE has another size),
    dropping empty masks."""
    import numpy as np

    out = []
    for p in preds:
        m = uisbench.masks.decode(p.segmentation)
        if m.shape != (height, width):
            m = uisbench.masks.resize_mask(m, height, width)
        if m.any():
            out.append(m.astype(np.uint8))
    return np.stack(out) if out else np.zeros((0, height, width), np.uint8)


def copy_paste(
    image: np.ndarray,
    masks: np.ndarray,
    src_image: np.ndarray,
    src_masks: np.ndarray,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.3, 1.0),
    min_area: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """Paste a random number of ``src`` instances into ``image`` (CutLER's copy-paste augmentation).

    Each pasted instance is first brought to the target image's scale, then rescaled by a factor drawn
    from ``scale`` and placed at a random position; it occludes the instances below it, and instances
    left with fewer than ``min_area`` pixels are dropped.
    """
    import numpy as np
    from PIL import Image

    if len(src_masks) == 0:
        return image, masks
    image = image.copy()
    masks = [m.copy() for m in masks]
    height, width = image.shape[:2]
    base = min(height / src_image.shape[0], width / src_image.shape[1])
    count = int(rng.integers(1, len(src_masks) + 1))
    for idx in rng.choice(len(src_masks), size=count, replace=False):
        m = src_masks[idx]
        ys, xs = np.nonzero(m)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        s = base * float(rng.uniform(*scale))
        ph, pw = min(height, max(2, round((y1 - y0) * s))), min(width, max(2, round((x1 - x0) * s)))
        patch = np.asarray(Image.fromarray(src_image[y0:y1, x0:x1]).resize((pw, ph), Image.BILINEAR))
        pmask = uisbench.masks.resize_mask(m[y0:y1, x0:x1], ph, pw).astype(bool)
        if not pmask.any():
            continue
        ty, tx = int(rng.integers(0, height - ph + 1)), int(rng.integers(0, width - pw + 1))
        full = np.zeros((height, width), bool)
        full[ty : ty + ph, tx : tx + pw] = pmask
        image[full] = patch[pmask]
        for old in masks:
            old[full] = 0
        masks.append(full.astype(np.uint8))
    masks = [m for m in masks if int(m.sum()) >= min_area]
    stacked = np.stack(masks) if masks else np.zeros((0, height, width), np.uint8)
    return image, stacked


def _boxes(masks):
    """``(N, 4)`` float boxes ``x1, y1, x2, y2`` of binary masks, COCO convention (``x2 = last + 1``)."""
    import torch
    from torchvision.ops import masks_to_boxes

    if masks.shape[0] == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    boxes = masks_to_boxes(masks.bool()).float()
    boxes[:, 2:] += 1
    return boxes


def _frame_sample(image: np.ndarray, masks: np.ndarray | None, backbone: Any | None) -> dict[str, Any]:
    """One image (and its masks) in the detector's frame; ``masks=None`` at prediction time."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    height, width = image.shape[:2]
    sample: dict[str, Any] = {"original_size": (height, width)}
    if backbone is None:
        sample["image"] = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
        sample["size"] = (height, width)
        if masks is not None:
            t = torch.from_numpy(masks)
            sample["masks"], sample["boxes"] = t, _boxes(t)
        return sample
    prep = backbone.preprocessing
    sample["pixels"] = backbone.preprocess(image)
    h, w = prep.content_size(height, width)
    sample["size"] = (h, w)
    if masks is not None:
        frame = torch.zeros((masks.shape[0], prep.size, prep.size), dtype=torch.uint8)
        if masks.shape[0]:
            small = F.interpolate(torch.from_numpy(masks)[:, None].float(), size=(h, w), mode="bilinear", align_corners=False)
            frame[:, :h, :w] = (small[:, 0] >= 0.5).to(torch.uint8)
            frame = frame[frame.flatten(1).bool().any(dim=1)]
        sample["masks"], sample["boxes"] = frame, _boxes(frame)
    return sample


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Samples -> batch dict for :class:`_detector.Detector` plus targets."""
    import torch

    batch: dict[str, Any] = {
        "ids": [s["id"] for s in samples],
        "sizes": [s["size"] for s in samples],
        "original_sizes": [s["original_size"] for s in samples],
        "cache_keys": [s.get("cache_key") for s in samples],
    }
    if samples and samples[0].get("seed") is not None:
        batch["seeds"] = [s["seed"] for s in samples]
    if "pixels" in samples[0]:
        batch["pixels"] = torch.stack([s["pixels"] for s in samples])
    else:
        batch["images"] = [s["image"] for s in samples]
    if "masks" in samples[0]:
        batch["targets"] = [
            {"boxes": s["boxes"], "masks": s["masks"], "labels": torch.ones(len(s["boxes"]), dtype=torch.int64)}
            for s in samples
        ]
    return batch


def split(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """A collated batch (:func:`collate`) as one batch per image, in order: each holds exactly what
    :func:`collate` makes of that image's sample alone (the same tensors, sliced, not copied)."""
    keys = [k for k in ("ids", "sizes", "original_sizes", "cache_keys", "seeds", "pixels", "images", "targets") if k in batch]
    return [{k: batch[k][i : i + 1] for k in keys} for i in range(len(batch["ids"]))]


def _identity(x):
    return x


def derive_seed(*parts: Any) -> int:
    """The student's one seed derivation: a 63-bit seed that is a function of ``parts`` alone (their
    ``str``, joined with ``/``), the same on every rank, platform and Python (sha256, not ``hash()``,
    which is salted per process). Non-negative and below 2**63: accepted by torch and numpy alike."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def sample_seed(seed: int, round_index: int, it: int, k: int) -> int:
    """Seed of the detector's random draws (sampled anchors and proposals) for sample ``k`` of
    iteration ``it``: a function of those numbers alone, whichever rank trains the sample."""
    return derive_seed(seed, round_index, it, k, "sampler")


class IterationBatches:
    """Map-style dataset: item ``it`` is the collated training batch of iteration ``it`` of a round.

    Images with at least one pseudo-mask are visited epoch by epoch in a seeded permutation; each
    sample may get copy-paste (instances of another training image) and a horizontal flip.
    ``positions`` (default: all ``batch_size``) are the places ``k`` of the global batch that this
    process builds: a torchrun rank's share (:meth:`Ranks.share`).
    """

    def __init__(
        self,
        dataset: uisbench.Dataset,
        targets: Mapping[int, Sequence[uisbench.Prediction]],
        ids: Sequence[int],
        *,
        backbone: Any | None,
        batch_size: int,
        seed: int,
        round_index: int,
        iterations: int,
        hflip: bool,
        copy_paste_rate: float,
        copy_paste_scale: tuple[float, float],
        positions: Sequence[int] | None = None,
    ) -> None:
        self.dataset = dataset
        self.targets = targets
        self.ids = list(ids)
        self.backbone = backbone
        self.batch_size = batch_size
        self.seed = seed
        self.round_index = round_index
        self.iterations = iterations
        self.hflip = hflip
        self.copy_paste_rate = copy_paste_rate
        self.copy_paste_scale = copy_paste_scale
        self.positions = list(range(batch_size) if positions is None else positions)

    def __len__(self) -> int:
        return self.iterations

    @lru_cache(maxsize=4)  # noqa: B019 - a few permutations per loader worker
    def _permutation(self, epoch: int):
        import numpy as np

        return np.random.default_rng((self.seed, self.round_index, 1_000_003, epoch)).permutation(len(self.ids))

    def image_id(self, position: int) -> int:
        n = len(self.ids)
        return self.ids[int(self._permutation(position // n)[position % n])]

    def _load(self, image_id: int):
        image = self.dataset.load_image(image_id)
        masks = instance_masks(self.targets.get(image_id, ()), image.shape[0], image.shape[1])
        return image, masks

    def sample(self, it: int, k: int) -> dict[str, Any]:
        import numpy as np

        rng = np.random.default_rng((self.seed, self.round_index, it, k))
        image_id = self.image_id(it * self.batch_size + k)
        image, masks = self._load(image_id)
        pasted = flipped = False
        if self.copy_paste_rate > 0 and len(self.ids) > 1 and rng.random() < self.copy_paste_rate:
            pasted = True
            other = self.ids[int(rng.integers(len(self.ids) - 1))]
            if other == image_id:
                other = self.ids[-1]
            src_image, src_masks = self._load(other)
            image, masks = copy_paste(image, masks, src_image, src_masks, rng, self.copy_paste_scale)
        if self.hflip and rng.random() < 0.5:
            flipped = True
            image = np.ascontiguousarray(image[:, ::-1])
            masks = np.ascontiguousarray(masks[:, :, ::-1])
        sample = _frame_sample(image, masks, self.backbone)
        sample["id"] = image_id
        sample["cache_key"] = None if pasted else (image_id, flipped)  # features of an unaltered image
        sample["seed"] = sample_seed(self.seed, self.round_index, it, k)
        return sample

    def __getitem__(self, it: int) -> dict[str, Any]:
        return collate([self.sample(it, k) for k in self.positions])

    def loader(self, start: int, num_workers: int, pin_memory: bool):
        """Batches ``start .. iterations-1`` in order (a torch DataLoader when ``num_workers > 0``)."""
        if num_workers <= 0:
            return (self[it] for it in range(start, self.iterations))
        from torch.utils.data import DataLoader

        return iter(
            DataLoader(
                self,  # type: ignore[arg-type]
                batch_size=None,
                sampler=range(start, self.iterations),
                num_workers=num_workers,
                collate_fn=_identity,
                pin_memory=pin_memory,
                persistent_workers=False,
                prefetch_factor=4,
            )
        )


class PredictImages:
    """Map-style dataset of images to predict on, in the detector's frame."""

    def __init__(self, dataset: uisbench.Dataset, ids: Sequence[int], backbone: Any | None) -> None:
        self.dataset, self.ids, self.backbone = dataset, list(ids), backbone

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = _frame_sample(self.dataset.load_image(self.ids[i]), None, self.backbone)
        sample["id"] = self.ids[i]
        return sample

    def loader(self, batch_size: int, num_workers: int):
        if num_workers <= 0:
            return (
                collate([self[j] for j in range(i, min(i + batch_size, len(self)))]) for i in range(0, len(self), batch_size)
            )
        from torch.utils.data import DataLoader

        return iter(DataLoader(self, batch_size=batch_size, num_workers=num_workers, collate_fn=collate))  # type: ignore[arg-type]


def merge_self_training(
    predictions: Sequence[uisbench.Prediction],
    previous: Sequence[uisbench.Prediction],
    *,
    score_threshold: float,
    merge_iou: float = 0.5,
) -> list[uisbench.Prediction]:
    """CutLER's self-training targets of one image: the student's predictions scoring at least
    ``score_threshold``, plus every earlier pseudo-mask whose mask IoU with each kept prediction is
    below ``merge_iou``."""
    kept = [p for p in predictions if p.score >= score_threshold and uisbench.masks.area(p.segmentation) > 0]
    if not kept:
        return list(previous)
    if not previous:
        return kept
    iou = uisbench.masks.iou_matrix([p.segmentation for p in previous], [p.segmentation for p in kept])
    old = [p for p, row in zip(previous, iou, strict=True) if float(row.max()) < merge_iou]
    return kept + old


# ---- ranks ----------------------------------------------------------------------------------------


#: CPU (gloo) groups beside an nccl default group, one per default group: the ranks' questions
#: (:meth:`Ranks.count`) and objects (predictions) travel there, without waiting for or filling the GPU
_CONTROL_GROUPS: dict[int, Any] = {}


def _alive(group: Any) -> bool:
    import torch.distributed as dist

    try:
        return dist.get_rank(group) >= 0
    except (RuntimeError, ValueError):  # destroyed with the process group it was made beside
        return False


@dataclass(frozen=True)
class Ranks(uisbench.ranks.ProcessRank):
    """This process's place in a ``torch.distributed`` run (``world == 1``: one process, and every
    method is trivial). The default process group is the bench's (``uisbench.bench._shard``)."""

    rank: int = 0
    world: int = 1
    backend: str | None = None
    device: str = "cpu"
    control: Any = None

    @classmethod
    def current(cls, device: str = "cpu") -> Ranks:
        """The initialised default process group's ranks, or one process. ``device``: where this rank's
        tensors live (nccl exchanges CUDA tensors). A collective the first time under nccl (it makes
        the CPU group of :meth:`count`): every rank calls it at the same point."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
            return cls(device=device)
        backend = str(dist.get_backend())
        control = None
        if backend != "gloo":
            control = _CONTROL_GROUPS.get(id(dist.group.WORLD))
            if control is None or not _alive(control):
                control = _CONTROL_GROUPS[id(dist.group.WORLD)] = dist.new_group(backend="gloo")
        return cls(dist.get_rank(), dist.get_world_size(), backend, device, control)

    def count(self, flag: bool) -> int:
        """On how many ranks ``flag`` is true (every rank learns it), over CPU: no wait for the device."""
        if not self.distributed:
            return int(bool(flag))
        import torch
        import torch.distributed as dist

        votes = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64)
        dist.all_reduce(votes, group=self.control)
        return int(votes.item())

    def share(self, n: int) -> range:
        """This rank's places in a global batch of ``n``: contiguous, sizes differing by at most one
        (the first ``n % world`` ranks take one more)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (self.rank < extra))

    @property
    def group(self) -> Any:
        """The collectives of :class:`uisbench.ranks.ProcessRank` (``all_gather``, ``gather``,
        ``broadcast``) exchange objects over the gloo ``control`` group under nccl: no device copies."""
        return self.control

    def sum(self, values):
        """The element-wise sum over ranks of a 1-D float64 tensor (on every rank)."""
        if not self.distributed:
            return values
        import torch.distributed as dist

        reduced = values.to(self.device if self.backend == "nccl" else "cpu")
        dist.all_reduce(reduced)
        return reduced

    def broadcast_buffers(self, module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank."""
        if not self.distributed:
            return
        import torch.distributed as dist

        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)
