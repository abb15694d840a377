"""Hostile inputs: every file the bench reads may come from someone else.

Work directories, registries, datasets and weights get shared, copied and downloaded. Each test here
builds a hostile input on the fly (under ``tmp_path``) and checks that

- no code ran (planted pickles would create a marker file),
- no file outside the dataset was read (a spy on ``open`` sees every file opened),
- the user got a uisbench error naming the file, the entry or field, and the fix (never a raw
  traceback, and never the advice to turn torch's safe loader off),
- nothing good was lost (the other images, a run started afresh equals a fresh run, ...).
"""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import math
import os
import pathlib
import pickle
import re
import struct
import textwrap
import time
import tracemalloc
import warnings
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import uisbench
from helpers import REPO_ROOT, FakeEntryPoint
from uisbench.cli import EXIT_DATA, EXIT_USAGE, main

UNSAFE_ADVICE = "weights_only=False"


# ---------------------------------------------------------------------------------------------
# Planted payloads
# ---------------------------------------------------------------------------------------------


class _Touch:
    """Unpickling this calls ``Path(marker).touch()``: a stand-in for whatever code an attacker runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = Path(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _hostile_pickles(tmp_path: Path, marker: Path) -> dict[str, Path]:
    """The payload as torch.save writes it (zip and legacy formats) and as a plain pickle."""
    files = {name: tmp_path / f"{name}.pth" for name in ("torch-zip", "torch-legacy", "plain-pickle")}
    checkpoint = {"model": {"w": torch.zeros(2)}, "payload": _Touch(marker)}
    torch.save(checkpoint, files["torch-zip"])
    torch.save(checkpoint, files["torch-legacy"], _use_new_zipfile_serialization=False)
    files["plain-pickle"].write_bytes(pickle.dumps(_Touch(marker)))
    return files


def test_the_planted_payload_really_runs_code(tmp_path):
    # the control: plain unpickling of the payload used below does run it
    marker = tmp_path / "ran"
    pickle.loads(_hostile_pickles(tmp_path, marker)["plain-pickle"].read_bytes())
    assert marker.exists()


def test_no_unsafe_unpickling_in_the_source():
    """Every torch.load in platform/ and plugins/ is weights-only; nothing else unpickles."""
    forbidden = (UNSAFE_ADVICE, "pickle.load", "yaml.load(", "yaml.unsafe_load", "allow_pickle=True")
    offenders = []
    for tree in ("platform", "plugins"):
        for path in sorted((REPO_ROOT / tree).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            where = path.relative_to(REPO_ROOT)
            # a round trip of an object just made in this process (a picklability check) reads nothing foreign
            checked = text.replace("pickle.loads(pickle.dumps(", "")
            offenders += [f"{where}: {needle}" for needle in forbidden if needle in checked]
            for call in re.finditer(r"torch\.load\(", text):
                depth, end = 1, call.end()
                while depth and end < len(text):
                    depth += {"(": 1, ")": -1}.get(text[end], 0)
                    end += 1
                if "weights_only=True" not in text[call.start() : end]:
                    offenders.append(f"{where}:{text.count(chr(10), 0, call.start()) + 1}: torch.load without weights_only=True")
    assert not offenders, offenders


# ---------------------------------------------------------------------------------------------
# 1. Weights files: backbones (via _vit.read_checkpoint) and the ResNet detector
# ---------------------------------------------------------------------------------------------

TINY_VIT = {"model": "vit_tiny_patch16_224", "size": 32, "model_kwargs": {"depth": 1}, "precision": "fp32"}


@pytest.mark.parametrize("variant", ["torch-zip", "torch-legacy", "plain-pickle"])
@pytest.mark.parametrize("plugin", ["timm", "dino"])
def test_backbone_weights_never_run_code(host, tmp_path, plugin, variant):
    marker = tmp_path / "ran"
    weights = _hostile_pickles(tmp_path, marker)[variant]
    params = dict(TINY_VIT, weights=str(weights))
    if plugin == "dino":
        del params["model"]  # its own tag, built at depth 1
    with pytest.raises(uisbench.DataError) as info:
        host.spec("backbones", plugin).build(**params)
    message = str(info.value)
    assert not marker.exists()
    assert f"weights file {weights}" in message and UNSAFE_ADVICE not in message
    if variant == "plain-pickle":
        assert "plain Python pickle, not a torch checkpoint" in message
    else:  # the objects the safe loader refused are named (all of them where torch can list them), with what to do
        named = "pathlib.Path" if variant == "torch-zip" else "getattr"
        assert re.search(rf"Python objects \([^)]*{named}", message) and "only for a file from a source you trust" in message
        assert "weights_only.pth" in message and "`weights:`" in message


def _zip_checkpoint_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save({"w": torch.arange(1000.0)}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("random-bytes", bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "not a torch checkpoint (it does not start"),
        ("html-error-page", b"<html><body>404 Not Found</body></html>", "it begins like a text file, e.g. an HTML error page"),
        ("empty", b"", "the file is empty; re-download it"),
        ("truncated-zip", _zip_checkpoint_bytes()[:600], "damaged torch checkpoint"),
    ],
)
def test_bad_weights_files_are_told_apart(host, tmp_path, name, content, needle):
    weights = tmp_path / f"{name}.pth"
    weights.write_bytes(content)
    with pytest.raises(uisbench.DataError) as info:
        host.spec("backbones", "timm").build(**TINY_VIT, weights=str(weights))
    message = str(info.value)
    assert needle in message and str(weights) in message
    # not misdiagnosed as "unsafe Python objects", and never the advice to switch the safe loader off
    assert "Python objects" not in message and UNSAFE_ADVICE not in message and "weights_only" not in message


def test_weights_with_foreign_objects_name_them(host, tmp_path):
    import fractions

    weights = tmp_path / "with-objects.pth"
    torch.save({"model": {}, "best": fractions.Fraction(1, 3)}, weights)
    with pytest.raises(uisbench.DataError, match=r"Python objects \(fractions\.Fraction\)") as info:
        host.spec("backbones", "timm").build(**TINY_VIT, weights=str(weights))
    assert UNSAFE_ADVICE not in str(info.value)
    assert info.value.__cause__ is None  # torch's own text advises switching the safe loader off: not passed on


@pytest.fixture(scope="module")
def tiny_synth():
    from uisbench_builtins import synth

    return synth.build("train", images=6, size=64)


@pytest.mark.parametrize("variant", ["torch-zip", "torch-legacy", "plain-pickle", "random-bytes"])
def test_detector_weights_never_run_code(host, tiny_synth, tmp_path, variant):
    marker = tmp_path / "ran"
    files = _hostile_pickles(tmp_path, marker)
    files["random-bytes"] = tmp_path / "random.pth"
    files["random-bytes"].write_bytes(bytes(range(256)) * 4)
    student = host.spec("students", "maskrcnn").build(detector_backbone="resnet18-fpn", detector_weights=str(files[variant]))
    with pytest.raises(uisbench.DataError) as info:
        student._build(tiny_synth, tiny_synth.image_ids()[0])
    assert not marker.exists()
    message = str(info.value)
    assert f"detector_weights file {files[variant]}" in message and UNSAFE_ADVICE not in message
    assert "`detector_weights:`" in message if variant.startswith("torch") else "not a torch checkpoint" in message


# ---------------------------------------------------------------------------------------------
# 1. The student's training checkpoint (resume)
# ---------------------------------------------------------------------------------------------

STUDENT = dict(
    detector_backbone="resnet18-fpn", min_size=64, max_size=64, iterations=2, batch_size=2, optimizer="adamw",
    lr=1e-3, warmup_iters=1, representation_size=64, mask_head_channels=16, anchor_sizes=[8, 16, 32, 64, 128],
    rpn_post_nms_top_n_train=100, rpn_batch_size_per_image=32, box_batch_size_per_image=32, copy_paste=False,
    checkpoint_every=1,
)


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def student_run(tiny_synth, tmp_path_factory):
    """A straight run's final weights, and a genuine checkpoint of the same run cut after iteration 1."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        host = uisbench.host.load_plugins()
    masks = {
        i: [uisbench.Prediction(i, g.segmentation, g.bbox, 1.0) for g in tiny_synth.ground_truth(i)]
        for i in tiny_synth.image_ids()
    }
    root = tmp_path_factory.mktemp("student")
    straight = host.spec("students", "maskrcnn").build(**STUDENT)
    straight.fit(tiny_synth, masks, workdir=root / "straight", seed=1)
    killed = host.spec("students", "maskrcnn").build(**STUDENT)

    def stop(round_index, iteration):
        if iteration == 1:
            raise _Stop

    killed.on_checkpoint = stop
    with pytest.raises(_Stop):
        killed.fit(tiny_synth, masks, workdir=root / "killed", seed=1)
    genuine = torch.load(root / "killed" / "maskrcnn-checkpoint.pt", map_location="cpu", weights_only=True)
    weights = {k: v.clone() for k, v in straight.model.state_dict().items()}
    return SimpleNamespace(host=host, masks=masks, weights=weights, genuine=genuine)


