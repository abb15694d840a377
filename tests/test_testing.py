"""uisbench.testing can fail: per rule of :data:`uisbench.testing.RULES`, a fake plugin that breaks just
that rule is caught with that rule named, and the unbroken fake of each kind passes.

The fakes are small and written here (not the built-ins), so each break is one visible change."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

import uisbench
import uisbench.testing as ut
from helpers import FakeEntryPoint

P = uisbench.Param
GRID = (P("size", "int", 32, "frame side", ge=8), P("patch_size", "int", 8, "patch side", ge=1),
        P("resize", "str", "square", "square or pad", choices=("square", "pad")))

# ---- backbones -----------------------------------------------------------------------------------


class FakeBackbone(uisbench.GridBackbone):
    def __init__(self, broken=None, size=32, patch_size=8, resize="square"):
        super().__init__(size=size, patch_size=patch_size, resize=resize)
        self.broken = broken
        seed = None if broken == "backbone.determinism" else 0
        self.projection = np.random.default_rng(seed).standard_normal((4, 3)).astype(np.float32)
        if broken == "backbone.calibration":
            self.calibration = True
        if broken == "backbone.hooks":
            import torch

            self.net = torch.nn.Identity()
            self.net.register_forward_hook(lambda *a: None)

    @property
    def patch_size(self):
        return self.preprocessing.patch_size * (2 if self.broken == "backbone.geometry" else 1)

    def to(self, device):
        return None if self.broken == "to" else super().to(device)

    def preprocess(self, image):
        pixels = super().preprocess(image)
        return pixels.double() if self.broken == "backbone.preprocess" else pixels

    def extract(self, pixels, image_ids):
        import torch
        import torch.nn.functional as F

        f = F.avg_pool2d(pixels.float(), self.preprocessing.patch_size)
        f = torch.einsum("oc,bchw->bohw", torch.from_numpy(self.projection), f)
        if self.broken == "backbone.batch":  # normalised with the batch's statistics: images leak into each other
            f = f - f.mean(dim=0, keepdim=True)
        if self.broken == "backbone.features":
            f = f[:, :, :-1]
        fm = self.feature_map(f, pixels, image_ids)
        if self.broken == "backbone.valid":
            fm.valid = None
        if self.broken == "backbone.hooks":
            self.net(f)
        return fm

    def provenance(self):
        prov = {"model": "fake", "pretrained": False, **super().provenance()}
        if self.broken == "backbone.pretrained":
            del prov["pretrained"]
        if self.broken == "provenance":
            prov["weights"] = {1, 2}  # a set: not JSON
        return prov


def backbone_spec(broken=None, params=GRID, **kw):
    def factory(**p):
        if broken == "build":
            raise RuntimeError("cannot build")
        if broken == "type":
            return object()
        return FakeBackbone(broken, **p)

    return uisbench.BackboneSpec(name="fake-bb", description="A fake backbone.", factory=factory, params=params, **kw)


# ---- maskers -------------------------------------------------------------------------------------


class FakeMasker(uisbench.GridMasker):
    """The patches unlike the top-left (background) patch, as one mask."""

    name = "fake"

    def __init__(self, broken=None):
        super().__init__()
        self.broken = broken

    def predict(self, features, records):
        if self.broken == "masker.padding":  # the whole grid, padding included
            features = uisbench.FeatureMap(features.features, features.image_ids, features.patch_size)
        out = super().predict(features, records)
        for k, preds in enumerate(out):
            for j, p in enumerate(preds):
                preds[j] = self._break(p, k, records[k])
        if self.broken == "masker.images":
            out = out[:-1]
        return out

    def _break(self, p, k, rec):
        b = self.broken
        if b == "masker.prediction":
            return uisbench.Prediction(p.image_id + 1, p.segmentation, p.bbox, p.score)
        if b == "masker.rle":
            rle = uisbench.masks.encode(np.ones((rec.width, rec.height), np.uint8))
            return uisbench.Prediction(p.image_id, rle, uisbench.masks.to_bbox(rle), p.score)
        if b == "masker.bbox":
            return uisbench.Prediction(p.image_id, p.segmentation, (0.0, 0.0, 1.0, 1.0), p.score)
        if b == "masker.score":
            return uisbench.Prediction(p.image_id, p.segmentation, p.bbox, 1.5)
        if b == "masker.determinism":
            return uisbench.Prediction(p.image_id, p.segmentation, p.bbox, float(np.random.default_rng().random()))
        if b == "masker.batch":  # the score depends on the image's place in the batch
            return uisbench.Prediction(p.image_id, p.segmentation, p.bbox, 0.9 - 0.1 * k)
        return p

    def grid_masks(self, features, image_ids, patch_size):
        import torch

        out = []
        for f in features:
            f = torch.nn.functional.normalize(f, dim=0)
            mask = ((f * f[:, :1, :1]).sum(0) < 0.5).numpy()
            out.append(([mask], [0.8]))
        return out


class FakeEnsemble(uisbench.EnsembleMasker):
    def __init__(self, members, broken=None):
        self.broken = broken

    def combine(self, candidates, record):
        score = float(np.random.default_rng().random()) if self.broken == "masker.determinism" else None
        return [p if score is None else uisbench.Prediction(p.image_id, p.segmentation, p.bbox, score) for p in candidates[0]]


def masker_spec(broken=None, ensemble=False):
    def factory(**p):
        if broken == "type":
            return object()
        return FakeEnsemble(broken=broken, **p) if ensemble else FakeMasker(broken, **p)

    params = (P("members", "list[str]", uisbench.REQUIRED, "backbone/masker pairs"),) if ensemble else ()
    return uisbench.MaskerSpec(name="fake-m", description="A fake masker.", factory=factory, params=params,
                               consumes="pseudo-masks" if ensemble else "features")


# ---- metrics -------------------------------------------------------------------------------------


class FakeMetric(uisbench.Metric):
    """Mean number of masks per image, and the share of images with a mask."""

    higher_is_better = {"masks": False, "covered": True}
    headline = ("masks",)
    shared: dict = {}

    def __init__(self, broken=None):
        super().__init__()
        self.broken = broken
        if broken == "metric.directions":
            self.higher_is_better = {"masks": "lower", "covered": True}
        if broken == "metric.headline":
            self.headline = ("mask",)
        self.add_state("count", default={}, merge="union")
        self.add_state("images", default=0, merge="max" if broken == "metric.merge" else "sum")

    def update(self, sample):
        target = FakeMetric.shared if self.broken == "metric.instances" else self.count
        target[sample.record.id] = len(sample.predictions)
        self.images += 1
        return self if self.broken == "metric.update" else None

    def state(self):
        state = super().state()
        return {**state, "f": lambda: 0} if self.broken == "metric.state" else state

    def reset(self):
        if self.broken != "metric.reset":
            super().reset()

    def _values(self, counts, images):
        if not counts:
            return {"masks": math.nan, "covered": math.nan}
        return {"masks": sum(counts.values()) / max(images, 1), "covered": sum(1 for v in counts.values() if v) / len(counts)}

    def compute(self):
        counts = FakeMetric.shared if self.broken == "metric.instances" else self.count
        values = self._values(counts, self.images)
        if self.broken == "metric.pure":
            self.images += 1
        if self.broken == "metric.values":
            values["extra"] = 1.0
        return values

    def resample(self, draws):
        if self.broken == "metric.resample":
            return [{"masks": 0.0} for _ in draws]
        return [{"masks": self._values({i: self.count[i] for i in d}, len(d))["masks"] * 1.0} for d in draws]


def metric_spec(broken=None):
    FakeMetric.shared.clear()  # the broken metric.instances fake keeps its state here, for every instance

    def factory():
        return object() if broken == "type" else FakeMetric(broken)

    return uisbench.MetricSpec(name="fake-metric", description="A fake metric.", factory=factory, needs=frozenset({"predictions"}))


# ---- datasets ------------------------------------------------------------------------------------


class FakeDataset(uisbench.Dataset):
    def __init__(self, split, broken=None):
        if broken == "dataset.splits" and split == "train":
            raise uisbench.DataError("no train split here")
        self.broken = broken
        self.skipped = []
        self.has_ground_truth = "yes" if broken == "dataset.flags" else True

    def image_ids(self):
        return [2, 1] if self.broken == "dataset.ids" else [1, 2]

    def record(self, image_id):
        return uisbench.ImageRecord(image_id + (1 if self.broken == "dataset.record" else 0), None, 20, 10)

    def load_image(self, image_id):
        seed = None if self.broken == "dataset.image" else image_id
        return np.random.default_rng(seed).integers(0, 256, (10, 20, 3), dtype=np.uint8)

    def ground_truth(self, image_id):
        mask = np.zeros((10, 21 if self.broken == "dataset.ground_truth" else 20), np.uint8)
        mask[2:6, 3:9] = 1
        rle = uisbench.masks.encode(mask)
        return [uisbench.GroundTruth(image_id, image_id, rle, uisbench.masks.to_bbox(rle), float(mask.sum()))]

    def fingerprint(self):
        return str(id(self)) if self.broken == "dataset.fingerprint" else "fake"

    def coco_ground_truth(self, image_ids=None):
        gt = super().coco_ground_truth(image_ids)
        if self.broken == "dataset.coco":
            del gt["annotations"][0]["id"]
        return gt


def dataset_spec(broken=None):
    return uisbench.DatasetSpec(name="fake-ds", description="A fake dataset.", factory=lambda split: FakeDataset(split, broken))


# ---- students ------------------------------------------------------------------------------------


class FakeStudent(uisbench.Student):
    """Predicts, for an image it was trained on, its pseudo-masks; nothing for others."""

    def __init__(self, backbone, broken=None):
        self.broken = broken
        self.seen = {}

    def to(self, device):
        return FakeStudent(None, self.broken) if self.broken == "to" else super().to(device)

    def fit(self, dataset, pseudo_masks, *, workdir, seed=0, init_from=None):
        rng = np.random.default_rng(None if self.broken == "student.determinism" else seed)
        self.seen = {i: [uisbench.Prediction(p.image_id, p.segmentation, p.bbox, float(rng.random())) for p in ps]
                     for i, ps in pseudo_masks.items()}
        (workdir / "done").write_text("1")
        return "3" if self.broken == "student.fit" else len(pseudo_masks)

    def predict(self, dataset, image_ids):
        out = {i: list(self.seen.get(i, [])) for i in image_ids}
        if self.broken == "student.predict":
            out.pop(image_ids[-1])
        return out

    def provenance(self):
        return {"recipe": object()} if self.broken == "provenance" else {"recipe": "memorise"}


def student_spec(broken=None):
    def factory(backbone):
        return object() if broken == "type" else FakeStudent(backbone, broken)

    return uisbench.StudentSpec(name="fake-student", description="A fake student.", factory=factory)


# ---- the cases -----------------------------------------------------------------------------------


def _case(rule, check, spec, params=None, **kw):
    return pytest.param(rule, check, spec, params, kw, id=f"{rule}-{check.__name__}")


CASES = [
    # spec rules (on a backbone; they are the same for every kind)
    _case("spec.kind", ut.check_backbone, lambda: masker_spec()),
    _case("spec.help", ut.check_backbone, lambda: backbone_spec(params=(P("size", "int", 32, "", ge=8),))),
    _case("spec.defaults", ut.check_backbone, lambda: backbone_spec(params=(*GRID[:2], P("resize", "str", "diag", "how", choices=("square", "pad"))))),
    _case("spec.bounds", ut.check_backbone, lambda: backbone_spec(params=(P("size", "int", 32, "frame side"), *GRID[1:]))),
    _case("spec.params", ut.check_backbone, lambda: backbone_spec(), {"sise": 32}),
    _case("build", ut.check_backbone, lambda: backbone_spec("build")),
    _case("type", ut.check_backbone, lambda: backbone_spec("type")),
    _case("to", ut.check_backbone, lambda: backbone_spec("to")),
    _case("provenance", ut.check_backbone, lambda: backbone_spec("provenance")),
    *[_case(rule, ut.check_backbone, lambda rule=rule: backbone_spec(rule), {"resize": "pad"} if rule == "backbone.valid" else None)
      for rule in ("backbone.calibration", "backbone.geometry", "backbone.preprocess", "backbone.features", "backbone.valid",
                   "backbone.batch", "backbone.determinism", "backbone.pretrained", "backbone.hooks")],
    _case("type", ut.check_masker, lambda: masker_spec("type")),
    *[_case(rule, ut.check_masker, lambda rule=rule: masker_spec(rule))
      for rule in ("masker.images", "masker.prediction", "masker.rle", "masker.bbox", "masker.score", "masker.determinism",
                   "masker.batch", "masker.padding")],
    _case("masker.determinism", ut.check_masker, lambda: masker_spec("masker.determinism", ensemble=True)),
    _case("type", ut.check_metric, lambda: metric_spec("type")),
    *[_case(rule, ut.check_metric, lambda rule=rule: metric_spec(rule))
      for rule in ("metric.directions", "metric.headline", "metric.update", "metric.values", "metric.pure", "metric.state",
                   "metric.merge", "metric.instances", "metric.reset", "metric.resample")],
    *[_case(rule, ut.check_dataset, lambda rule=rule: dataset_spec(rule))
      for rule in ("dataset.splits", "dataset.ids", "dataset.record", "dataset.image", "dataset.ground_truth", "dataset.flags",
                   "dataset.fingerprint", "dataset.coco")],
    _case("type", ut.check_student, lambda: student_spec("type")),
    _case("to", ut.check_student, lambda: student_spec("to")),
    _case("provenance", ut.check_student, lambda: student_spec("provenance")),
    *[_case(rule, ut.check_student, lambda rule=rule: student_spec(rule))
      for rule in ("student.fit", "student.predict", "student.determinism")],
]


@pytest.mark.parametrize("rule, check, spec, params, kw", CASES)
def test_a_broken_plugin_is_caught_naming_its_rule(rule, check, spec, params, kw):
    with pytest.raises(ut.ConformanceError) as caught:
        check(spec(), params, **kw)
    assert caught.value.rule == rule, str(caught.value)
    assert f"breaks rule {rule!r}" in str(caught.value) and "fake" in str(caught.value)


def test_every_rule_has_a_broken_fake():
    covered = {case.values[0] for case in CASES} | {"plugin.entries"}  # the distribution rule: below
    assert covered == set(ut.RULES), sorted(set(ut.RULES) - covered)


@pytest.mark.parametrize("check, spec, params", [
    (ut.check_backbone, backbone_spec, None),
    (ut.check_backbone, backbone_spec, {"resize": "pad", "size": 48}),
    (ut.check_masker, masker_spec, None),
    (ut.check_masker, lambda: masker_spec(ensemble=True), None),
    (ut.check_metric, metric_spec, None),
    (ut.check_dataset, dataset_spec, None),
    (ut.check_student, student_spec, None),
])
def test_the_unbroken_fakes_pass(check, spec, params):
    check(spec(), params)


class _Module:
    """A plugin module of a fake distribution."""

    def __init__(self, **hooks):
        for name, specs in hooks.items():
            setattr(self, name, uisbench.hookimpl(lambda specs=specs: iter(specs), specname=name))


def test_check_plugin_runs_every_entry_of_a_distribution(fake_entry_points):
    good = _Module(uisbench_backbones=[backbone_spec()], uisbench_metrics=[metric_spec()])
    bad = _Module(uisbench_maskers=[masker_spec("masker.score")], uisbench_datasets=[dataset_spec()])
    fake_entry_points([FakeEntryPoint("good", obj=good, dist="uisbench-good"), FakeEntryPoint("bad", obj=bad, dist="uisbench-bad")])
    assert ut.check_plugin("uisbench-good") == ["backbones/fake-bb", "metrics/fake-metric"]
    with pytest.raises(ut.ConformanceError, match="plugin.entries") as caught:
        ut.check_plugin("uisbench-bad")
    assert "masker.score" in str(caught.value) and "fake-ds" not in str(caught.value)  # every entry checked, the bad one named
    with pytest.raises(ut.ConformanceError, match="registers no plugin"):
        ut.check_plugin("uisbench-not-installed")


def test_names_and_registry_entries_resolve(host, registry):
    ut.check_metric("count-error", host=host)
    entry = next(e for e in registry.entries["metrics"].values() if e.plugin == "count-error")
    ut.check_metric(entry, host=host)


def test_import_uisbench_does_not_load_the_kit():
    import subprocess

    code = "import sys, uisbench; print('uisbench.testing' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
    code = "import sys, uisbench.testing; print('torch' in sys.modules, 'numpy' in sys.modules)"  # the kit itself: light too
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
