"""scripts/own_images_walkthrough.py: the labels it draws for the README's "Your own images" are what
the README says (24 coins, one instance each), and its COCO files load through the ``coco`` plugin as
the registry entry it writes declares them (val: the coins; train: the nuclei plus every other photo,
unlabelled). Needs scikit-image (the ``docs`` extra); skipped without it."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from helpers import REPO_ROOT

pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def walkthrough():
    spec = importlib.util.spec_from_file_location("own_images_walkthrough", REPO_ROOT / "scripts" / "own_images_walkthrough.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_coin_labels_are_the_24_coins(walkthrough):
    labels = walkthrough.label_coins()
    assert labels.shape == (303, 384) and int(labels.max()) == 24  # the photograph shows 24 coins
    areas = np.bincount(labels.ravel())[1:]
    # one coin each: no speck (the tutorial's leftovers) and no two coins merged into one region
    assert areas.min() > 700 and areas.max() < 4 * np.median(areas)


def test_label_files_load_through_the_coco_plugin(walkthrough, tmp_path):
    from uisbench_builtins import coco

    walkthrough.write_photos(tmp_path / "photos")
    counts = walkthrough.write_labels(tmp_path)
    coins = walkthrough.label_coins()
    val = coco.build("val", root=str(tmp_path / "photos"), images=".", annotations="val-labels.json",
                     train_images=".", train_annotations="train-labels.json", train_unlabelled=True)
    (image_id,) = val.image_ids()
    assert val.record(image_id).file.endswith("coins.png")
    truth = val.ground_truth(image_id)
    assert len(truth) == counts["coins"] == 24
    # the RLE masks decode (pycocotools, inside the plugin) to the label image's own regions
    assert sorted(round(t.area) for t in truth) == sorted(np.bincount(coins.ravel())[1:].tolist())
    train = coco.build("train", root=str(tmp_path / "photos"), images=".", annotations="val-labels.json",
                       train_images=".", train_annotations="train-labels.json", train_unlabelled=True)
    files = {train.record(i).file.rsplit("/", 1)[-1]: len(train.ground_truth(i)) for i in train.image_ids()}
    assert "coins.png" not in files  # held out: never in the train split
    assert files.pop("immunohistochemistry.png") == counts["nuclei"] > 50
    assert set(files) == {f"{name}.png" for name in walkthrough.PHOTOS} - {"coins.png", "immunohistochemistry.png"}
    assert set(files.values()) == {0}  # pseudo-labelled only
    assert json.loads((tmp_path / "photos" / "train-labels.json").read_text())["categories"] == [{"id": 1, "name": "nucleus"}]
