"""The example plugin honours the uisbench contract, checked by uisbench.testing as a vendor's CI runs it
(`pip install -e . && pytest` here; uisbench's own `make test` runs these functions too)."""

from __future__ import annotations

import importlib.metadata

import pytest
import uisbench_example

import uisbench.testing


def _spec(hook):
    return next(iter(getattr(uisbench_example, hook)()))


def test_backbone_honours_the_contract():
    uisbench.testing.check_backbone(_spec("uisbench_backbones"), {"size": 64, "patch_size": 16})


def test_metric_honours_the_contract():
    uisbench.testing.check_metric(_spec("uisbench_metrics"))


def test_the_installed_distribution_passes_every_check():
    try:
        importlib.metadata.distribution("uisbench-example-plugin")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("uisbench-example-plugin is not installed: `pip install -e .` first")
    checked = uisbench.testing.check_plugin("uisbench-example-plugin", params={"backbones/example-gradients": {"size": 64, "patch_size": 16}})
    assert checked == ["backbones/example-gradients", "metrics/example-masks-per-image"]
