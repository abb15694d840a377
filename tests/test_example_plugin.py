"""The example third-party distribution shows up like a vendor's plugin would."""

from __future__ import annotations

import importlib.util
import json

import pytest

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
    """Everything the example distribution registers passes uisbench.testing, as a vendor's CI runs it."""
    import uisbench.testing

    checked = uisbench.testing.check_plugin(
        "uisbench-example-plugin", params={"backbones/example-gradients": {"size": 64, "patch_size": 16}}
    )
    assert checked == ["backbones/example-gradients", "metrics/example-masks-per-image"]


def test_the_examples_own_tests_pass(example_installed, monkeypatch):
    """The example's tests/ (what a vendor runs with pytest) pass here too, so `make test` runs them."""
    import importlib.util

    monkeypatch.syspath_prepend(str(EXAMPLE_SRC))
    path = EXAMPLE_SRC / "tests" / "test_uisbench_example.py"
    spec = importlib.util.spec_from_file_location("example_plugin_own_tests", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ran = []
    for name in sorted(n for n in dir(module) if n.startswith("test_")):
        try:
            getattr(module, name)()
            ran.append(name)
        except pytest.skip.Exception:  # "installed" needs the real distribution, not the faked entry point
            assert example_installed == "faked", name
    assert {"test_backbone_honours_the_contract", "test_metric_honours_the_contract"} <= set(ran)
