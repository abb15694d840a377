"""Training throughput of the ``maskrcnn`` student vs a bare torchvision Mask R-CNN loop, same run.

Both train the same architecture (torchvision ResNet-FPN Mask R-CNN, 2 classes, torchvision's
default heads and RPN settings) on the same synth-instances images and masks, same batch size and
image size, bf16 autocast on CUDA. The bare loop gets its tensors pre-decoded in memory and does
nothing but ``loss = sum(model(images, targets).values()); backward; step``. Ours is the full student
(``fit``: data loading, augmentation, DropLoss, gradient clipping, checkpoint at the end).
Target on a GPU: ours >= 0.8 x bare images/s.

    python benchmarks/bench_student.py                      # CPU, tiny (resnet18, 128 px)
    python benchmarks/bench_student.py --device cuda        # GPU defaults (resnet50, 480 px)
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

# A tiny learning rate keeps both models near their initialisation, so both loops do the same work
# per iteration (the number of positive RoIs, hence the mask-head cost, depends on how training goes).
LR = 1e-5


def _args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--arch", default=None, help="resnet18 or resnet50 (default: resnet18 on CPU, resnet50 on CUDA)")
    ap.add_argument("--size", type=int, default=None, help="image side (default 128 CPU / 480 CUDA)")
    ap.add_argument("--images", type=int, default=None, help="training images (default 16 CPU / 64 CUDA)")
    ap.add_argument("--iterations", type=int, default=None, help="timed iterations (default 8 CPU / 100 CUDA)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 2 CPU / 8 CUDA")
    ap.add_argument("--workers", type=int, default=None, help="student data-loader workers (default 0 CPU / 6 CUDA)")
    ap.add_argument("--rois", type=int, default=None, help="RoIs sampled per image for the heads (default 64 CPU / 512 CUDA)")
    ap.add_argument("--copy-paste", action="store_true", help="also run ours with copy-paste on")
    return ap.parse_args()


def main() -> None:
    import numpy as np
    import torch
    import torchvision
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    import uisbench

    args = _args()
    cuda = args.device.startswith("cuda")
    arch = args.arch or ("resnet50" if cuda else "resnet18")
    size = args.size or (480 if cuda else 128)
    n_images = args.images or (64 if cuda else 16)
    iters = args.iterations or (100 if cuda else 8)
    bs = args.batch_size or (8 if cuda else 2)
    rois = args.rois or (512 if cuda else 64)
    workers = args.workers if args.workers is not None else (6 if cuda else 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        host = uisbench.host.load_plugins(strict=False)
    train = host.spec("datasets", "synth-instances").build(split="train", images=n_images, size=size)
    masks = {
        i: [uisbench.Prediction(i, g.segmentation, g.bbox, 1.0) for g in train.ground_truth(i)] for i in train.image_ids()
    }
    ids = [i for i in train.image_ids() if masks[i]]
    print(f"device={args.device} ({torch.cuda.get_device_name() if cuda else 'cpu'}), torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}, {arch}-fpn, {size} px, {len(ids)} images, batch {bs}, {iters} iterations, {rois} RoIs/image")

    # ---- bare torchvision loop ----------------------------------------------------------------
    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(backbone_name=arch, weights=None, norm_layer=torch.nn.BatchNorm2d, trainable_layers=5)
    model = MaskRCNN(backbone, num_classes=2, min_size=size, max_size=size, box_batch_size_per_image=rois).to(args.device).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR, momentum=0.9, weight_decay=5e-5)
    data = []
    for i in ids:
        img = torch.from_numpy(train.load_image(i)).permute(2, 0, 1).float() / 255
        m = torch.from_numpy(np.stack([uisbench.masks.decode(p.segmentation) for p in masks[i]]))
        boxes = torchvision.ops.masks_to_boxes(m.bool()).float()
        boxes[:, 2:] += 1
        data.append((img, {"boxes": boxes, "masks": m, "labels": torch.ones(len(m), dtype=torch.int64)}))

    def bare_step(it: int) -> None:
        batch = [data[(it * bs + k) % len(data)] for k in range(bs)]
        images = [b[0].to(args.device, non_blocking=True) for b in batch]
        targets = [{k: v.to(args.device, non_blocking=True) for k, v in b[1].items()} for b in batch]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            loss = sum(model(images, targets).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def time_bare() -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for it in range(iters):
            bare_step(it)
        if cuda:
            torch.cuda.synchronize()
        return iters * bs / (time.perf_counter() - t0)

    for it in range(3 if cuda else 1):  # warm-up (CUDA context, kernels), untimed
        bare_step(it)
    bare = time_bare()
    print(f"bare torchvision loop             {bare:8.2f} images/s")

    # ---- ours -----------------------------------------------------------------------------------
    common = dict(
        detector_backbone=f"{arch}-fpn", iterations=iters, batch_size=bs, min_size=size, max_size=size,
        rpn_post_nms_top_n_train=2000, rpn_nms_thresh=0.7, box_batch_size_per_image=rois, lr=LR, optimizer="sgd", warmup_iters=0, lr_steps=[], checkpoint_every=10**9,
        num_workers=workers,
    )
    variants = [("ours (DropLoss, clip, ckpt)", dict(copy_paste=False))]
    if args.copy_paste:
        variants.append(("ours (+ copy-paste)", dict(copy_paste=True)))
    for label, extra in variants:
        student = host.spec("students", "maskrcnn").build(backbone=None, **common, **extra).to(args.device)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            student.fit(train, masks, workdir=Path(tmp), seed=0)
            total = time.perf_counter() - t0
        rec = student.provenance()["history"]["rounds"][0]["training"]
        ours = rec["images_per_s"]
        loop = iters * bs / max(1e-9, rec["seconds"] - rec["checkpoint_seconds"])
        print(f"{label:<34}{ours:8.2f} images/s   ratio ours/bare = {ours / bare:.2f}   "
              f"(without the {rec['checkpoint_seconds']:.1f} s checkpoint: {loop:.2f} images/s, ratio {loop / bare:.2f}; "
              f"fit incl. model build {total:.1f} s)")

    again = time_bare()  # the machine may be shared: a second bare run shows the noise
    print(f"bare torchvision loop (again)     {again:8.2f} images/s   ratio ours/mean(bare) = {ours / ((bare + again) / 2):.2f}")


if __name__ == "__main__":
    main()
