"""Plugin discovery: isolation of broken plugins, strict mode, allow-lists, duplicates, typos."""

from __future__ import annotations

import pytest

import uisbench
from helpers import FakeEntryPoint
from uisbench import _manager


class _Metric(uisbench.Metric):
    higher_is_better = {"n": True}

    def __init__(self):
        super().__init__()
        self.add_state("n", default=0, merge="sum")

    def update(self, sample):
        self.n += 1

    def compute(self):
        return {"n": float(self.n)}


def _metric_plugin(name: str):
    class Plugin:
        @uisbench.hookimpl
        def uisbench_metrics(self):
            yield uisbench.MetricSpec(
                name=name, description="Counts images.", factory=_Metric
            )

    return Plugin()


def test_builtins_load_through_entry_points():
    host = uisbench.host.load_plugins(strict=True)
    assert host.plugins, "no plugins found: is the project installed (`pip install -e .`)?"
    builtins = [p for p in host.plugins.values() if p.builtin]
    assert builtins and all(p.distribution == "uisbench" for p in builtins)
    assert not host.failures


def test_fresh_manager_per_call():
    a = uisbench.host.load_plugins(strict=True)
    b = uisbench.host.load_plugins(strict=True)
    assert a.pm is not b.pm


def test_broken_plugin_is_isolated_and_listed(fake_entry_points, monkeypatch, capsys):
    monkeypatch.delenv("UISBENCH_STRICT_PLUGINS", raising=False)
    fake_entry_points(
        [
            FakeEntryPoint("broken", error=ImportError("no module named vendor_cuda_ext"), dist="uisbench-broken"),
            FakeEntryPoint("good", obj=_metric_plugin("good-metric"), dist="uisbench-good"),
        ],
        keep_real=False,
    )
    with pytest.warns(UserWarning, match="broken.*uisbench-broken.*vendor_cuda_ext"):
        host = uisbench.host.load_plugins()
    assert [f.name for f in host.failures] == ["broken"]
    assert host.failures[0].distribution == "uisbench-broken"
    assert "good-metric" in host.specs("metrics")

    from uisbench.cli import main

    with pytest.warns(UserWarning):
        assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "Failed to load" in out and "broken" in out and "vendor_cuda_ext" in out
    assert "good" in out


def test_strict_mode_fails(fake_entry_points, monkeypatch):
    fake_entry_points([FakeEntryPoint("broken", error=ImportError("boom"), dist="uisbench-broken")], keep_real=False)
    with pytest.raises(uisbench.PluginError, match="broken.*uisbench-broken.*boom"):
        uisbench.host.load_plugins(strict=True)
    monkeypatch.setenv("UISBENCH_STRICT_PLUGINS", "1")
    with pytest.raises(uisbench.PluginError):
        uisbench.host.load_plugins()
    from uisbench.cli import main

    monkeypatch.delenv("UISBENCH_STRICT_PLUGINS")
    assert main(["plugins", "--strict-plugins"]) == 2


def test_load_plugins_allow_list(fake_entry_points, monkeypatch):
    fake_entry_points(
        [
            FakeEntryPoint("one", obj=_metric_plugin("metric-one"), dist="uisbench-one"),
            FakeEntryPoint("two", obj=_metric_plugin("metric-two"), dist="uisbench-two"),
            FakeEntryPoint("builtin", obj=_metric_plugin("metric-builtin"), dist="uisbench"),
        ],
        keep_real=False,
    )
    monkeypatch.setenv("UISBENCH_LOAD_PLUGINS", "")
    host = uisbench.host.load_plugins(strict=True)
    assert "metric-one" not in host.specs("metrics") and "metric-two" not in host.specs("metrics")
    assert "metric-builtin" in host.specs("metrics")  # built-ins always load
    monkeypatch.setenv("UISBENCH_LOAD_PLUGINS", "uisbench-two")
    host = uisbench.host.load_plugins(strict=True)
    assert "metric-two" in host.specs("metrics") and "metric-one" not in host.specs("metrics")
    monkeypatch.delenv("UISBENCH_LOAD_PLUGINS")
    host = uisbench.host.load_plugins(strict=True)
    assert {"metric-one", "metric-two"} <= set(host.specs("metrics"))


def test_duplicate_names_name_both_providers(fake_entry_points):
    fake_entry_points(
        [
            FakeEntryPoint("first", obj=_metric_plugin("same-name"), dist="uisbench-first"),
            FakeEntryPoint("second", obj=_metric_plugin("same-name"), dist="uisbench-second"),
        ],
        keep_real=False,
    )
    host = uisbench.host.load_plugins(strict=True)
    with pytest.raises(uisbench.PluginError) as err:
        host.specs("metrics")
    assert "same-name" in str(err.value) and "uisbench-first" in str(err.value) and "uisbench-second" in str(err.value)


