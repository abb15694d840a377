"""Stage ``pseudo-masks``: a masker's masks on one backbone's features of one split, one file per image."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...contracts import FeatureMap, Prediction
from .._context import progress_bar, seed_everything
from .._cost import Meter, combine_ranks
from .._stage import CacheDamaged, Stage, StageOutput

if TYPE_CHECKING:
    from .._pipeline import Pipeline
    from .features import FeaturesStage

__all__ = ["MasksStage", "PseudoMasksStage"]


class MasksStage(Stage):
    """What every pseudo-mask stage shares: ``<id>.json`` per image (``{"image_id", "predictions"}``,
    COCO results), and a summary with every image's predictions, the cost and the masker's name.
    Subclasses set ``pipeline``, ``masker`` and ``split`` and compute the files."""

    name = "pseudo-masks"
    per_image = True
    pipeline: Pipeline
    masker: str

    def summary_ids(self) -> list[int]:
        return self.pipeline.data.ids(self.split)

    def read_masks(self, key: str, image_id: int) -> list[dict[str, Any]]:
        """One image's masks (COCO results) as a finished stage wrote them."""
        path = self.item_path(key, image_id)
        item = self.ctx.cache.read(path)
        if not isinstance(item, dict) or not isinstance(item.get("predictions"), list):
            raise CacheDamaged(self, key, path, "missing or unreadable")
        return item["predictions"]

    def write_masks(self, key: str, chunks: list[list[int]], masks_of: Callable[[list[int]], list[list[Prediction]]]) -> dict[str, Any]:
        """Every chunk through ``masks_of`` (its images' masks, in order), one file per image, with a
        progress bar; returns the cost record of the work."""
        ctx = self.ctx
        meter = Meter(self.name, ctx.device)
        bar = progress_bar(sum(len(c) for c in chunks), self.label, ctx.show_progress)
        try:
            for chunk in chunks:
                with meter:
                    preds = masks_of(chunk)
                    if len(preds) != len(chunk):
                        raise ValueError(f"masker {self.masker!r} returned {len(preds)} prediction lists for {len(chunk)} images")
                    for image_id, image_preds in zip(chunk, preds, strict=True):
                        ctx.cache.write(self.item_path(key, image_id),
                                        {"image_id": image_id, "predictions": [p.to_coco() for p in image_preds]})
                    meter.images += len(chunk)
                ctx.computed[self.name] += len(chunk)
                bar.update(len(chunk))
        finally:
            bar.close()
        return meter.record()

    def finish(self, key: str, reports: list[Any]) -> dict[str, Any]:
        predictions: dict[str, list[dict[str, Any]]] = {}
        for image_id in self.image_ids():
            predictions[str(image_id)] = self.read_masks(key, image_id)
        costs = [r for r in reports if r]
        cost = combine_ranks(costs) if costs else None
        if cost is None:  # every image was done by an earlier run over another id list
            previous = [self.ctx.cache.read(p) for p in self.ctx.cache.summaries(self.folder(key))]
            cost = next((p.get("cost") for p in previous if p and p.get("cost")), None)
        return {
            "key": key,
            "masker": self.masker,  # which entry: a later dry run estimates time from this cost
            "split": self.split,
            "images": len(predictions),
            "skipped": self.pipeline.data.skipped_among(self.split, self.summary_ids()),
            "cost": cost,
            "items": self.item_sizes(key, self.image_ids()),
            "predictions": predictions,
        }

    def adopt(self, output: StageOutput) -> None:
        self.pipeline.data.note_skipped(self.split, output.skipped)


class PseudoMasksStage(MasksStage):
    """Pseudo-masks of masker ``masker`` on backbone ``backbone``'s features of ``split``: ``<id>.json``
    per image; the summary holds every image's predictions (COCO results) and the cost."""

    def __init__(self, pipeline: Pipeline, backbone: str, masker: str, split: str, repeat: int = 0) -> None:
        # a masker is stochastic when it has a seed: only then does a repetition (--seeds) redo it
        stochastic = pipeline.plan.entry("maskers", masker).spec.param("seed") is not None
        self.repeat = repeat if stochastic else 0
        label = f"{backbone} / {masker} pseudo-masks ({split})" + (f" seed +{self.repeat}" if self.repeat else "")
        super().__init__(pipeline.ctx, label, split)
        self.pipeline = pipeline
        self.backbone = backbone
        self.masker = masker
        self.features: FeaturesStage = pipeline.features(backbone, split)

    @property
    def address(self) -> tuple[Any, ...]:
        return (self.name, self.backbone, self.masker, self.split, self.repeat)

    def identity(self) -> dict[str, Any]:
        entry = self.pipeline.plan.entry("maskers", self.masker)
        identity = entry.identity
        if self.repeat:
            identity = {**identity, "params": self.pipeline.masker_params(self.masker, self.repeat)}
        return {"masker": identity, "device": self.ctx.device_type, "seed": self.ctx.seed + self.repeat}

    def inputs(self) -> list[Stage]:
        return [self.features]

    def image_ids(self) -> list[int]:
        return self.pipeline.data.usable(self.split)  # images the features stage could read

    def compute(self, key: str, chunks: list[list[int]] | None) -> dict[str, Any] | None:
        import torch

        if not chunks:
            return None
        masker = self.pipeline.masker(self.masker, self.repeat)
        dataset = self.pipeline.data.dataset(self.split)
        features_key = self.pipeline.runner.key(self.features)

        def masks_of(chunk: list[int]) -> list[list[Prediction]]:
            loaded = [self.features.load(features_key, i) for i in chunk]
            valid = None
            if loaded[0]["valid"] is not None:
                valid = torch.stack([r["valid"] for r in loaded]).to(masker.device)
            fm = FeatureMap(
                features=torch.stack([r["features"].float() for r in loaded]).to(masker.device),
                image_ids=list(chunk),
                patch_size=loaded[0]["patch_size"],
                facet=loaded[0]["facet"],
                layer=loaded[0]["layer"],
                valid=valid,
            )
            seed_everything(self.ctx.seed + self.repeat + chunk[0])
            with torch.no_grad():
                return masker.predict(fm, [dataset.record(i) for i in chunk])

        return self.write_masks(key, chunks, masks_of)
