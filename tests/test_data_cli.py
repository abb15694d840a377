"""`platform data synth` and `platform data check`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from uisbench.cli import main


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_data_synth_is_byte_identical_and_loads_in_pycocotools(tmp_path, capsys):
    from PIL import Image
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    args = ["data", "synth", "--images", "5", "--seed", "3", "--size", "96"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert "wrote 5 images" in capsys.readouterr().out
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert sorted(a) == ["annotations.json"] + [f"images/{i:06d}.png" for i in range(1, 6)]
    assert a == b
    # another seed gives other bytes; rewriting a folder with fewer images drops the stale ones
    assert main(["data", "synth", "--images", "3", "--seed", "4", "--size", "96", "--out", str(tmp_path / "a")]) == 0
    assert len(_files(tmp_path / "a")) == 4 and _files(tmp_path / "a")["annotations.json"] != b["annotations.json"]

    coco = COCO(str(tmp_path / "b" / "annotations.json"))
    assert len(coco.getImgIds()) == 5 and len(coco.getCatIds()) == 6
    assert {c["name"] for c in coco.loadCats(coco.getCatIds())} == {"disc", "square", "triangle", "star", "blob", "ring"}
    for image in coco.loadImgs(coco.getImgIds()):
        pixels = Image.open(tmp_path / "b" / "images" / image["file_name"])
        assert pixels.size == (image["width"], image["height"]) == (96, 96) and pixels.mode == "RGB"
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        assert anns
        for ann in anns:
            mask = coco.annToMask(ann)
            assert mask.shape == (image["height"], image["width"]) and mask.sum() == ann["area"] > 0
            assert ann["iscrowd"] == 0
            assert list(mask_utils.toBbox(coco.annToRLE(ann))) == ann["bbox"]
    info = json.loads((tmp_path / "b" / "annotations.json").read_text())["info"]
    assert info["params"]["seed"] == 3 and info["params"]["split"] == "val"


def test_data_synth_train_split_and_presets(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path / "t"), "--split", "train", "--images", "2", "--size", "64"]) == 0
    assert main(["data", "synth", "--out", str(tmp_path / "v"), "--split", "val", "--images", "2", "--size", "64"]) == 0
    assert _files(tmp_path / "t")["images/000001.png"] != _files(tmp_path / "v")["images/000001.png"]
    assert main(["data", "synth", "--out", str(tmp_path / "l"), "--size", "large", "--images", "1"]) == 0
    from PIL import Image

    assert Image.open(tmp_path / "l" / "images" / "000001.png").size == (480, 480)
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--size-preset", "large", "--size", "small"]) == 2
    assert "contradicts" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "synth", "--out", str(tmp_path / "x"), "--size", "huge"])
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--overlap", "1.5", "--images", "1"]) == 2
    assert "overlap" in capsys.readouterr().err


def test_data_check_reports_bad_images(tmp_path, capsys):
    root = tmp_path / "c"
    assert main(["data", "synth", "--out", str(root), "--images", "3", "--size", "64"]) == 0
    capsys.readouterr()
    broken = root / "images" / "000003.png"
    broken.write_bytes(broken.read_bytes()[:100])
    registry = tmp_path / "mine.yaml"
    registry.write_text(f"version: 1\ndatasets:\n  mine: {{plugin: coco, root: {root}}}\n")

    assert main(["data", "check", "mine", "--registry", str(registry), "--workers", "0"]) == 3  # a data error
    err = capsys.readouterr().err
    assert "000003.png (image id 3)" in err and "--skip-bad-images" in err

    assert main(["data", "check", "mine", "--registry", str(registry), "--skip-bad-images", "--workers", "2"]) == 0
    captured = capsys.readouterr()
    assert "2 images decoded" in captured.out and "1 skipped" in captured.out
    assert "skipped image 3" in captured.err and "000003.png" in captured.err

    assert main(["data", "check", "coco20k", "--set", f"root={tmp_path / 'nowhere'}"]) == 3  # a data error: the dataset files are missing
    err = capsys.readouterr().err
    assert str(tmp_path / "nowhere" / "annotations" / "instances_train2014.json") in err


def test_data_check_synth(capsys):
    assert main(["data", "check", "synth-instances", "--set", "val_images=4", "--set", "size=64", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "4 images decoded" in out and "0 skipped" in out
