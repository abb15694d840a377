"""The ``maskrcnn`` student's training loop: :class:`Training` (one fit) and :class:`Round` (one round).

Private helper of :mod:`uisbench_builtins.maskrcnn`, whose ``fit`` prepares the model, the targets
and the resume point and then runs one :meth:`Training.run_round` per round; torch is imported inside
functions. What the module docstring of ``maskrcnn`` promises for torchrun (the one-process gradient
of the same images, seeded per sample) is kept by :meth:`Training.step`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uisbench

from ._maskrcnn_checkpoint import CHECKPOINT, write_checkpoint
from ._maskrcnn_config import MaskRCNNConfig


def build_optimizer(model, config: MaskRCNNConfig, r: int):
    """Round ``r``'s optimiser (over the trainable parameters) and its warm-up and step schedule."""
    import torch

    iters = config.round_iterations(r)
    lr = config.round_lr(r)
    params = [q for q in model.parameters() if q.requires_grad]
    if config.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=config.weight_decay)
    warmup = max(0, config.warmup_iters)
    steps = sorted(int(f * iters) for f in config.lr_steps)
    gamma = config.lr_gamma

    def factor(it: int) -> float:
        w = 1.0 if it >= warmup or warmup == 0 else 0.001 + (1 - 0.001) * it / warmup
        return w * gamma ** sum(1 for s in steps if it >= s)

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def autocast(device: str, amp: bool):
    """bf16 autocast on CUDA when ``amp``; a no-op elsewhere."""
    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda") and amp)


def to_device(batch: dict[str, Any], device: str) -> dict[str, Any]:
    """A loader's batch with its tensors on ``device``."""
    out = dict(batch)
    if "pixels" in batch:
        out["pixels"] = batch["pixels"].to(device, non_blocking=True)
    if "images" in batch:
        out["images"] = [x.to(device, non_blocking=True) for x in batch["images"]]
    if "targets" in batch:
        out["targets"] = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in batch["targets"]]
    return out


def _forward_seed(sample_seeds: Sequence[int]) -> int:
    """Seed of torch's global generator during a micro-batch's forward (a draw a module makes there,
    such as dropout): a function of its samples' own seeds alone, so an image draws the same on any rank."""
    from ._student_data import derive_seed

    return derive_seed(*sample_seeds, "global")


def stop_if_failed(failure: BaseException | None, failed: int, where: str) -> None:
    """After the ranks counted their failures: this rank's own error, or the others'."""
    if failure is not None:
        raise failure
    if failed:
        raise RuntimeError(
            f"maskrcnn: {failed} other torchrun rank(s) failed {where} (their error is in their own log); "
            "stopping this rank too."
        )


@dataclass
class Round:
    """One training round's state: what a checkpoint of it saves besides the model."""

    index: int
    iterations: int
    optimizer: Any
    scheduler: Any
    #: this round's entry ``training`` of the history (lr, losses, timings)
    record: dict[str, Any]