def _saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _tampered(genuine: dict, edit) -> bytes:
    import copy

    state = copy.deepcopy(genuine)
    edit(state)
    return _saved(state)


def _old_format_checkpoint(genuine: dict) -> bytes:
    """What uisbench wrote before: format 1, numpy's RNG state with its ndarray (refused by the safe loader)."""
    import random

    return _saved({**genuine, "format": 1, "rng": {**genuine["rng"], "numpy": np.random.get_state(),
                                                   "python": random.getstate()}})


def _cut_history(state: dict) -> None:
    state["history"]["rounds"] = []


PLANTED = {
    "pickle-payload-torch-zip": lambda run, marker: _saved({"format": 2, "payload": _Touch(marker)}),
    "pickle-payload-plain": lambda run, marker: pickle.dumps({"format": 2, "payload": _Touch(marker)}),
    "random-bytes": lambda run, marker: bytes(np.random.default_rng(1).integers(0, 256, 2048, dtype=np.uint8)),
    "old-format": lambda run, marker: _old_format_checkpoint(run.genuine),
    "not-a-dict": lambda run, marker: _saved([1, 2, 3]),
    # crafted with this run's key: each must be caught before anything is restored
    "model-shape": lambda run, marker: _tampered(run.genuine, lambda s: s["model"].update(
        {next(iter(s["model"])): torch.zeros(3)})),
    "rng-state": lambda run, marker: _tampered(run.genuine, lambda s: s["rng"]["numpy"].update(keys=[1, 2, 3])),
    "optimizer-state": lambda run, marker: _tampered(run.genuine, lambda s: s["optimizer"]["state"][0].update(
        exp_avg=torch.zeros(7))),
    "scheduler": lambda run, marker: _tampered(run.genuine, lambda s: s["scheduler"].update(base_lrs="lr")),
    "history": lambda run, marker: _tampered(run.genuine, _cut_history),
}


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_planted_student_checkpoint_means_starting_afresh(student_run, tiny_synth, tmp_path, name):
    marker = tmp_path / "ran"
    workdir = tmp_path / "work"
    workdir.mkdir()
    checkpoint = workdir / "maskrcnn-checkpoint.pt"
    checkpoint.write_bytes(PLANTED[name](student_run, marker))
    student = student_run.host.spec("students", "maskrcnn").build(**STUDENT)
    with pytest.warns(UserWarning, match=re.escape(str(checkpoint)) + r" .*; starting afresh\.") as record:
        student.fit(tiny_synth, student_run.masks, workdir=workdir, seed=1)
    assert not marker.exists()
    assert not any(UNSAFE_ADVICE in str(w.message) for w in record)
    # afresh means exactly a fresh run, and the bad file is replaced by a good checkpoint
    weights = student.model.state_dict()
    assert all(torch.equal(weights[k], v) for k, v in student_run.weights.items())
    assert student.provenance()["history"]["resumed_from"] is None
    assert torch.load(checkpoint, weights_only=True)["format"] == 2