def test_misspelt_hook_fails_loudly(fake_entry_points):
    class Typo:
        @uisbench.hookimpl
        def uisbench_backbone(self):  # missing trailing "s"
            return []

    fake_entry_points([FakeEntryPoint("typo", obj=Typo(), dist="uisbench-typo")], keep_real=False)
    with pytest.raises(uisbench.PluginError, match="uisbench_backbone.*did you mean.*uisbench_backbones"):
        uisbench.host.load_plugins(strict=True)
    with pytest.warns(UserWarning, match="typo"):
        host = uisbench.host.load_plugins(strict=False)
    assert [f.name for f in host.failures] == ["typo"]


def test_hook_yielding_wrong_type_is_a_plugin_error():
    class Wrong:
        @uisbench.hookimpl
        def uisbench_maskers(self):
            yield {"name": "not-a-spec"}

    host = uisbench.host.load_plugins(strict=True, load_entry_points=False, plugins=[("wrong", Wrong())])
    with pytest.raises(uisbench.PluginError, match="expected MaskerSpec"):
        host.specs("maskers")


def test_unknown_name_suggests():
    host = uisbench.host.load_plugins(strict=True, load_entry_points=False, plugins=[("m", _metric_plugin("count-errors"))])
    with pytest.raises(uisbench.UnknownNameError, match="Did you mean: count-errors"):
        host.spec("metrics", "count-error")
    assert isinstance(uisbench.UnknownNameError("x", "y", []), KeyError)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "Has Caps"}, "invalid"),
        ({"description": ""}, "description"),
        ({"description": "two\nlines"}, "description"),
        ({"factory": "not callable"}, "factory"),
        ({"params": (uisbench.Param("a", "int", 1), uisbench.Param("a", "int", 2))}, "duplicate"),
    ],
)
def test_spec_records_validate_themselves(kwargs, match):
    base = {"name": "ok-name", "description": "Fine.", "factory": _Metric}
    with pytest.raises(uisbench.PluginError, match=match):
        uisbench.MetricSpec(**{**base, **kwargs})


def test_param_type_checks():
    p = uisbench.Param("k", "list[int]", [2, 3])
    assert p.check([2, 3]) is None
    assert "list[int]" in p.check(["a"])
    assert "bool" in uisbench.Param("n", "int", 1).check(True)
    assert uisbench.Param("x", "float", 1.0).check(2) is None
    assert "one of" in uisbench.Param("s", "str", "a", choices=("a", "b")).check("c")
    with pytest.raises(uisbench.PluginError):
        uisbench.Param("bad", "complex")


def test_entry_points_reached_through_one_function():
    # Tests (and tools) monkeypatch this single door to importlib.metadata.
    assert callable(_manager._entry_points)
    assert all(hasattr(ep, "load") for ep in _manager._entry_points())


def test_plugins_command_lists_builtins_and_specs(capsys):
    from uisbench.cli import main

    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for builtin in ("synth-instances", "dino", "ncut", "maskrcnn", "coco-metric"):
        assert builtin in out
    assert "built-in" in out
    assert main(["plugins", "--all"]) == 0
    out = capsys.readouterr().out
    assert "masker" in out and "kmeans" in out and "instance-awareness" in out


def test_trace_env_reports_hook_calls(monkeypatch, capsys):
    monkeypatch.setenv("UISBENCH_TRACE_PLUGINS", "1")
    host = uisbench.host.load_plugins(strict=True, load_entry_points=False, plugins=[("traced", _metric_plugin("m-traced"))])
    host.specs("metrics")
    assert "uisbench trace: traced.uisbench_metrics() -> [m-traced]" in capsys.readouterr().err


def test_entry_point_name_clash_between_distributions_is_not_silent(fake_entry_points, monkeypatch):
    monkeypatch.delenv("UISBENCH_STRICT_PLUGINS", raising=False)
    fake_entry_points(
        [
            FakeEntryPoint("vit", obj=_metric_plugin("metric-a"), dist="uisbench-a"),
            FakeEntryPoint("vit", obj=_metric_plugin("metric-b"), dist="uisbench-b"),
        ],
        keep_real=False,
    )
    with pytest.raises(uisbench.PluginError, match="'vit'.*uisbench-b.*also declared by distribution uisbench-a"):
        uisbench.host.load_plugins(strict=True)
    with pytest.warns(UserWarning, match="uisbench-a"):
        host = uisbench.host.load_plugins()
    assert [(f.name, f.distribution) for f in host.failures] == [("vit", "uisbench-b")]
    assert "metric-a" in host.specs("metrics")


def test_typo_message_names_only_that_plugins_hooks(fake_entry_points, monkeypatch):
    monkeypatch.delenv("UISBENCH_STRICT_PLUGINS", raising=False)

    class First:
        @uisbench.hookimpl
        def uisbench_metricz(self):
            return []

    class Second:
        @uisbench.hookimpl
        def uisbench_datasetz(self):
            return []

    fake_entry_points(
        [FakeEntryPoint("first", obj=First(), dist="uisbench-1"), FakeEntryPoint("second", obj=Second(), dist="uisbench-2")],
        keep_real=False,
    )
    with pytest.warns(UserWarning):
        host = uisbench.host.load_plugins()
    errors = {f.name: f.error for f in host.failures}
    assert "uisbench_metricz" in errors["first"] and "uisbench_datasetz" in errors["second"]
    assert "uisbench_metricz" not in errors["second"], errors["second"]
