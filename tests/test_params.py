"""``uisbench.Param`` bounds and ``uisbench.complete_params``: a factory that declares its parameters
once refuses exactly what ``platform validate`` refuses."""

from __future__ import annotations

import math

import pytest

import uisbench


def test_bounds_are_exact_at_their_edges():
    unit = uisbench.Param("agreement", "float", 0.2, ge=0, lt=1)
    assert unit.bounds == "[0, 1)"
    assert unit.check(0.0) is None and unit.check(0) is None and unit.check(math.nextafter(1.0, 0.0)) is None
    assert unit.check(1.0) == "must lie in [0, 1), got 1.0"
    assert unit.check(-1e-300) == "must lie in [0, 1), got -1e-300"
    assert unit.check(float("nan")) is not None  # NaN is in no interval
    positive = uisbench.Param("lr", "float", 0.01, gt=0)
    assert positive.bounds == "> 0" and positive.check(0.0) == "must be > 0, got 0.0" and positive.check(5e-324) is None
    at_most = uisbench.Param("iou", "float", 0.5, gt=0, le=1)
    assert at_most.bounds == "(0, 1]" and at_most.check(1.0) is None and at_most.check(1.0000001) is not None
    assert uisbench.Param("n", "int", 3, le=3).check(4) == "must be <= 3, got 4"
    assert uisbench.Param("n", "int", 2, lt=3).bounds == "< 3"


def test_bounds_apply_to_every_item_of_a_list_and_nothing_else():
    scores = uisbench.Param("thresholds", "list[float]", [0.7], ge=0, le=1)
    assert scores.check([0.0, 1.0]) is None
    assert scores.check([0.5, 1.5, -2.0]) == "items must lie in [0, 1], got [1.5, -2.0]"
    assert scores.check("x") == "expected list[float], got str 'x'"  # the type is checked first
    assert uisbench.Param("n", "int", None, nullable=True, ge=1).check(None) is None
    with pytest.raises(uisbench.PluginError, match="bounds .* apply to numbers, not to str"):
        uisbench.Param("name", "str", "a", ge=1)
    with pytest.raises(uisbench.PluginError, match="one lower bound"):
        uisbench.Param("x", "float", 1.0, ge=0, gt=0)
    with pytest.raises(uisbench.PluginError, match=r"'x': the default must lie in \[0, 1\), got 1.5"):
        uisbench.Param("x", "float", 1.5, ge=0, lt=1)
    assert uisbench.Param("x", "float", 0.2, ge=0.123456789).bounds == ">= 0.123456789"  # shown as compared


PARAMS = (
    uisbench.Param("members", "list[str]", uisbench.REQUIRED, "who votes"),
    uisbench.Param("low", "int", 1, "at least one", ge=1),
    uisbench.Param("high", "int", 4, "at most thirty", le=30),
)


def _low_below_high(params):
    if params["low"] > params["high"]:
        yield "low", f"must not exceed high ({params['high']})"


def test_complete_params_fills_defaults_and_lists_every_problem_at_once():
    assert uisbench.complete_params("toy", PARAMS, {"members": ["a/b"]}, _low_below_high) == {
        "members": ["a/b"], "low": 1, "high": 4}
    with pytest.raises(uisbench.ConfigError) as err:
        uisbench.complete_params("toy", PARAMS, {"low": 0, "hihg": 3, "high": "4"}, _low_below_high)
    assert err.value.problems == [
        "toy: hihg: unknown parameter",
        "toy: members: missing required parameter (list[str]: who votes)",
        "toy: low: must be >= 1, got 0",
        "toy: high: expected int, got str '4'",
    ]
    # the combination check runs on well-typed values only, as in `platform validate`
    with pytest.raises(uisbench.ConfigError, match="low: must not exceed high"):
        uisbench.complete_params("toy", PARAMS, {"members": [], "low": 5}, _low_below_high)


def test_a_bounded_plugin_parameter_is_refused_the_same_way_by_validate_and_by_the_factory(tmp_path):
    from uisbench_builtins.vote import VoteMasker

    with pytest.raises(uisbench.ConfigError, match=r"agreement: must lie in \[0, 1\), got 1\.0"):
        VoteMasker(["a/b", "c/d"], agreement=1.0)
    with pytest.raises(uisbench.ConfigError, match="pivot_step: unknown parameter"):
        VoteMasker(["a/b"], pivot_step=2)
    path = tmp_path / "r.yaml"
    path.write_text("version: 1\nstudents:\n  s: {plugin: maskrcnn, detector_backbone: resnet18-fpn, lr: 0,\n"
                    "      self_training_thresholds: [0.7, 1.5]}\n")
    with pytest.raises(uisbench.ConfigError) as err:
        uisbench.host.load_registry([path], uisbench.host.load_plugins())
    text = "\n".join(err.value.problems)
    assert f"{path}:3: student entry 's': parameter 'lr' must be > 0, got 0." in text, text
    assert f"{path}:4: student entry 's': parameter 'self_training_thresholds' items must lie in [0, 1], got [1.5]." in text, text
