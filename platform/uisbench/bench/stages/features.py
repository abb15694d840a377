"""Stage ``features``: a backbone's dense patch features of every image of one split, one file per image."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ...io import atomic_path
from .._context import progress_bar, seed_everything, short_error
from .._cost import Meter, combine_ranks
from .._stage import CacheDamaged, Stage, StageError, StageOutput

if TYPE_CHECKING:
    from .._pipeline import Pipeline

__all__ = ["FeaturesStage", "backbone_provenance"]


def backbone_provenance(backbone: Any) -> dict[str, Any]:
    """``backbone.provenance()``, which must never sink a run."""
    try:
        return dict(backbone.provenance() or {})
    except Exception as err:
        return {"error": short_error(err)}


class FeaturesStage(Stage):
    """Features of backbone ``backbone`` on ``split``: ``<id>.pt`` per image, summary with cost,
    provenance and the images skipped as unreadable."""

    name = "features"
    per_image = True
    item_suffix = ".pt"

    def __init__(self, pipeline: Pipeline, backbone: str, split: str) -> None:
        super().__init__(pipeline.ctx, f"{backbone} features ({split})", split)
        self.pipeline = pipeline
        self.backbone = backbone
        self.handle = pipeline.backbones[backbone]

    @property
    def address(self) -> tuple[Any, ...]:
        return (self.name, self.backbone, self.split)

    def identity(self) -> dict[str, Any]:
        return {
            "backbone": self.handle.entry.identity,
            "data": self.pipeline.data.identity(self.split),
            "device": self.ctx.device_type,
            "seed": self.ctx.seed,
        }

    def image_ids(self) -> list[int]:
        return self.pipeline.data.ids(self.split)

    def prepare(self, key: str) -> None:
        if self.handle.unavailable:
            raise StageError("unavailable", self.handle.unavailable)

    def compute(self, key: str, chunks: list[list[int]] | None) -> dict[str, Any]:
        import torch

        ids = [i for chunk in chunks or [] for i in chunk]
        if not ids:
            return {"images": 0, "cost": None, "provenance": None, "skipped": []}
        ctx = self.ctx
        backbone = self.handle.bind(self.split)
        dataset = self.pipeline.data.dataset(self.split)
        meter = Meter(self.name, ctx.device)
        bar = progress_bar(len(ids), self.label, ctx.show_progress)
        try:
            with meter:
                for batch_ids, pixels in self.pipeline.data.batches(
                    self.split, ids, backbone.preprocess, ctx.batch_size, ctx.num_workers
                ):
                    # seeded by content, not position: a resumed or sharded run draws the same numbers
                    seed_everything(ctx.seed + batch_ids[0])
                    with torch.inference_mode():
                        fm = backbone.extract(pixels.to(backbone.device), batch_ids)
                    feats = fm.features.detach().float().cpu()
                    valid = None if fm.valid is None else fm.valid.detach().bool().cpu()
                    if feats.ndim != 4 or feats.shape[0] != len(batch_ids):
                        raise ValueError(
                            f"backbone {self.backbone!r} returned features of shape {tuple(feats.shape)}, "
                            f"expected (B={len(batch_ids)}, C, h, w)"
                        )
                    fm.check_geometry(backbone.preprocessing, f"backbone {self.backbone!r}")  # a grid off the declared one misplaces every mask
                    for j, image_id in enumerate(batch_ids):
                        record = {
                            # float32: float16 storage flipped MaskCut masks (benchmarks/bench_feature_storage.py)
                            "features": feats[j].clone(),
                            "valid": None if valid is None else valid[j].clone(),
                            # how the grid lines up with the image's pixels (EvalSample.preprocessing)
                            "preprocessing": asdict(backbone.preprocessing),
                            "patch_size": int(fm.patch_size),
                            "facet": None if fm.facet is None else str(fm.facet),
                            "layer": None if fm.layer is None else int(fm.layer),
                        }
                        with atomic_path(self.item_path(key, image_id)) as tmp:
                            torch.save(record, tmp)
                    meter.images += len(batch_ids)
                    ctx.computed[self.name] += len(batch_ids)
                    bar.update(len(batch_ids))
        finally:
            bar.close()
        wanted = set(ids)
        skipped = [dict(x) for x in getattr(dataset, "skipped", None) or [] if int(x.get("image_id", -1)) in wanted]
        return {"images": meter.images, "cost": meter.record(), "provenance": backbone_provenance(backbone), "skipped": skipped}

    def finish(self, key: str, reports: list[Any]) -> dict[str, Any]:
        ids = self.image_ids()
        skipped = {int(x["image_id"]): x for r in reports if r for x in r.get("skipped") or []}
        previous = [self.ctx.cache.read(p) for p in self.ctx.cache.summaries(self.folder(key))]
        previous = [p for p in previous if p]
        for p in previous:  # images found unreadable by an earlier run over another id list
            for x in p.get("skipped") or []:
                if int(x["image_id"]) in set(ids) and not self.item_path(key, int(x["image_id"])).exists():
                    skipped.setdefault(int(x["image_id"]), x)
        missing = [i for i in ids if i not in skipped and not self.item_path(key, i).exists()]
        if missing:
            raise RuntimeError(f"features of {len(missing)} image(s) missing after the stage (e.g. id {missing[0]})")
        costs = [r["cost"] for r in reports if r and r.get("cost")]
        provenance = next((r["provenance"] for r in reports if r and r.get("provenance") is not None), None)
        cost = combine_ranks(costs) if costs else (previous[0].get("cost") if previous else None)
        if provenance is None:
            provenance = previous[0].get("provenance") if previous else backbone_provenance(self.handle.get())
        return {
            "key": key,
            "backbone": self.backbone,  # which entry: a later dry run estimates time from this cost
            "split": self.split,
            "images": len(ids),
            "cost": cost,
            "provenance": provenance,
            "skipped": [skipped[i] for i in sorted(skipped)],
            "items": self.item_sizes(key, [i for i in ids if i not in skipped]),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    def adopt(self, output: StageOutput) -> None:
        self.pipeline.data.note_skipped(self.split, output.skipped)

    def load(self, key: str, image_id: int) -> dict[str, Any]:
        """The stored record of one image: ``features`` (C, h, w), ``valid``, ``preprocessing``, ...;
        :class:`CacheDamaged` when the file cannot be read back as one (the runner redoes it)."""
        import torch

        path = self.item_path(key, image_id)
        try:
            record = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated, corrupted, not a torch file: all mean "redo it"
            # torch's own text may advise turning the safe loader off: never pass that on
            raise CacheDamaged(self, key, path, f"unreadable, {type(err).__name__}") from err
        features = record.get("features") if isinstance(record, dict) else None
        if not isinstance(features, torch.Tensor) or features.ndim != 3:
            raise CacheDamaged(self, key, path, "not a features record")
        return record

