"""The example third-party distribution shows up like a vendor's plugin would."""

from __future__ import annotations

import importlib.util
import json

import pytest

import uisbench
from helpers import REPO_ROOT, FakeEntryPoint
from uisbench.cli import main

EXAMPLE_SRC = REPO_ROOT / "examples" / "uisbench-example-plugin"


@pytest.fixture
def example_installed(fake_entry_points, monkeypatch):
    """The example plugin via its real entry point if pip-installed, else a faked one."""
    from uisbench import _manager

    if any(ep.name == "example" for ep in _manager._entry_points()):
        return "installed"
    monkeypatch.syspath_prepend(str(EXAMPLE_SRC))
    module = importlib.import_module("uisbench_example")
    fake_entry_points([FakeEntryPoint("example", obj=module, dist="uisbench-example-plugin")])
    return "faked"


def test_example_distribution_declares_entry_point():
    text = (EXAMPLE_SRC / "pyproject.toml").read_text()
    assert "[project.entry-points.uisbench]" in text and 'example = "uisbench_example"' in text


def test_example_appears_in_plugins_and_list(example_installed, capsys):
    assert main(["plugins", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    example = [p for p in data["plugins"] if p["distribution"] == "uisbench-example-plugin"]
    assert example, data
    assert set(example[0]["provides"]) == {"backbone:example-gradients", "metric:example-masks-per-image"}

    assert main(["list", "backbones", "--json"]) == 0
    names = {item["name"]: item for item in json.loads(capsys.readouterr().out)}
    assert "example-gradients" in names  # implicit entry: no registry edit needed
    assert names["example-gradients"]["distribution"] == "uisbench-example-plugin"


def test_example_objects_fulfil_contracts(example_installed):
    import numpy as np
    import torch

    host = uisbench.host.load_plugins()
    backbone = host.spec("backbones", "example-gradients").build(size=64, patch_size=16)
    assert isinstance(backbone, uisbench.Backbone)
    image = (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)
    pixels = torch.stack([backbone.preprocess(image), backbone.preprocess(image)])
    fm = backbone.extract(pixels, [1, 2])
    assert fm.features.shape == (2, 9, 4, 4) and torch.isfinite(fm.features).all()

    metric = host.spec("metrics", "example-masks-per-image").build()
    record = uisbench.ImageRecord(1, None, 70, 50)
    metric.update(uisbench.EvalSample(record, None, []))
    metric.update(uisbench.EvalSample(uisbench.ImageRecord(2, None, 70, 50), None, [None, None]))  # type: ignore[list-item]
    assert metric.compute() == {"masks_per_image": 1.0}
    assert set(metric.compute()) == set(metric.higher_is_better) and metric.headline == ("masks_per_image",)
