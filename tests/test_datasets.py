"""Dataset plugins (synth-instances, coco, images), robust decoding and batched loading."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pytest

import uisbench

# ---------------------------------------------------------------------------------------------
# helpers: tiny datasets on disk
# ---------------------------------------------------------------------------------------------


def _synth(split="val", **params):
    from uisbench_builtins import synth

    return synth.build(split, **params)


def _png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _coco_folder(tmp_path: Path, n: int = 3, seed: int = 0) -> Path:
    """A valid COCO folder exported from synth-instances (images/ + annotations.json)."""
    root = tmp_path / f"coco{seed}"
    uisbench.data.write_coco(_synth(images=n, size=64, seed=seed), root, progress=False)
    return root


def _edit_json(root: Path, edit) -> None:
    path = root / "annotations.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _to_tensor(image):
    import torch

    return torch.from_numpy(np.ascontiguousarray(image[:32, :32])).permute(2, 0, 1).float()


# ---------------------------------------------------------------------------------------------
# registry / listing
# ---------------------------------------------------------------------------------------------


def test_list_datasets_shows_builtins_and_presets(capsys):
    from uisbench.cli import main

    assert main(["list", "datasets", "--json"]) == 0
    items = {item["name"]: item for item in json.loads(capsys.readouterr().out)}
    for name in ("synth-instances", "synth-instances-large", "coco-val2017", "coco20k", "lvis-val", "images"):
        assert name in items, name
    assert items["coco-val2017"]["plugin"] == "coco"
    assert set(items["coco20k"]["presets"]) == {"coco-val2017", "coco20k", "lvis-val"}
    assert items["lvis-val"]["params"]["max_dets"] == 300
    assert "large" in items["synth-instances"]["presets"]
    assert main(["list", "datasets"]) == 0
    text = capsys.readouterr().out
    assert "synth-instances" in text and "presets: coco-val2017, coco20k, lvis-val" in text and "images" in text


def test_presets_are_stated_once_in_the_plugins_and_named_by_the_registry(host, registry):
    """A preset's values live in its plugin (``PRESETS``) alone: the shipped registry names it with
    ``preset:`` and spells none of its values again, and what the entry resolves to (what `platform list`
    shows and the factory builds) is the plugin default overlaid with the preset."""
    named = {}
    for name, entry in registry.entries["datasets"].items():
        spec = host.spec("datasets", entry.plugin)
        for preset, values in spec.presets.items():
            spelt = [k for k, v in values.items() if k in entry.params and entry.params[k] == v and k != "preset"]
            assert not spelt, f"registry.yaml: {name} repeats {spelt} of {entry.plugin}'s preset {preset!r}; write `preset: {preset}`"
        if entry.params.get("preset"):
            named[name] = (entry.plugin, entry.params["preset"])
    assert named == {"synth-instances-large": ("synth-instances", "large"), "coco-val2017": ("coco", "coco-val2017"),
                     "coco20k": ("coco", "coco20k"), "lvis-val": ("coco", "lvis-val")}
    for name, (plugin, preset) in named.items():
        spec = host.spec("datasets", plugin)
        resolved = registry.resolved_params(registry.entry("datasets", name), host)
        assert resolved == {**spec.defaults(), **spec.presets[preset], "preset": preset}, name


# ---------------------------------------------------------------------------------------------
# synth-instances
# ---------------------------------------------------------------------------------------------


def test_synth_is_deterministic_and_splits_differ():
    a, b = _synth(), _synth()
    assert a.image_ids() == list(range(1, 25)) and len(_synth("train").image_ids()) == 48
    for i in (1, 7, 24):
        assert np.array_equal(a.load_image(i), b.load_image(i))
        assert [g.segmentation for g in a.ground_truth(i)] == [g.segmentation for g in b.ground_truth(i)]
    assert a.fingerprint() == b.fingerprint()
    train = _synth("train")
    assert not np.array_equal(a.load_image(1), train.load_image(1))
    assert train.fingerprint() != a.fingerprint()
    other = _synth(seed=1)
    assert not np.array_equal(a.load_image(1), other.load_image(1))
    assert other.fingerprint() != a.fingerprint()
    # generation order does not matter (each image has its own random stream), nor does the cache
    c = _synth(cache_size=0)
    assert np.array_equal(c.load_image(24), a.load_image(24)) and np.array_equal(c.load_image(24), a.load_image(24))


def test_synth_ground_truth_is_exact_and_instance_rich():
    from uisbench_builtins.synth import CLASSES

    ds = _synth()
    same_class = single = touching = 0
    for i in ds.image_ids():
        rec, image, gts = ds.record(i), ds.load_image(i), ds.ground_truth(i)
        assert image.shape == (rec.height, rec.width, 3) == (128, 128, 3) and image.dtype == np.uint8
        assert gts, f"image {i} has no instance"
        masks = [uisbench.masks.decode(g.segmentation) for g in gts]
        stack = np.stack(masks).astype(int)
        assert stack.sum(0).max() <= 1, "visible masks must not overlap"
        for g, m in zip(gts, masks, strict=True):
            assert g.iscrowd == 0 and g.category in CLASSES and g.image_id == i
            assert m.shape == (rec.height, rec.width) and g.area == m.sum() >= 16
            ys, xs = np.nonzero(m)
            assert g.bbox == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        counts = collections.Counter(g.category for g in gts)
        same_class += max(counts.values()) >= 2
        single += len(gts) == 1
        # a same-class pair whose masks touch (4-neighbourhood) or overlap
        for cls in [c for c, n in counts.items() if n >= 2]:
            ms = [m for g, m in zip(gts, masks, strict=True) if g.category == cls]
            grown = [np.pad(m, 1)[1:-1, 1:-1] | np.roll(m, 1, 0) | np.roll(m, -1, 0) | np.roll(m, 1, 1) | np.roll(m, -1, 1) for m in ms]
            if any((grown[p] & ms[q]).any() for p in range(len(ms)) for q in range(len(ms)) if p != q):
                touching += 1
                break
    n = len(ds.image_ids())
    assert same_class / n >= 0.4, f"only {same_class}/{n} images hold >= 2 instances of one class"
    assert single >= 2, "both halves of the instance-awareness split must exist"
    assert touching >= 3, f"only {touching} images with touching same-class instances"


def test_synth_knobs_and_presets():
    assert all(len(_synth(images=6, min_instances=2).ground_truth(i)) >= 2 for i in range(1, 7))
    assert all(len(_synth(images=6, max_instances=1).ground_truth(i)) == 1 for i in range(1, 7))
    ds = _synth(images=2, size=64, classes=["disc", "ring"], difficulty="hard")
    assert ds.record(1).width == 64 and ds.load_image(2).shape == (64, 64, 3)
    assert {g.category for i in (1, 2) for g in ds.ground_truth(i)} <= {"disc", "ring"}
    large = _synth("train", preset="large")
    assert len(large.image_ids()) == 4000 and large.record(4000).height == 480
    assert _synth("val", preset="large", images=3).image_ids() == [1, 2, 3]  # explicit value beats the preset
    with pytest.raises(uisbench.ConfigError, match="max_instances"):
        _synth(min_instances=3, max_instances=2)
    with pytest.raises(uisbench.UnknownNameError):
        _synth(preset="huge")
    with pytest.raises(uisbench.DataError, match="no image id 99"):
        _synth(images=3).load_image(99)


# ---------------------------------------------------------------------------------------------
# coco
# ---------------------------------------------------------------------------------------------


def test_coco_reads_exported_synth_exactly(tmp_path):
    from pycocotools.coco import COCO

    from uisbench_builtins import coco

    synth = _synth(images=3, size=64)
    root = tmp_path / "c"
    uisbench.data.write_coco(synth, root, progress=False)
    ds = coco.build("val", root=str(root))
    assert ds.image_ids() == [1, 2, 3] and ds.has_ground_truth and ds.max_dets == 100
    for i in ds.image_ids():
        assert np.array_equal(ds.load_image(i), synth.load_image(i))
        got, want = ds.ground_truth(i), synth.ground_truth(i)
        assert [(g.segmentation, g.bbox, g.category, g.iscrowd) for g in got] == [
            (w.segmentation, w.bbox, w.category, w.iscrowd) for w in want
        ]
    gt = COCO()
    gt.dataset = ds.coco_ground_truth()
    gt.createIndex()
    assert len(gt.getAnnIds()) == sum(len(synth.ground_truth(i)) for i in (1, 2, 3))
    assert ds.fingerprint() == coco.build("val", root=str(root)).fingerprint()


def test_coco_converts_polygons_uncompressed_rle_and_keeps_crowd(tmp_path):
    from pycocotools import mask as mask_utils

    from uisbench_builtins import coco

    root = tmp_path / "c"
    _png(root / "images" / "a.png", np.full((40, 60, 3), 90, np.uint8))
    square = np.zeros((40, 60), np.uint8)
    square[5:15, 10:30] = 1
    uncompressed = {"size": [40, 60], "counts": []}
    flat = square.flatten(order="F")
    run, value = 0, 0
    for v in flat:
        if v != value:
            uncompressed["counts"].append(run)
            run, value = 0, v
        run += 1
    uncompressed["counts"].append(run)
    data = {
        "images": [{"id": 7, "file_name": "a.png", "width": 60, "height": 40}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 3, "segmentation": [[10, 20, 40, 20, 40, 35, 10, 35]],
             "bbox": [10, 20, 30, 15], "area": 450, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 4, "segmentation": uncompressed, "bbox": [10, 5, 20, 10],
             "area": 200, "iscrowd": 1},
        ],
        "categories": [{"id": 3, "name": "cat"}, {"id": 4, "name": "person"}],
    }
    (root / "annotations.json").write_text(json.dumps(data))
    ds = coco.build("val", root=str(root))
    poly, crowd = ds.ground_truth(7)
    assert (poly.category, poly.iscrowd, crowd.category, crowd.iscrowd) == ("cat", 0, "person", 1)
    ref = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(data["annotations"][0]["segmentation"], 40, 60)))
    assert np.array_equal(uisbench.masks.decode(poly.segmentation), ref)
    assert np.array_equal(uisbench.masks.decode(crowd.segmentation), square)
    assert isinstance(crowd.segmentation["counts"], str)
    assert ds.coco_ground_truth()["categories"] == [{"id": 1, "name": "object"}]


def test_coco_bad_inputs_name_the_culprit(tmp_path):
    from uisbench_builtins import coco

    # a truncated json: error with file, line and column
    root = _coco_folder(tmp_path, seed=1)
    text = (root / "annotations.json").read_text()
    (root / "annotations.json").write_text(text[: len(text) // 2])
    with pytest.raises(uisbench.DataError, match=r"annotations\.json: malformed JSON at line 1 column \d+ .*truncated"):
        coco.build("val", root=str(root))

    # a polygon with two points: error names annotation, image id and file
    root = _coco_folder(tmp_path, seed=2)
    _edit_json(root, lambda d: d["annotations"][0].update(segmentation=[[1, 1, 5, 5]], id=555))
    image_id = json.loads((root / "annotations.json").read_text())["annotations"][0]["image_id"]
    with pytest.raises(uisbench.DataError, match=rf"annotation 555 of image id {image_id} \(.*{image_id:06d}\.png\): polygon 0 has 2 point"):
        coco.build("val", root=str(root))
    ds = coco.build("val", root=str(root), skip_bad_images=True)
    assert image_id not in ds.image_ids() and len(ds.image_ids()) == 2
    assert ds.skipped == [{"image_id": image_id, "file": str(root / "images" / f"{image_id:06d}.png"),
                           "reason": ds.skipped[0]["reason"]}]
    assert "polygon 0 has 2 point" in ds.skipped[0]["reason"]

    # a truncated (broken) image: found when decoding, named with its id
    root = _coco_folder(tmp_path, seed=3)
    broken = root / "images" / "000002.png"
    broken.write_bytes(broken.read_bytes()[:200])
    ds = coco.build("val", root=str(root))
    with pytest.raises(uisbench.DataError, match=r"000002\.png \(image id 2\): cannot decode image .*truncated"):
        ds.load_image(2)
    with pytest.raises(uisbench.DataError, match=r"000002\.png \(image id 2\)"):
        list(uisbench.data.iter_batches(ds, ds.image_ids(), _to_tensor, batch_size=2))
    ds = coco.build("val", root=str(root), skip_bad_images=True)
    fingerprint = ds.fingerprint()
    batches = list(uisbench.data.iter_batches(ds, ds.image_ids(), _to_tensor, batch_size=2))
    assert [b[0] for b in batches] == [[1], [3]]
    assert ds.fingerprint() == fingerprint  # cache keys stay put when a bad image turns up
    assert [s["image_id"] for s in ds.skipped] == [2] and ds.skipped[0]["file"].endswith("000002.png")
    assert ds.image_ids() == [1, 3]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["annotations"][0].update(bbox=[3, 3, -4, 5]), "negative width or height"),
        (lambda d: d["annotations"][0].update(bbox=[50, 50, 40, 10]), "lies outside the 64x64 image"),
        (lambda d: d["annotations"][0].update(segmentation={"size": [64, 64], "counts": [4096]}), "empty mask"),
        (lambda d: d["annotations"][0].update(segmentation=[[1, 1, 9, 9, 20, 20]], area=0), "empty mask"),
        (lambda d: d["annotations"][0].update(image_id=999), "points at image id 999"),
        (lambda d: d["images"][0].update(file_name="nope.png"), "nope.png is missing"),
        (lambda d: d["annotations"][0].update(segmentation=[]), "empty segmentation"),
    ],
)
def test_coco_annotation_problems(tmp_path, edit, message):
    from uisbench_builtins import coco

    root = _coco_folder(tmp_path)
    _edit_json(root, edit)
    with pytest.raises(uisbench.DataError, match=message) as info:
        coco.build("val", root=str(root))
    assert "--skip-bad-images" in str(info.value) and "annotations.json" in str(info.value)
    ds = coco.build("val", root=str(root), skip_bad_images=True)
    assert len(ds.skipped) == 1 and message.split()[0] in ds.skipped[0]["reason"]


def test_coco_size_mismatch_is_reported_with_both_sizes(tmp_path):
    from uisbench_builtins import coco

    root = _coco_folder(tmp_path)
    _edit_json(root, lambda d: [img.update(width=70) for img in d["images"] if img["id"] == 1])
    _edit_json(root, lambda d: d.update(annotations=[a for a in d["annotations"] if a["image_id"] != 1]))
    ds = coco.build("val", root=str(root))
    with pytest.raises(uisbench.DataError, match=r"000001\.png \(image id 1\): decoded size 64x64 .* annotation file's 70x64"):
        ds.load_image(1)


def test_coco_presets_list_missing_files(tmp_path, monkeypatch):
    from uisbench_builtins import coco

    with pytest.raises(uisbench.DataError) as info:
        coco.build("val", preset="coco20k", root=str(tmp_path))
    text = str(info.value)
    assert str(tmp_path / "annotations" / "instances_train2014.json") in text
    assert str(tmp_path / "train2014") in text and "UISBENCH_COCO_ROOT" in text and "train2014.zip" in text
    monkeypatch.setenv("UISBENCH_COCO_ROOT", str(tmp_path / "env-root"))
    with pytest.raises(uisbench.DataError, match=r"env-root/val2017"):
        coco.build("val", preset="coco-val2017")
    assert coco.build.__module__  # the registry entry itself validates without a root


def test_coco_train_split_is_explicit_or_flagged_transductive(tmp_path):
    """A student's train split: its own files when given; otherwise the evaluation images, flagged
    (a preset whose train files are missing is an error, not a fallback)."""
    from uisbench_builtins import coco

    val, train = tmp_path / "val", tmp_path / "train"
    uisbench.data.write_coco(_synth(images=3, size=64), val, progress=False)
    uisbench.data.write_coco(_synth(images=5, size=64, split="train"), train, progress=False)
    plain = dict(root=str(tmp_path), images="val/images", annotations="val/annotations.json")
    own = coco.build("train", **plain, train_images="train/images", train_annotations="train/annotations.json")
    assert own.image_ids() == [1, 2, 3, 4, 5] and own.transductive is False
    assert coco.build("train", **plain, train_images="train/images", train_annotations="train/annotations.json",
                      train_max_images=2).image_ids() == [1, 2]
    fallback = coco.build("train", **plain)
    assert fallback.transductive is True and fallback.image_ids() == [1, 2, 3]
    assert coco.build("val", **plain).transductive is False
    on_purpose = coco.build("train", **plain, train_images="train/images", train_annotations="train/annotations.json",
                            transductive=True)
    assert on_purpose.transductive is True and on_purpose.image_ids() == [1, 2, 3]
    (tmp_path / "annotations").mkdir()
    (tmp_path / "val2017").symlink_to(val / "images")
    (tmp_path / "annotations" / "instances_val2017.json").symlink_to(val / "annotations.json")
    assert coco.build("val", preset="coco-val2017", root=str(tmp_path)).image_ids() == [1, 2, 3]
    with pytest.raises(uisbench.DataError, match="train2017") as info:
        coco.build("train", preset="coco-val2017", root=str(tmp_path))
    assert "transductive: true" in str(info.value)
    assert coco.build("train", preset="coco-val2017", root=str(tmp_path), transductive=True).transductive is True


def test_coco_folder_with_a_few_labelled_images_trains_on_the_rest_unlabelled(tmp_path):
    """A team's photos, a few labelled: val = the held-out labelled images; train = the labelled ones
    the few-label stage may draw from plus, with train_unlabelled, every other photo without ground
    truth; the val photos never enter the train split."""
    import json

    from uisbench_builtins import coco

    everything = tmp_path / "all"
    uisbench.data.write_coco(_synth(images=10, size=64, split="train"), everything, progress=False)
    data = json.loads((everything / "annotations.json").read_text())

    def subset(names, out):
        images = [i for i in data["images"] if i["file_name"] in names]
        ids = {i["id"] for i in images}
        anns = [a for a in data["annotations"] if a["image_id"] in ids]
        (tmp_path / out).write_text(json.dumps({**data, "images": images, "annotations": anns}))

    subset({"000001.png", "000002.png", "000003.png"}, "val-labels.json")
    subset({"000004.png", "000005.png", "000006.png", "000007.png"}, "train-labels.json")
    entry = dict(root=str(tmp_path), images="all/images", annotations="val-labels.json", train_images="all/images",
                 train_annotations="train-labels.json")
    val = coco.build("val", **entry, train_unlabelled=True)
    assert val.image_ids() == [1, 2, 3] and all(val.ground_truth(i) for i in val.image_ids())
    train = coco.build("train", **entry, train_unlabelled=True)
    names = {Path(train.record(i).file).name for i in train.image_ids()}
    assert names == {f"{i:06d}.png" for i in range(4, 11)} and train.transductive is False
    labelled = [i for i in train.image_ids() if train.ground_truth(i)]
    assert sorted(Path(train.record(i).file).name for i in labelled) == [f"{i:06d}.png" for i in range(4, 8)]
    unlabelled = [i for i in train.image_ids() if i not in labelled]
    assert len(unlabelled) == 3 and min(unlabelled) > max(labelled)  # numbered after the annotated ones
    assert train.record(unlabelled[0]).width == 64
    plain = coco.build("train", **entry)  # without the flag: the labelled images only
    assert len(plain.image_ids()) == 4 and plain.fingerprint() != train.fingerprint()
    # an unreadable extra photo is a problem of that file, like any other
    (everything / "images" / "000099.png").write_bytes(b"not a png")
    with pytest.raises(uisbench.DataError, match="000099.png"):
        coco.build("train", **entry, train_unlabelled=True)
    skipping = coco.build("train", **entry, train_unlabelled=True, skip_bad_images=True)
    assert len(skipping.image_ids()) == 7 and skipping.skipped[0]["file"].endswith("000099.png")


def test_coco20k_list_is_shipped():
    from uisbench_builtins import coco

    path = coco.builtin_file_list("coco20k")
    lines = path.read_text().splitlines()
    assert len(lines) == 19817 == len(set(lines))
    assert all(line.startswith("train2014/COCO_train2014_") and line.endswith(".jpg") for line in lines)


def test_coco_file_list_and_lvis_style_json(tmp_path):
    from uisbench_builtins import coco

    root = _coco_folder(tmp_path, n=3)
    (root / "keep.txt").write_text("# two of three\nimages/000001.png\n000003.png\n")
    ds = coco.build("val", root=str(root), file_list="keep.txt")
    assert ds.image_ids() == [1, 3]
    (root / "bad.txt").write_text("000009.png\n")
    with pytest.raises(uisbench.DataError, match=r"bad\.txt: 1 of its 1 files are not in .*000009\.png"):
        coco.build("val", root=str(root), file_list="bad.txt")

    # LVIS names images by coco_url (val2017/..., train2017/...) relative to the COCO root
    lvis = tmp_path / "lvis"
    (lvis / "val2017").mkdir(parents=True)
    (root / "images" / "000001.png").rename(lvis / "val2017" / "000001.png")
    data = json.loads((root / "annotations.json").read_text())
    data["images"] = [dict({k: v for k, v in img.items() if k != "file_name"},
                           coco_url="http://images.cocodataset.org/val2017/000001.png") for img in data["images"][:1]]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] == 1]
    for a in data["annotations"]:
        a.pop("iscrowd")
    (lvis / "annotations").mkdir()
    (lvis / "annotations" / "lvis_v1_val.json").write_text(json.dumps(data))
    ds = coco.build("val", preset="lvis-val", root=str(lvis))
    assert ds.max_dets == 300 and ds.image_ids() == [1] and ds.load_image(1).shape == (64, 64, 3)
    assert all(g.iscrowd == 0 for g in ds.ground_truth(1))


# ---------------------------------------------------------------------------------------------
# images (no annotations)
# ---------------------------------------------------------------------------------------------


def test_image_folder(tmp_path, monkeypatch):
    from uisbench_builtins import images

    rng = np.random.default_rng(0)
    _png(tmp_path / "photos" / "b.png", rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    _png(tmp_path / "photos" / "a.png", rng.integers(0, 255, (10, 12, 3), dtype=np.uint8))
    _png(tmp_path / "photos" / "sub" / "c.PNG", rng.integers(0, 255, (8, 8), dtype=np.uint8))
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    ds = images.build("train", root=str(tmp_path / "photos"))
    assert ds.has_ground_truth is False and ds.image_ids() == [1, 2, 3]
    assert [Path(ds.record(i).file).name for i in (1, 2, 3)] == ["a.png", "b.png", "c.PNG"]
    assert (ds.record(2).width, ds.record(2).height) == (30, 20) and ds.load_image(3).shape == (8, 8, 3)
    assert ds.ground_truth(1) == [] and ds.skipped == []
    monkeypatch.setenv("UISBENCH_IMAGES_ROOT", str(tmp_path / "photos"))
    assert images.build("val").fingerprint() == ds.fingerprint()
    assert ds.transductive is True  # no train_root: the student would train on the evaluation images
    assert images.build("train", root=str(tmp_path / "photos"), train_root=str(tmp_path)).transductive is False
    assert images.build("val", recursive=False, max_images=1).image_ids() == [1]

    (tmp_path / "photos" / "zz.jpg").write_bytes(b"\xff\xd8garbage")
    with pytest.raises(uisbench.DataError, match=r"zz\.jpg.*not a readable image"):
        images.build("val")
    ds = images.build("val", skip_bad_images=True)
    assert ds.image_ids() == [1, 2, 3] and ds.skipped[0]["file"].endswith("zz.jpg")
    monkeypatch.delenv("UISBENCH_IMAGES_ROOT")
    with pytest.raises(uisbench.ConfigError, match="UISBENCH_IMAGES_ROOT"):
        images.build("val")


# ---------------------------------------------------------------------------------------------
# decoding
# ---------------------------------------------------------------------------------------------


def test_load_rgb_applies_exif_orientation(tmp_path):
    from PIL import Image

    array = np.zeros((10, 20, 3), np.uint8)  # 20 wide, 10 high; top-left corner red
    array[:4, :4] = (255, 0, 0)
    img = Image.fromarray(array)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "o.jpg", exif=exif.tobytes(), quality=100)
    out = uisbench.data.load_rgb(tmp_path / "o.jpg")
    assert out.shape == (20, 10, 3) and out.dtype == np.uint8
    assert out[1, -2, 0] > 200 and out[1, 1, 0] < 60 and out[-2, -2, 0] < 60  # the red corner went top right
    assert uisbench.data.image_size(tmp_path / "o.jpg") == (10, 20)


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA", "P", "CMYK", "I;16", "1"])
def test_load_rgb_converts_modes_to_rgb_uint8(tmp_path, mode):
    from PIL import Image

    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[:, 4:] = (200, 100, 50)
    base = Image.fromarray(rgb)
    if mode == "I;16":
        img = Image.fromarray((np.arange(48, dtype=np.uint16).reshape(6, 8) * 1300).astype(np.uint16))
        assert img.mode == "I;16"
        suffix = ".png"
    else:
        img = base.convert(mode)
        suffix = ".tif" if mode == "CMYK" else ".png"
    if mode == "RGBA":
        alpha = np.full((6, 8), 255, np.uint8)
        alpha[0, 0] = 0
        img.putalpha(Image.fromarray(alpha))
    path = tmp_path / f"img{suffix}"
    img.save(path)
    out = uisbench.data.load_rgb(path, expected_size=(8, 6))
    assert out.shape == (6, 8, 3) and out.dtype == np.uint8
    if mode == "I;16":  # scaled from 16 to 8 bits, not clipped
        assert out[0, 1, 0] == round(1300 * 255 / 65535) and out[-1, -1, 0] == round(47 * 1300 * 255 / 65535)
    elif mode == "RGBA":
        assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[0, 5]) == (200, 100, 50)  # over white
    elif mode in ("L", "LA"):
        assert out[0, 5, 0] == out[0, 5, 1] == out[0, 5, 2] > 0
    elif mode in ("P", "CMYK"):
        assert abs(int(out[0, 5, 0]) - 200) < 30 and out[0, 0].max() < 30


def test_load_rgb_errors(tmp_path):
    with pytest.raises(uisbench.DataError, match=r"missing\.png: image file not found"):
        uisbench.data.load_rgb(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(uisbench.DataError, match=r"text\.png: not a readable image"):
        uisbench.data.load_rgb(tmp_path / "text.png")
    _png(tmp_path / "ok.png", np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(uisbench.DataError, match=r"ok\.png \(image id 3\): decoded size 5x4 .* 6x4"):
        uisbench.data.load_rgb(tmp_path / "ok.png", expected_size=(6, 4), what="image id 3")


# ---------------------------------------------------------------------------------------------
# batched loading
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_iter_batches_keeps_order_and_stacks(workers):
    ds = _synth(images=5, size=64)
    batches = list(uisbench.data.iter_batches(ds, [5, 1, 3, 2, 4], _to_tensor, batch_size=2, num_workers=workers))
    assert [b[0] for b in batches] == [[5, 1], [3, 2], [4]]
    ids, pixels, records = batches[0]
    assert pixels.shape == (2, 3, 32, 32) and [r.id for r in records] == [5, 1]
    import torch

    assert torch.equal(pixels[1], _to_tensor(ds.load_image(1)))
    assert list(uisbench.data.iter_batches(ds, [], _to_tensor)) == []


# ---------------------------------------------------------------------------------------------
# conformance: every dataset plugin
# ---------------------------------------------------------------------------------------------


def _tiny_params(name: str, tmp_path: Path) -> dict:
    if name == "synth-instances":
        return {"images": 3, "size": 64}
    if name == "coco":
        return {"root": str(_coco_folder(tmp_path))}
    if name == "images":
        return {"root": str(_coco_folder(tmp_path) / "images")}
    return {}


def _dataset_plugins():
    return sorted(uisbench.host.load_plugins(strict=False).specs("datasets"))


@pytest.mark.parametrize("name", _dataset_plugins())
def test_dataset_plugin_conformance(host, tmp_path, name):
    """Every dataset plugin keeps the dataset contract as uisbench.testing states it; a built-in also
    takes the bench's ``skip_bad_images``."""
    import uisbench.testing

    spec = host.spec("datasets", name)
    if host.provider("datasets", name).builtin:  # the bench's --skip-bad-images sets it on any built-in
        assert spec.param("skip_bad_images") is not None and spec.param("skip_bad_images").default is False
    params = _tiny_params(name, tmp_path)
    if any(p.required and p.name not in params for p in spec.params):
        pytest.skip(f"no tiny parameters known for dataset plugin {name!r}")
    uisbench.testing.check_dataset(spec, params, host=host)