def test_garbage_self_training_targets_are_remade(student_run, tiny_synth, tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "maskrcnn-targets-round1.json").write_text('{"key": [1, 2', encoding="utf-8")
    student = student_run.host.spec("students", "maskrcnn").build(
        **{**STUDENT, "iterations": 1, "self_training_rounds": 1, "self_training_iterations": 1,
           "self_training_thresholds": [0.0], "self_training_max_detections": 2}
    )
    student.fit(tiny_synth, student_run.masks, workdir=workdir, seed=1)
    saved = json.loads((workdir / "maskrcnn-targets-round1.json").read_text(encoding="utf-8"))
    assert saved["key"] == student._key and student.provenance()["history"]["rounds"][1]["round"] == 1


# ---------------------------------------------------------------------------------------------
# 2. Dataset files stay inside the dataset
# ---------------------------------------------------------------------------------------------

SECRET_VALUE = 201  # no synth image is uniformly this grey


@pytest.fixture
def opened(monkeypatch):
    """Real paths of every file opened from now on (builtins.open and io.open, which PIL and pathlib use);
    a test clears it once its files are written."""
    seen: list[str] = []
    real_open = builtins.open

    def spy(file, *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)):
            seen.append(os.path.realpath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", spy)
    return seen


def _png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _secret(path: Path) -> Path:
    _png(path, np.full((64, 64, 3), SECRET_VALUE, np.uint8))
    return path


def _coco_folder(tmp_path: Path, n: int = 3) -> Path:
    from uisbench_builtins import synth

    root = tmp_path / "dataset"
    uisbench.data.write_coco(synth.build("val", images=n, size=64), root, progress=False)
    return root


def _edit_json(root: Path, edit) -> None:
    path = root / "annotations.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def _image_entry(data: dict, image_id: int) -> dict:
    return next(img for img in data["images"] if img["id"] == image_id)


def _escape(root: Path, how: str, tmp_path: Path) -> Path:
    """Make image 2 of the COCO folder at ``root`` lead outside its image folder; return the outside file."""
    if how == "coco-url":  # LVIS-style name: the last two parts of the url, here "../secret.png"
        secret = _secret(root / "secret.png")
        _edit_json(root, lambda d: _image_entry(d, 2).update(file_name=None, coco_url="http://x/../secret.png"))
        return secret
    secret = _secret(tmp_path / "elsewhere" / "secret.png")
    if how == "absolute":
        _edit_json(root, lambda d: _image_entry(d, 2).update(file_name=str(secret)))
    elif how == "dot-dot":
        _edit_json(root, lambda d: _image_entry(d, 2).update(file_name=os.path.relpath(secret, root / "images")))
    else:  # a symbolic link planted in the image folder
        link = root / "images" / "000002.png"
        link.unlink()
        link.symlink_to(secret)
    return secret


@pytest.mark.parametrize("how", ["absolute", "dot-dot", "symlink", "coco-url"])
def test_coco_files_stay_inside_the_image_folder(tmp_path, opened, how):
    from uisbench_builtins import coco

    root = _coco_folder(tmp_path)
    clean = coco.build("val", root=str(root))
    secret = _escape(root, how, tmp_path)
    opened.clear()  # from here on, nothing may open the outside file
    with pytest.raises(uisbench.DataError) as info:
        coco.build("val", root=str(root))
    message = str(info.value)
    assert str(root / "annotations.json") in message and "image id 2" in message
    assert str(secret.resolve()) in message and "allow_outside_root: true" in message

    ds = coco.build("val", root=str(root), skip_bad_images=True)
    assert ds.image_ids() == [1, 3] and [s["image_id"] for s in ds.skipped] == [2]
    images = [ds.load_image(i) for i in ds.image_ids()]
    images += [b for _, batch, _ in uisbench.data.iter_batches(ds, [1, 2, 3], torch.from_numpy) for b in batch.numpy()]
    assert not any((image == SECRET_VALUE).all() for image in images)
    assert str(secret.resolve()) not in opened
    assert all(ds.ground_truth(i) == clean.ground_truth(i) for i in (1, 3))  # the other images are untouched

    ds = coco.build("val", root=str(root), allow_outside_root=True)  # the owner's explicit opt-in
    assert ds.image_ids() == [1, 2, 3] and (ds.load_image(2) == SECRET_VALUE).all()


def test_images_folder_refuses_links_that_lead_outside(tmp_path, opened):
    from uisbench_builtins import images

    photos = tmp_path / "photos"
    rng = np.random.default_rng(0)
    _png(photos / "a.png", rng.integers(0, 200, (16, 16, 3), dtype=np.uint8))
    _png(photos / "c.png", rng.integers(0, 200, (16, 16, 3), dtype=np.uint8))
    secret = _secret(tmp_path / "elsewhere" / "secret.png")
    (photos / "b.png").symlink_to(secret)
    (photos / "more").symlink_to(secret.parent, target_is_directory=True)  # a linked folder is not walked into
    opened.clear()  # from here on, nothing may open the outside file

    with pytest.raises(uisbench.DataError) as info:
        images.build("val", root=str(photos))
    message = str(info.value)
    assert "image id 2" in message and str(photos / "b.png") in message and str(secret.resolve()) in message
    assert "allow_outside_root: true" in message
    ds = images.build("val", root=str(photos), skip_bad_images=True)
    assert ds.image_ids() == [1, 3] and ds.skipped[0]["image_id"] == 2
    assert all(not (ds.load_image(i) == SECRET_VALUE).all() for i in ds.image_ids())
    assert str(secret.resolve()) not in opened

    ds = images.build("val", root=str(photos), allow_outside_root=True)
    assert ds.image_ids() == [1, 2, 3] and (ds.load_image(2) == SECRET_VALUE).all()


def test_coco_image_that_is_not_a_regular_file(tmp_path):
    from uisbench_builtins import coco

    root = _coco_folder(tmp_path)
    fifo = root / "images" / "000003.png"
    fifo.unlink()
    os.mkfifo(fifo)  # opening it would block the loader for ever
    with pytest.raises(uisbench.DataError, match=r"image id 3: .*000003\.png is not a regular file"):
        coco.build("val", root=str(root))
    assert coco.build("val", root=str(root), skip_bad_images=True).image_ids() == [1, 2]


# ---------------------------------------------------------------------------------------------
# 3. Resource bombs
# ---------------------------------------------------------------------------------------------


def _laughs(indent: str, levels: int = 9) -> str:
    """Lines of a "billion laughs": 10 strings, then each level ten aliases of the one before."""
    lines = [f"{indent}l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for k in range(1, levels):
        lines.append(f"{indent}l{k}: &l{k} [" + ", ".join([f"*l{k - 1}"] * 10) + "]")
    return "\n".join(lines)


BOMBS = {
    "parameter-value": "version: 1\nmaskers:\n  m:\n    plugin: ncut\n    tau:\n" + _laughs("      ") + "\n",
    "model_kwargs": "version: 1\nbackbones:\n  b:\n    plugin: timm\n    model: vit_tiny_patch16_224\n    model_kwargs:\n"
    + _laughs("      ") + "\n",
}


@pytest.mark.parametrize("where", sorted(BOMBS))
def test_yaml_alias_bomb_is_refused_fast_and_small(host, tmp_path, where):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMBS[where], encoding="utf-8")
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(uisbench.ConfigError) as info:
            uisbench.host.load_registry([path], host, include_default=False)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.perf_counter() - started < 5 and peak < 20 * 2**20
    message = str(info.value)
    assert re.search(re.escape(str(path)) + r":1[0-9]: aliases expand this value to more than 100,000 values", message)
    assert "fewer aliases" in message


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("version: 1\nmaskers:\n  m: {plugin: ncut, tau: &x [1, *x]}\n", ":3: alias *x sits inside the node it names"),
        ("version: 1\nmaskers:\n  m: {plugin: ncut, tau: " + "[" * 3000 + "]" * 3000 + "}\n", ":3: values are nested more than 50"),
        ("version: 1\n? [a, b]\n: 1\n", ":2: not valid YAML (found unhashable key)"),
    ],
    ids=["recursive-alias", "deep-nesting", "unhashable-key"],
)
def test_yaml_that_cannot_end_well_is_refused_with_the_line(tmp_path, text, needle):
    path = tmp_path / "reg.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(uisbench.ConfigError) as info:
        uisbench.host.load_registry([path], None, include_default=False)
    assert f"{path}{needle}" in str(info.value)