@dataclass
class Training:
    """One fit's training: the model and settings, and what every round shares (the data, the seed,
    the work directory and run key its checkpoints carry, the ranks, the history they record).

    The seed and round index fix every draw of a round (image order, flips, copy-paste, samplers;
    see ``_student_data.IterationBatches``), so a round resumed at iteration ``i`` draws what an
    uninterrupted one draws from ``i`` on."""

    model: Any
    backbone: uisbench.Backbone | None
    config: MaskRCNNConfig
    device: str
    #: one forward and backward per image (CPU without BatchNorm; see ``MaskRCNNStudent._distribute``)
    per_image: bool
    dataset: uisbench.Dataset
    workdir: Path
    key: str
    seed: int
    ranks: Any
    history: dict[str, Any] = field(default_factory=dict)
    on_iteration: Callable[[int, int, float], None] | None = None
    on_checkpoint: Callable[[int, int], None] | None = None

    def detector(self):
        """The detector of a training round, with its own cache of frozen features."""
        from ._detector import Detector

        return Detector(self.model, self.backbone, cache={}, cache_bytes=self.config.feature_cache_mb * 2**20)

    def run_round(self, targets: dict[int, list[uisbench.Prediction]], r: int, resume: dict[str, Any] | None) -> int:
        """Train round ``r`` from its start (or ``resume``); returns the samples processed (global)."""
        import torch
        from tqdm import tqdm

        from ._student_data import IterationBatches

        c, model, ranks = self.config, self.model, self.ranks
        iters = c.round_iterations(r)
        droploss = c.round_droploss(r)
        model.roi_heads.drop_iou = c.droploss_iou if droploss else None
        opt, sched = build_optimizer(model, c, r)
        lr = c.round_lr(r)
        start = 0
        if resume is not None:
            opt.load_state_dict(resume["optimizer"])
            sched.load_state_dict(resume["scheduler"])
            start = int(resume["iteration"])
        trainable = [i for i in sorted(targets) if targets[i]]
        data = IterationBatches(
            self.dataset,
            targets,
            trainable,
            backbone=self.backbone,
            batch_size=c.batch_size,
            seed=self.seed,
            round_index=r,
            iterations=iters,
            hflip=c.hflip,
            copy_paste_rate=c.copy_paste_rate if c.copy_paste else 0.0,
            copy_paste_scale=c.copy_paste_scale,
            positions=ranks.share(c.batch_size),
        )
        detector = self.detector()
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
        this = Round(r, iters, opt, sched, record)
        params = [q for q in model.parameters() if q.requires_grad]
        # a failure flag, then every parameter's gradient: summed over the images in float64 (see step)
        flat = torch.zeros(1 + sum(q.numel() for q in params), dtype=torch.float64, device=self.device)
        bar = tqdm(total=iters, initial=start, desc=f"maskrcnn round {r}", unit="it", disable=None if ranks.main else True,
                   file=sys.stderr)
        t0, seen, last_loss, ckpt_s = time.perf_counter(), 0, float("nan"), 0.0
        ckpt_every = max(1, c.checkpoint_every)
        batches = iter(data.loader(start, c.num_workers, self.device.startswith("cuda")))
        try:
            for it in range(start, iters):
                value = self.step(detector, batches, params, flat, r, it)
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
                    self.save(this, done)
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
        self.history["rounds"][r].update({"training": record})
        return seen

    def step(self, detector, batches: Iterator[dict[str, Any]], params: list, flat, r: int, it: int) -> float:
        """The gradient of iteration ``it``'s global batch, set as ``params``' ``.grad`` on every rank;
        returns the batch's loss.

        Each loss is a mean over what the samplers drew in the whole global batch
        (:data:`_detector.LOSS_NORMALISERS`). So every micro-batch of this rank's share (one per image,
        or the whole share: :attr:`per_image`) is forwarded first, the ranks sum what each drew,
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

        ranks = self.ranks
        where = f"at round {r} iteration {it}"
        failure: BaseException | None = None
        try:
            batch = to_device(next(batches), self.device)
        except Exception as err:  # an unreadable image: raised below, after every rank knows
            failure = err
        stop_if_failed(failure, ranks.count(failure is not None), where)
        names = list(LOSS_NORMALISERS)
        counts, sums = [0] * len(names), [0.0] * len(names)
        forwards: list[tuple[dict[str, Any], list[int]]] = []
        try:
            for part in split(batch) if self.per_image else [batch]:
                torch.manual_seed(_forward_seed(part["seeds"]))  # any draw from the global generator: per image
                with autocast(self.device, self.config.amp):
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
        stop_if_failed(failure, int(total[0]), where)
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
        stop_if_failed(failure, int(reduced[0].item()), where)
        for q, g in zip(params, reduced[1:].split(sizes), strict=True):
            q.grad = g.view_as(q).to(q.dtype)
        return value

    def save(self, this: Round, done: int) -> None:
        """Rank 0 writes the checkpoint of ``this`` round after ``done`` iterations (atomically); it holds
        nothing rank-specific, so any number of ranks resumes from it. Under torchrun a failed write (a
        full disk) stops every rank."""
        ranks = self.ranks
        if done == this.iterations:  # the round's last checkpoint carries its record
            self.history["rounds"][this.index]["training"] = dict(this.record)
        failure = None
        if ranks.main:
            try:
                write_checkpoint(self.workdir, key=self.key, round_index=this.index, iteration=done, model=self.model,
                                 optimizer=this.optimizer, scheduler=this.scheduler, history=self.history,
                                 device=self.device)
                if self.on_checkpoint is not None:
                    self.on_checkpoint(this.index, done)
            except Exception as err:
                if not ranks.distributed:
                    raise
                failure = err
        if ranks.distributed:
            stop_if_failed(failure, ranks.count(failure is not None), f"writing {self.workdir / CHECKPOINT}")
