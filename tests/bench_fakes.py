"""Tiny fake plugins for the bench-engine tests (imported as ``bench_fakes`` by test_bench.py and test_hostile_bench.py: pyproject puts tests/ on pytest's pythonpath).

A 32x32 "shapes" dataset whose instances are 8x8 squares on an 8-pixel grid, so an 8-pixel patch
grid sees them exactly. ``fake-oracle`` (calibration) gives one channel per instance, so the
``fake-groups`` masker (one mask per distinct feature vector, background dropped) recovers every
instance; ``fake-semantic`` and ``fake-pixels`` see only the class colour and merge same-class
instances. The module is also copied next to a fake ``.dist-info`` so subprocesses (torchrun,
kill-and-resume) load it through the ordinary entry-point group.
"""

from __future__ import annotations

import json
import os
import time

import uisbench

SIZE = 32
CELL = 8
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60)}
BACKGROUND = (128, 128, 128)


def _instances(image_id: int) -> list[tuple[int, int, str]]:
    """(row, col, class) of the squares of an image: 1 to 3, sometimes two of one class."""
    import numpy as np

    rng = np.random.default_rng(image_id)
    n = 1 + image_id % 3
    cells = rng.choice(16, size=n, replace=False)
    classes = ["red", "red", "green"] if image_id % 2 == 0 else ["green", "red", "red"]
    return [(int(c) // 4, int(c) % 4, classes[k]) for k, c in enumerate(cells)]


class Shapes(uisbench.Dataset):
    def __init__(self, split: str = "val", images: int = 6, ground_truth: bool = True, skip_bad_images: bool = False,
                 same_splits: bool = False) -> None:
        self.split = "val" if same_splits else split  # same_splits: train on the evaluation images
        self.n = images
        self.has_ground_truth = ground_truth
        self.skipped = []
        base = 0 if self.split == "train" else 1000
        self._ids = [base + i for i in range(images)]

    def image_ids(self):
        return list(self._ids)

    def record(self, image_id):
        return uisbench.ImageRecord(image_id, None, SIZE, SIZE)

    def _mask(self, r: int, c: int):
        import numpy as np

        m = np.zeros((SIZE, SIZE), dtype=np.uint8)
        m[r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL] = 1
        return m

    def load_image(self, image_id):
        import numpy as np

        img = np.empty((SIZE, SIZE, 3), dtype=np.uint8)
        img[:] = BACKGROUND
        for r, c, cls in _instances(image_id):
            img[self._mask(r, c).astype(bool)] = COLOURS[cls]
        return img

    def ground_truth(self, image_id):
        if not self.has_ground_truth:
            return []
        out = []
        for k, (r, c, cls) in enumerate(_instances(image_id)):
            rle = uisbench.masks.encode(self._mask(r, c))
            out.append(uisbench.GroundTruth(image_id * 10 + k + 1, image_id, rle, uisbench.masks.to_bbox(rle), float(CELL * CELL), 0, cls))
        return out

    def fingerprint(self):
        return f"shapes-{self.split}-{self.n}-{self.has_ground_truth}"


class _Base(uisbench.Backbone):
    facet = "token"
    layer = 0

    def __init__(self, scale: float = 1.0, weights: str | None = None, fail: bool = False, noise: float = 0.0) -> None:
        self.preprocessing = uisbench.Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), size=SIZE, patch_size=CELL)
        self.scale = scale
        self.weights = weights
        self.fail = fail
        self.noise = noise  # > 0: draws from the global torch RNG, which the engine seeds per batch
        self.dataset = None

    def bind(self, dataset):
        self.dataset = dataset

    def provenance(self):
        return {"pretrained": False, "weights": self.weights, "weights_sha256": None, "model": type(self).__name__}

    def _grid(self, image_id, per_instance: bool):
        import torch

        feats = torch.zeros(4, SIZE // CELL, SIZE // CELL)
        feats[3] = 1.0
        for k, (r, c, cls) in enumerate(_instances(image_id)):
            channel = k if per_instance else (0 if cls == "red" else 1)
            feats[:, r, c] = 0.0
            feats[channel, r, c] = 1.0
        return feats

    def extract(self, pixels, image_ids):
        import torch

        if self.fail:
            raise RuntimeError("boom: this backbone always fails")
        if os.environ.get("FAKE_BENCH_INTERRUPT_AFTER") and int(image_ids[0]) % 1000 >= int(os.environ["FAKE_BENCH_INTERRUPT_AFTER"]):
            raise KeyboardInterrupt
        feats = torch.stack([self._grid(i, self.per_instance) for i in image_ids]) * self.scale
        if self.noise:
            feats = feats + self.noise * torch.rand(feats.shape)
        return uisbench.FeatureMap(feats, list(image_ids), CELL, self.facet, self.layer)


class Oracle(_Base):
    per_instance = True
    calibration = True


class Semantic(_Base):
    per_instance = False
    calibration = True


class Pixels(_Base):
    """Mean colour per patch: same-class instances look alike."""

    def extract(self, pixels, image_ids):
        import torch.nn.functional as F

        if self.fail:
            raise RuntimeError("boom: this backbone always fails")
        feats = F.avg_pool2d(pixels, CELL) * self.scale
        return uisbench.FeatureMap(feats, list(image_ids), CELL, self.facet, self.layer)


def _missing(**params):
    raise uisbench.BackboneUnavailable("fake-missing: weights /nowhere/fake.pth not found; put the file there or name it with `weights:`")


class Groups(uisbench.Masker):
    """One mask per distinct feature vector; the most common vector (background) is dropped."""

    def __init__(self, decimals: int = 2) -> None:
        self.decimals = decimals

    def predict(self, features, records):
        import numpy as np

        out = []
        for j, rec in enumerate(records):
            f = features.features[j].detach().cpu().numpy()
            c, h, w = f.shape
            flat = np.round(f.reshape(c, -1).T, self.decimals)
            _, labels, counts = np.unique(flat, axis=0, return_inverse=True, return_counts=True)
            labels = labels.reshape(h, w)
            bg = int(np.argmax(counts))
            preds = []
            for k in range(len(counts)):
                if k == bg:
                    continue
                grid = (labels == k).astype(np.uint8)
                mask = np.kron(grid, np.ones((rec.height // h, rec.width // w), dtype=np.uint8))
                rle = uisbench.masks.encode(mask)
                preds.append(uisbench.Prediction(rec.id, rle, uisbench.masks.to_bbox(rle), 1.0 - 0.01 * len(preds)))
            out.append(preds)
        return out


class Student(uisbench.Student):
    """'Trains' for ``epochs`` (a checkpoint file each, ``sleep`` seconds apiece), then predicts one
    mask per colour of the image (a semantic student). Fine-tuned on labels (``finetuned``), it
    predicts every instance once it saw 4 labelled images, or 2 when it started from a trained
    student (``init_from``): the pseudo-masks are worth 2 labels."""

    def __init__(self, backbone=None, epochs: int = 2, sleep: float = 0.0, mode: str = "own", finetuned: bool = False) -> None:
        if mode == "frozen-ssl" and getattr(backbone, "calibration", False):
            raise uisbench.IncompatibleError("fake-student: frozen-ssl needs a real backbone, not a calibration one")
        self.epochs = epochs
        self.sleep = sleep
        self.finetuned = finetuned
        self.trained_on = 0
        self.epochs_run = 0  # epochs trained by this fit call (not resumed from a checkpoint)
        self.init_from = None

    def fit(self, dataset, pseudo_masks, *, workdir, seed=0, init_from=None):
        """Each epoch run here sees every training image once: returns epochs run x images."""
        self.init_from = init_from
        run_before = self.epochs_run
        for epoch in range(self.epochs):
            ckpt = workdir / f"ckpt-{epoch}.json"
            if ckpt.exists():
                continue
            time.sleep(self.sleep)
            self.epochs_run += 1
            uisbench.atomic_write_json(ckpt, {"epoch": epoch, "images": len(pseudo_masks)})
        self.trained_on = len(pseudo_masks)
        return (self.epochs_run - run_before) * len(pseudo_masks)

    def predict(self, dataset, image_ids):
        import numpy as np

        if self.finetuned and self.trained_on >= (2 if self.init_from else 4):
            return {i: [uisbench.Prediction(i, g.segmentation, g.bbox, 0.9) for g in dataset.ground_truth(i)] for i in image_ids}
        out = {}
        for i in image_ids:
            img = dataset.load_image(i)
            preds = []
            for colour in COLOURS.values():
                mask = np.all(img == np.asarray(colour, dtype=np.uint8), axis=-1).astype(np.uint8)
                if mask.any():
                    rle = uisbench.masks.encode(mask)
                    preds.append(uisbench.Prediction(i, rle, uisbench.masks.to_bbox(rle), 0.9))
            out[i] = preds
        return out

    def provenance(self):
        return {"epochs": self.epochs, "trained_on": self.trained_on, "epochs_run": self.epochs_run}


class Recall(uisbench.Metric):
    """Share of ground-truth instances some prediction hits with IoU > 0.5 / >= 0.75 (named like COCO)."""

    higher_is_better = {"AP50mask": True, "APmask": True, "AR100mask": True}
    headline = ("AP50mask", "APmask")

    def __init__(self):
        super().__init__()
        self.add_state("hits", default={}, merge="union")  # image id -> [hit50, hit75, total]

    def update(self, sample):
        gts = [g.segmentation for g in sample.ground_truth or []]
        preds = [p.segmentation for p in sample.predictions]
        hit50 = hit75 = 0
        if gts and preds:
            iou = uisbench.masks.iou_matrix(preds, gts).max(axis=0)
            hit50, hit75 = int((iou > 0.5).sum()), int((iou >= 0.75).sum())
        self.hits[sample.record.id] = [hit50, hit75, len(gts)]

    def _values(self, ids):
        rows = [self.hits[i] for i in ids if i in self.hits]
        h50, h75, t = (sum(r[k] for r in rows) for k in range(3))
        t = max(t, 1)
        return {"AP50mask": h50 / t, "APmask": h75 / t, "AR100mask": h50 / t}

    def compute(self):
        return self._values(sorted(self.hits))

    def resample(self, draws):
        return [{k: v for k, v in self._values(d).items() if k in self.headline} for d in draws]


class FeatureShape(uisbench.Metric):
    higher_is_better = {"channels": True, "patches": True}

    def __init__(self):
        super().__init__()
        self.add_state("shapes", default=[], merge="extend")

    def update(self, sample):
        assert sample.features is not None and sample.features.ndim == 3
        self.shapes.append(list(sample.features.shape))

    def compute(self):
        return {"channels": float(self.shapes[0][0]), "patches": float(sum(s[1] * s[2] for s in self.shapes))}


class SeenCost(uisbench.Metric):
    higher_is_better = {"stages_seen": True}

    def __init__(self):
        super().__init__()
        self.add_state("stages", default=[], merge="extend")

    def update(self, sample):
        pass

    def observe_cost(self, cost):
        assert isinstance(cost, uisbench.StageCost) and cost.images >= 0
        self.stages.append(cost.stage)

    def compute(self):
        return {"stages_seen": float(len(set(self.stages)))}


class Exploding(uisbench.Metric):
    higher_is_better = {"x": True}

    def update(self, sample):
        raise ValueError("exploding metric")

    def compute(self):
        return {"x": 1.0}


P = uisbench.Param


@uisbench.hookimpl
def uisbench_datasets():
    yield uisbench.DatasetSpec(
        name="fake-shapes",
        description="Fake shapes dataset.",
        factory=Shapes,
        params=(P("images", "int", 6), P("ground_truth", "bool", True), P("skip_bad_images", "bool", False),
                P("same_splits", "bool", False)),
    )


@uisbench.hookimpl
def uisbench_backbones():
    common = (P("scale", "float", 1.0), P("weights", "path", None, nullable=True), P("fail", "bool", False), P("noise", "float", 0.0))
    yield uisbench.BackboneSpec(name="fake-oracle", description="Fake instance oracle.", factory=Oracle, params=common, calibration=True)
    yield uisbench.BackboneSpec(name="fake-semantic", description="Fake semantic oracle.", factory=Semantic, params=common, calibration=True)
    yield uisbench.BackboneSpec(name="fake-pixels", description="Fake pixels.", factory=Pixels, params=common)
    yield uisbench.BackboneSpec(name="fake-missing", description="Fake backbone without weights.", factory=_missing, params=(P("weights", "path", None, nullable=True),))


@uisbench.hookimpl
def uisbench_maskers():
    yield uisbench.MaskerSpec(name="fake-groups", description="Fake grouping masker.", factory=Groups, params=(P("decimals", "int", 2),))


@uisbench.hookimpl
def uisbench_students():
    yield uisbench.StudentSpec(
        name="fake-student",
        description="Fake student.",
        factory=Student,
        params=(P("epochs", "int", 2), P("sleep", "float", 0.0), P("mode", "str", "own"), P("finetuned", "bool", False)),
    )


@uisbench.hookimpl
def uisbench_metrics():
    yield uisbench.MetricSpec(name="fake-recall", description="Fake recall.", factory=Recall)
    yield uisbench.MetricSpec(
        name="fake-feature-shape",
        description="Fake features metric.",
        factory=FeatureShape,
        needs=frozenset({"features", "ground_truth"}),
        stages=frozenset({"pseudo-masks"}),
    )
    yield uisbench.MetricSpec(
        name="fake-cost",
        description="Fake cost metric.",
        factory=SeenCost,
        needs=frozenset({"cost"}),
        stages=frozenset({"pseudo-masks", "student"}),
    )
    yield uisbench.MetricSpec(name="fake-exploding", description="Fake failing metric.", factory=Exploding)
    yield uisbench.MetricSpec(
        name="fake-exploding-features",
        description="Fake failing features-stage metric.",
        factory=Exploding,
        needs=frozenset({"features"}),
        stages=frozenset({"features"}),
    )


REGISTRY = {
    "version": 1,
    "datasets": {"shapes": {"plugin": "fake-shapes", "images": 6}},
    "backbones": {
        "oracle": {"plugin": "fake-oracle"},
        "semantic": {"plugin": "fake-semantic"},
        "pixels": {"plugin": "fake-pixels"},
    },
    "maskers": {"groups": {"plugin": "fake-groups"}},
    "students": {"student": {"plugin": "fake-student"}},
    "metrics": {
        "coco": {"plugin": "fake-recall"},
        "feature-shape": {"plugin": "fake-feature-shape"},
        "cost": {"plugin": "fake-cost"},
    },
    "bench": {
        "backbones": ["oracle", "semantic", "pixels"],
        "maskers": ["groups"],
        "students": ["student"],
        "metrics": ["coco", "feature-shape", "cost"],
        "dataset": "shapes",
        "seed": 0,
    },
}


def write_registry(path, **changes) -> str:
    """Write REGISTRY (with top-level ``changes`` merged per section) as YAML-compatible JSON."""
    data = json.loads(json.dumps(REGISTRY))
    for section, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(section), dict):
            data[section].update(value)
        else:
            data[section] = value
    path.write_text(json.dumps(data, indent=1))
    return str(path)


def cli_env(tmp_path, **registry) -> dict[str, str]:
    """Environment of a ``python -m uisbench`` subprocess: these fakes installed as a distribution on
    PYTHONPATH, the registry of :func:`write_registry` (with ``registry`` changes), one thread."""
    plugins = tmp_path / "plugins"
    plugins.mkdir(exist_ok=True)
    install_as_distribution(plugins)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(plugins), env.get("PYTHONPATH", "")])
    env["UISBENCH_REGISTRY"] = write_registry(tmp_path / "registry.yaml", **registry)
    env["OMP_NUM_THREADS"] = "1"
    return env


def install_as_distribution(folder) -> None:
    """Make this module loadable through entry points from ``folder`` (put it on PYTHONPATH)."""
    import shutil
    from pathlib import Path

    folder = Path(folder)
    shutil.copy(Path(__file__), folder / "uisbench_fakes.py")
    info = folder / "uisbench_fakes-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: uisbench-fakes\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[uisbench]\nfakes = uisbench_fakes\n")