def test_validate_reports_a_bomb_without_a_traceback(tmp_path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMBS["parameter-value"], encoding="utf-8")
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:1" in err and "alias bomb" in err and "Traceback" not in err


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_claiming(path: Path, width: int, height: int, extra: bytes = b"") -> Path:
    """A PNG of a few dozen bytes whose header claims ``width x height`` pixels (its data: one pixel)."""
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    data = _png_chunk(b"IDAT", zlib.compress(b"\x00\x07\x07\x07"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + extra + data + _png_chunk(b"IEND", b""))
    return path


def test_png_bomb_is_a_data_error_before_decoding(tmp_path):
    from PIL import Image

    bomb = _png_claiming(tmp_path / "bomb.png", 100_000, 100_000)
    limit_before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning must not reach the user either
        for read in (uisbench.data.load_rgb, uisbench.data.image_size):
            with pytest.raises(uisbench.DataError) as info:
                read(bomb)
            message = str(info.value)
            assert str(bomb) in message and "100000 x 100000" in message and "max_image_pixels" in message
        # the limit is ours alone: raised, the header is read (PIL would refuse), nothing decoded
        assert uisbench.data.image_size(bomb, max_pixels=10**10) == (100_000, 100_000)
        # between PIL's warning threshold and our default limit: read quietly
        assert uisbench.data.image_size(_png_claiming(tmp_path / "big.png", 10_000, 10_000)) == (10_000, 10_000)
    assert Image.MAX_IMAGE_PIXELS == limit_before  # PIL's global is left as it was


def test_png_bombs_in_datasets_are_skippable(tmp_path):
    from uisbench_builtins import coco, images

    photos = tmp_path / "photos"
    _png(photos / "a.png", np.zeros((8, 8, 3), np.uint8))
    _png_claiming(photos / "b.png", 100_000, 100_000)
    with pytest.raises(uisbench.DataError, match=r"image id 2: .*b\.png: the header claims 100000 x 100000"):
        images.build("val", root=str(photos))
    ds = images.build("val", root=str(photos), skip_bad_images=True)
    assert ds.image_ids() == [1] and "100000 x 100000" in ds.skipped[0]["reason"]
    # the limit is a dataset parameter, both ways
    with pytest.raises(uisbench.DataError, match=r"a\.png: the header claims 8 x 8 = 64 pixels, over the limit of 63"):
        images.build("val", root=str(photos), max_image_pixels=63)
    assert images.build("val", root=str(photos), max_image_pixels=10**10).record(2).width == 100_000

    # coco: the json's size is checked at build time, the file's header when the image is loaded
    root = _coco_folder(tmp_path)
    _edit_json(root, lambda d: _image_entry(d, 1).update(width=100_000, height=100_000))
    with pytest.raises(uisbench.DataError, match=r"image id 1 \(000001\.png\): 100000 x 100000 = .* over max_image_pixels"):
        coco.build("val", root=str(root))
    _edit_json(root, lambda d: _image_entry(d, 1).update(width=64, height=64))
    _png_claiming(root / "images" / "000003.png", 100_000, 100_000)
    ds = coco.build("val", root=str(root), skip_bad_images=True)
    ids = [i for batch_ids, _, _ in uisbench.data.iter_batches(ds, ds.image_ids(), lambda a: torch.zeros(1))
           for i in batch_ids]
    assert ids == [1, 2] and ds.skipped[0]["image_id"] == 3 and "100000 x 100000" in ds.skipped[0]["reason"]


def test_png_text_chunk_bomb_is_a_data_error(tmp_path):
    ztxt = _png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"A" * (16 << 20)))  # 16 KB that inflate to 16 MB
    path = _png_claiming(tmp_path / "text.png", 1, 1, extra=ztxt)
    with pytest.raises(uisbench.DataError, match=r"text\.png: cannot open image \(ValueError: Decompressed data too large"):
        uisbench.data.load_rgb(path)


def test_eps_disguised_as_png_is_never_rendered(tmp_path):
    from PIL import Image

    path = tmp_path / "photo.png"  # PIL renders EPS by running Ghostscript on it
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nnewpath 0 0 moveto showpage\n%%EOF\n")
    with Image.open(path) as img:  # the control: left to itself PIL takes it for an EPS image
        assert img.format == "EPS"
    with pytest.raises(uisbench.DataError, match=r"photo\.png: not a readable image .*uisbench reads JPEG, PNG"):
        uisbench.data.load_rgb(path)


def test_huge_synth_size_is_a_config_error():
    from uisbench_builtins import synth

    with pytest.raises(uisbench.ConfigError, match=r"size 100000 makes 10,000,000,000 pixels .* use size <= 13377"):
        synth.build("val", size=100_000)


def test_annotation_json_nested_too_deeply(tmp_path):
    from uisbench_builtins import coco

    root = _coco_folder(tmp_path)
    (root / "annotations.json").write_text('{"images": ' + "[" * 100_000 + "]" * 100_000 + "}", encoding="utf-8")
    with pytest.raises(uisbench.DataError, match=r"annotations\.json: JSON nested too deeply"):
        coco.build("val", root=str(root))


# ---------------------------------------------------------------------------------------------
# 4. Bad ground truth is an error, not a number
# ---------------------------------------------------------------------------------------------


def _ann(d: dict) -> dict:
    """The first annotation (of image 1), renamed 555 so that messages can be checked for it."""
    ann = next(a for a in d["annotations"] if a["image_id"] == 1)
    ann["id"] = 555
    return ann


BAD_GROUND_TRUTH = [
    # (case id, edit, the field as the message names it, whether it also names annotation 555)
    ("negative-area", lambda d: _ann(d).update(area=-5.0), "field 'area' is -5.0", True),
    ("nan-area", lambda d: _ann(d).update(area=math.nan), "field 'area' is nan", True),
    ("string-area", lambda d: _ann(d).update(area="12"), "field 'area' is '12'", True),
    ("bool-area", lambda d: _ann(d).update(area=True), "field 'area' is True", True),
    ("nan-bbox", lambda d: _ann(d).update(bbox=[1, 1, math.nan, 4]), "field 'bbox'", True),
    ("infinite-bbox", lambda d: _ann(d).update(bbox=[1, 1, math.inf, 4]), "field 'bbox'", True),
    ("bool-image-id", lambda d: _ann(d).update(image_id=True), "field 'image_id' must be an integer (got True)", True),
    ("float-image-id", lambda d: _ann(d).update(image_id=1.0), "field 'image_id' must be an integer (got 1.0)", True),
    ("bool-id-in-images", lambda d: _image_entry(d, 1).update(id=True), "images[0]: 'id' must be an integer (got True)", False),
    ("float-id-in-images", lambda d: _image_entry(d, 1).update(id=1.0), "images[0]: 'id' must be an integer (got 1.0)", False),
    ("bool-width", lambda d: _image_entry(d, 1).update(width=True), "missing or invalid width/height", False),
    ("iscrowd-2", lambda d: _ann(d).update(iscrowd=2), "field 'iscrowd' must be 0 or 1 (got 2)", True),
    ("iscrowd-string", lambda d: _ann(d).update(iscrowd="yes"), "field 'iscrowd' must be 0 or 1 (got 'yes')", True),
    ("iscrowd-null", lambda d: _ann(d).update(iscrowd=None), "field 'iscrowd' must be 0 or 1 (got None)", True),
    ("segmentation-string", lambda d: _ann(d).update(segmentation="mask.png"), "neither polygons", True),
    ("segmentation-number", lambda d: _ann(d).update(segmentation=7), "neither polygons", True),
    ("rle-counts-number", lambda d: _ann(d).update(segmentation={"size": [64, 64], "counts": 12}), "RLE counts must be", True),
    ("rle-size-number", lambda d: _ann(d).update(segmentation={"size": 64, "counts": "PP"}), "invalid segmentation", True),
    ("rle-overflowing-string", lambda d: _ann(d).update(segmentation={"size": [64, 64], "counts": "0PeQ3"}),
     "compressed RLE counts do not decode to height x width = 4096", True),
    ("rle-overflowing-list", lambda d: _ann(d).update(segmentation={"size": [64, 64], "counts": [0, 5000]}),
     "uncompressed RLE counts must be integers >= 0 adding up to height x width = 4096", True),
    ("nan-polygon", lambda d: _ann(d).update(segmentation=[[1, 1, 9, math.nan, 20, 20]]), "finite numbers", True),
    ("bool-annotation-id", lambda d: _ann(d).update(id=True), "field 'id' must be an integer (got True)", False),
    ("float-annotation-id", lambda d: _ann(d).update(id=1.5), "field 'id' must be an integer (got 1.5)", False),
    ("string-annotation-id", lambda d: _ann(d).update(id="7"), "field 'id' must be an integer (got '7')", False),
]


@pytest.mark.parametrize(("edit", "field", "named"), [c[1:] for c in BAD_GROUND_TRUTH], ids=[c[0] for c in BAD_GROUND_TRUTH])
def test_bad_ground_truth_is_an_error_not_a_number(tmp_path, edit, field, named):
    from uisbench_builtins import coco

    root = _coco_folder(tmp_path)
    clean = coco.build("val", root=str(root))
    _edit_json(root, edit)
    with pytest.raises(uisbench.DataError) as info:
        coco.build("val", root=str(root))
    message = str(info.value)
    assert str(root / "annotations.json") in message and field in message and "--skip-bad-images" in message
    if named:
        assert "annotation 555" in message

    ds = coco.build("val", root=str(root), skip_bad_images=True)
    assert 1 not in ds.image_ids() and ds.image_ids() == [2, 3]
    assert any(field in item["reason"] for item in ds.skipped)
    assert all(ds.ground_truth(i) == clean.ground_truth(i) for i in (2, 3))  # nothing good lost


def test_stated_area_is_kept_and_a_missing_one_is_the_masks(tmp_path):
    from uisbench_builtins import coco

    root = _coco_folder(tmp_path)
    data = json.loads((root / "annotations.json").read_text(encoding="utf-8"))
    first, second = data["annotations"][:2]
    first["area"] = 1234.5  # e.g. COCO's polygon area, which COCOeval's small/medium/large use
    del second["area"]
    (root / "annotations.json").write_text(json.dumps(data), encoding="utf-8")
    ds = coco.build("val", root=str(root))
    by_id = {g.id: g for i in ds.image_ids() for g in ds.ground_truth(i)}
    assert by_id[first["id"]].area == 1234.5
    assert by_id[second["id"]].area == uisbench.masks.area(by_id[second["id"]].segmentation)


def test_odd_but_harmless_category_ids_do_not_crash(tmp_path):
    from uisbench_builtins import coco

    root = _coco_folder(tmp_path)
    _edit_json(root, lambda d: (d["categories"].append({"id": [9], "name": "odd"}), _ann(d).update(category_id=[9])))
    ds = coco.build("val", root=str(root))
    assert next(g for g in ds.ground_truth(1) if g.id == 555).category == "[9]"


# ---------------------------------------------------------------------------------------------
# 5. Clear messages and exit codes instead of tracebacks
# ---------------------------------------------------------------------------------------------


def test_non_utf8_registry_names_file_line_and_byte(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("version: 1\n# caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(uisbench.ConfigError, match=re.escape(f"{path}:2: not UTF-8 text (byte 16, 0xe9)")):
        uisbench.host.load_registry([path], None, include_default=False)
    assert main(["list", "maskers", "--registry", str(path)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "save the registry file as UTF-8" in err and "Traceback" not in err


def _backbone_plugin():
    class Plugin:
        @uisbench.hookimpl
        def uisbench_backbones(self):
            yield uisbench.BackboneSpec(name="same-vit", description="A clashing backbone.", factory=object)

    return Plugin()


def test_conflicting_plugins_are_listed_not_fatal_in_platform_plugins(fake_entry_points, monkeypatch, capsys):
    monkeypatch.delenv("UISBENCH_STRICT_PLUGINS", raising=False)
    fake_entry_points([
        FakeEntryPoint("first", obj=_backbone_plugin(), dist="uisbench-first"),
        FakeEntryPoint("second", obj=_backbone_plugin(), dist="uisbench-second"),
    ])
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "Conflicting names" in out
    assert "backbone 'same-vit' is provided by 'first' (uisbench-first 1.0), 'second' (uisbench-second 1.0)" in out
    assert "dino" in out  # the rest is still listed
    assert main(["plugins", "--all"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("backbone  same-vit")]
    assert len(rows) == 2 and "uisbench-first" in rows[0] + rows[1] and "uisbench-second" in rows[0] + rows[1]
    assert main(["plugins", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["conflicts"]) == 1
    # every other command still refuses, with the clear message
    assert main(["list", "backbones"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "Conflicting plugins: backbone 'same-vit'" in err and "uisbench-second" in err and "Traceback" not in err


def test_data_errors_exit_with_their_own_code(tmp_path, capsys):
    root = _coco_folder(tmp_path)
    secret = _escape(root, "absolute", tmp_path)
    registry = tmp_path / "mine.yaml"
    registry.write_text(textwrap.dedent(f"""\
        version: 1
        datasets:
          mine: {{plugin: coco, root: {root}}}
        """), encoding="utf-8")
    assert main(["data", "check", "mine", "--registry", str(registry), "--workers", "0"]) == EXIT_DATA == 3
    err = capsys.readouterr().err
    assert str(secret) in err and "image id 2" in err and "Traceback" not in err
    assert main(["data", "check", "mine", "--registry", str(registry), "--skip-bad-images", "--workers", "0"]) == 0
    assert "2 images decoded" in capsys.readouterr().out


def test_exit_codes_are_documented_in_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "exit codes:" in out and "3    data error" in out and "2    usage or configuration error" in out
    assert "a work directory without room" in out and "130  interrupted (Ctrl-C, SIGTERM, SIGHUP)" in out


# ---------------------------------------------------------------------------------------------
# Second round (issue 25): secrets and devices behind paths, what validate and the CLI let through
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _deadline(seconds: int):
    """Fail instead of hanging for ever (a FIFO opened for reading blocks until a writer comes)."""
    import signal

    def expired(signum, frame):
        raise AssertionError(f"still blocked after {seconds} s: a FIFO or device was opened")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_case4_no_byte_of_a_file_that_is_not_a_checkpoint_is_echoed(host, tmp_path):
    """A `weights:` symlink to a secret (a copy of /etc/shadow): the message says what the file is not,
    and none of its bytes, in hex or as text, reaches the message (it is written to results.json and bench.log)."""
    secret = tmp_path / "shadow"
    secret.write_bytes(b"root:*:20000:0:99999:7:::\ndaemon:*:20000:0:99999:7:::\n")
    link = tmp_path / "weights.pth"
    link.symlink_to(secret)
    with pytest.raises(uisbench.DataError) as info:
        host.spec("backbones", "timm").build(**TINY_VIT, weights=str(link))
    message = str(info.value)
    assert "not a torch checkpoint" in message and str(link) in message
    head = secret.read_bytes()[:16]
    for width in range(2, 17):
        shown = head[:width]
        assert shown.hex(" ") not in message and shown.hex() not in message
        assert width < 5 or shown.decode() not in message  # shorter text ("ro") occurs in any sentence


@pytest.mark.parametrize("what", ["dev-zero", "dev-urandom", "fifo", "folder"])
def test_case5_weights_that_are_not_regular_files_are_named_so(host, tmp_path, what):
    path = {"dev-zero": Path("/dev/zero"), "dev-urandom": Path("/dev/urandom"), "fifo": tmp_path / "w.pth",
            "folder": tmp_path / "w.pth"}[what]
    if what == "fifo":
        os.mkfifo(path)
    elif what == "folder":
        path.mkdir()
    with _deadline(20), pytest.raises(uisbench.UisbenchError) as info:
        host.spec("backbones", "timm").build(**TINY_VIT, weights=str(path))
    assert f"weights file {path} is not a regular file" in str(info.value) and "not found" not in str(info.value)
    with _deadline(20), pytest.raises(uisbench.DataError, match="is not a regular file"):  # the loader itself, too
        uisbench.weights.read_checkpoint(path)


@pytest.mark.parametrize("what", ["dev-zero", "fifo", "folder"])
def test_case5_annotations_that_are_not_regular_files_are_named_so(tmp_path, what):
    from uisbench_builtins import coco

    root = _coco_folder(tmp_path)
    annotations = root / "annotations.json"
    annotations.unlink()
    if what == "dev-zero":
        annotations.symlink_to("/dev/zero")
    elif what == "fifo":
        os.mkfifo(annotations)
    else:
        annotations.mkdir()
    with _deadline(20), pytest.raises(uisbench.DataError) as info:
        coco.build("val", root=str(root))
    message = str(info.value)
    assert f"annotations: {annotations} is not a regular file" in message and "missing files" not in message


def _validate(tmp_path, capsys, text: str) -> tuple[int, str]:
    path = tmp_path / "mine.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    code = main(["validate", str(path)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.err


def test_case9_validate_checks_path_parameters_without_reading_them(tmp_path, capsys, opened):
    fifo = tmp_path / "fifo.pth"
    os.mkfifo(fifo)
    (tmp_path / "folder.pth").mkdir()
    good = tmp_path / "good.pth"
    good.write_bytes(b"never read by validate")
    opened.clear()
    with _deadline(20):
        code, err = _validate(tmp_path, capsys, f"""\
            version: 1
            backbones:
              gone: {{plugin: timm, model: vit_tiny_patch16_224, weights: {tmp_path}/gone.pth}}
              fifo: {{plugin: timm, model: vit_tiny_patch16_224, weights: {fifo}}}
              dev: {{plugin: timm, model: vit_tiny_patch16_224, weights: /dev/zero}}
              folder: {{plugin: timm, model: vit_tiny_patch16_224, weights: {tmp_path}/folder.pth}}
              good: {{plugin: timm, model: vit_tiny_patch16_224, weights: {good}}}
            datasets:
              nowhere: {{plugin: coco, root: {tmp_path}/no-such-folder}}
            """)
    assert code == 1
    assert f"mine.yaml:3: backbone entry 'gone': parameter 'weights': {tmp_path}/gone.pth not found" in err
    assert f"mine.yaml:4: backbone entry 'fifo': parameter 'weights': {fifo} is not a regular file (a FIFO)" in err
    assert "mine.yaml:5: backbone entry 'dev': parameter 'weights': /dev/zero is not a regular file (a character device)" in err
    assert "mine.yaml:6: backbone entry 'folder': parameter 'weights':" in err and "(a folder)" in err
    assert f"mine.yaml:9: dataset entry 'nowhere': parameter 'root': {tmp_path}/no-such-folder not found" in err
    assert "'good'" not in err and "5 problem(s)" in err
    assert str(good) not in opened and str(fifo) not in opened  # checked with stat, never opened


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "'version: 1' is required"),
        ("# only a comment\n", "'version: 1' is required"),
        ('version: 1\nbackbones:\n  "": {plugin: pixels}\n', ":3: backbone entry '': the name is empty"),
        ("version: 1\nbackbones:\n  pix,comma: {plugin: pixels}\n", ":3: backbone entry 'pix,comma': a name with a comma"),
        ('version: 1\nmaskers:\n  " km": {plugin: kmeans}\n', ":3: masker entry ' km': a name that starts or ends with a space"),
    ],
    ids=["empty", "comment-only", "empty-name", "comma", "space"],
)
def test_case9_validate_refuses_what_the_cli_cannot_select(tmp_path, capsys, text, needle):
    code, err = _validate(tmp_path, capsys, text)
    assert code == 1 and needle in err


@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [
        ("--batch-size", "0", "an integer >= 1"),
        ("--workers", "-1", "an integer >= 0"),
        ("--limit", "0", "an integer >= 1"),
        ("--limit", "-1", "an integer >= 1"),
        ("--bootstrap", "100000000", "an integer >= 0 and <= 10000"),
        ("--bootstrap", "-1", "an integer >= 0 and <= 10000"),
        ("--repeats", "0", "an integer >= 1"),
        ("--seeds", "0", "an integer >= 1"),  # the deprecated name of --repeats
        ("--batch-size", "two", "an integer >= 1"),
    ],
)
def test_case10_bench_options_out_of_range_are_usage_errors(tmp_path, capsys, option, value, needle):
    """Refused while the command line is read (exit 2), naming the option and its range: nothing starts
    (--bootstrap 100000000 ran past 120 s; --limit 0 said "split has no images" without naming --limit)."""
    with pytest.raises(SystemExit) as info:
        main(["bench", "--workdir", str(tmp_path / "w"), "--backbones", "pixels", option, value])
    assert info.value.code == EXIT_USAGE == 2
    err = capsys.readouterr().err
    assert f"argument {option}: must be {needle} (got {value})" in err and not (tmp_path / "w").exists()


def test_repeats_is_the_number_of_repeats_and_seeds_its_deprecated_alias(capsys, monkeypatch):
    """--seed is the bench seed, --repeats how many times the stochastic stages run; the old --seeds still
    sets the repeats, and says on stderr that it is deprecated and which option to use."""
    from uisbench.cli import bench_cmd

    seen = []
    monkeypatch.setattr(bench_cmd, "run", lambda args: seen.append((args.seed, args.repeats)) or 0)
    assert main(["bench", "--backbones", "pixels", "--seed", "7", "--repeats", "3"]) == 0
    assert "deprecated" not in capsys.readouterr().err
    assert main(["bench", "--backbones", "pixels", "--seeds", "2"]) == 0
    err = capsys.readouterr().err
    assert "--seeds is deprecated" in err and "use --repeats 2" in err
    assert seen == [(7, 3), (None, 2)]
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    assert "--repeats N" in out and "--seeds" not in out


def test_case10_python_callers_get_the_same_ranges(tmp_path):
    from uisbench.bench import BenchOptions
    from uisbench.bench._context import BenchContext

    with pytest.raises(uisbench.ConfigError) as info:
        BenchContext(BenchOptions(workdir=tmp_path / "w", batch_size=0, num_workers=-1, limit=0), seed=0, bootstrap=10**8)
    message = str(info.value)
    assert "--batch-size (batch_size) must be an integer >= 1 (got 0)" in message and "--workers (num_workers)" in message
    assert "--limit (limit) must be an integer >= 1 (got 0)" in message and ">= 0 and <= 10000 (got 100000000)" in message


def test_case2_annotations_naming_unlisted_categories_are_a_data_error(tmp_path):
    """Every such instance became "object": recall_single turned into "-" and separability moved, silently.
    The file is inconsistent as a whole, so --skip-bad-images does not hide it either."""
    from uisbench_builtins import coco

    root = _coco_folder(tmp_path)

    def edit(d):
        _ann(d).update(category_id=99)
        other = next(a for a in d["annotations"] if a["image_id"] == 2)
        other.update(id=556, category_id=98)

    _edit_json(root, edit)
    for skip in (False, True):
        with pytest.raises(uisbench.DataError) as info:
            coco.build("val", root=str(root), skip_bad_images=skip)
        message = str(info.value)
        assert str(root / "annotations.json") in message
        assert "category ids 98, 99 are not in its 'categories' list" in message
        assert "category id 98: annotation 556" in message and "category id 99: annotation 555" in message
    _edit_json(root, lambda d: [a.pop("category_id") for a in d["annotations"]])  # no category at all: class-agnostic
    assert {g.category for i in (1, 2, 3) for g in coco.build("val", root=str(root)).ground_truth(i)} == {"object"}


def _blank_png(path: Path, width: int, height: int) -> Path:
    """A black RGB PNG of any size, streamed (a 12000 x 12000 one is 0.4 MB on disk, 432 MB decoded)."""
    compressor, row = zlib.compressobj(1), b"\0" * (1 + 3 * width)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory):
    return _blank_png(tmp_path_factory.mktemp("huge") / "huge.png", 12000, 12000)


@pytest.mark.parametrize("limit_mb", [500, 1000])
def test_case7_an_image_too_big_for_the_memory_left_is_named_without_a_traceback(huge_png, limit_mb):
    """12000 x 12000 is under the pixel cap; under an address-space limit its decoding (PIL: 576 MB)
    or its conversion to an array (432 MB more) runs out: a raw MemoryError before."""
    import subprocess
    import sys

    image = huge_png
    code = textwrap.dedent(f"""\
        import resource, sys
        import uisbench
        from uisbench.data import load_rgb
        resource.setrlimit(resource.RLIMIT_AS, ({limit_mb} << 20, {limit_mb} << 20))
        try:
            load_rgb({str(image)!r}, what="image id 7")
        except uisbench.DataError as err:
            print(err)
            sys.exit(3)
        """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    message = proc.stdout
    assert f"{image} (image id 7): 12000 x 12000 = 144,000,000 pixels" in message and "ran out of memory" in message
    assert "max_image_pixels" in message


def test_case7_memory_running_out_in_the_transform_names_the_image(tmp_path):
    from uisbench_builtins import coco

    root = _coco_folder(tmp_path)

    def greedy(image):
        raise MemoryError  # what a resize of a huge image raises when the memory runs out

    for skip in (False, True):
        dataset = coco.build("val", root=str(root), skip_bad_images=skip)
        batches = uisbench.data.iter_batches(dataset, [1, 2], greedy, batch_size=2)
        if not skip:
            with pytest.raises(uisbench.DataError, match=r"000001\.png \(image id 1\): 64 x 64 = 4,096 pixels .*ran out of memory"):
                list(batches)
        else:
            assert list(batches) == [] and [s["image_id"] for s in dataset.skipped] == [1, 2]


def _jpeg_bytes(seed: int) -> bytes:
    from PIL import Image

    y, x = np.mgrid[0:96, 0:96]
    pixels = np.stack([(x * 2 + seed * 40) % 256, (y * 2) % 256, (x + y) % 256], -1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _damaged_jpeg(data: bytes) -> bytes:
    """Overwrite 40 bytes a third into the entropy-coded data (no 0xFF byte written: no marker made)."""
    out = bytearray(data)
    sos = out.find(b"\xff\xda")
    start = sos + 2 + int.from_bytes(out[sos + 2 : sos + 4], "big")
    at = start + (len(out) - start) // 3
    out[at : at + 40] = bytes(np.random.default_rng(0).integers(0, 255, 40, dtype=np.uint8))
    return bytes(out)


def test_case3_a_corrupt_jpeg_is_a_data_error_or_a_listed_skip(tmp_path):
    from PIL import Image

    from uisbench_builtins import images

    photos = tmp_path / "photos"
    photos.mkdir()
    for k, name in enumerate("abc"):
        (photos / f"{name}.jpg").write_bytes(_jpeg_bytes(k))
    clean = _jpeg_bytes(1)
    (photos / "b.jpg").write_bytes(_damaged_jpeg(clean))
    # the damage is real, and PIL alone decodes it without a word
    broken = np.asarray(Image.open(photos / "b.jpg").convert("RGB")).astype(int)
    good = np.asarray(Image.open(io.BytesIO(clean)).convert("RGB")).astype(int)
    assert (np.abs(broken - good).max(-1) > 30).mean() > 0.2
    dataset = images.build("val", root=str(photos))
    assert (dataset.load_image(1) == np.asarray(Image.open(photos / "a.jpg").convert("RGB"))).all()  # clean ones load
    with pytest.raises(uisbench.DataError, match=r"b\.jpg \(image id 2\): corrupt JPEG data \(.*\)"):
        dataset.load_image(2)
    skipping = images.build("val", root=str(photos), skip_bad_images=True)
    batches = list(uisbench.data.iter_batches(skipping, [1, 2, 3], lambda a: __import__("torch").zeros(1), batch_size=3))
    assert batches[0][0] == [1, 3] and [s["image_id"] for s in skipping.skipped] == [2]
    assert "corrupt JPEG data" in skipping.skipped[0]["reason"]


def test_case5_detector_weights_that_are_not_regular_files_are_named_so(host, tiny_synth, tmp_path):
    fifo = tmp_path / "r50.pth"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        student = host.spec("students", "maskrcnn").build(detector_backbone="resnet18-fpn", detector_weights=str(path))
        with _deadline(20), pytest.raises(uisbench.ConfigError, match=rf"detector_weights '{path}' is not a regular file"):
            student._build(tiny_synth, tiny_synth.image_ids()[0])
