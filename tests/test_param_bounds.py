"""Every numeric parameter of every built-in plugin declares its bounds, and they hold both ways.

The plugins are found through the plugin host (the entry points the bench uses), so a new built-in is
covered without editing this file. For each declared bound one registry entry holds the value just
outside it and one the value just inside; one more entry per plugin holds its defaults. One
``platform validate`` run over that file must refuse each outside value at the line of the parameter,
and what it accepts must build through the plugin's factory, as the bench builds it. Where validate
cannot know (:data:`RUN_TIME_ONLY`), the test shows that the factory does.
"""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

import uisbench

_NUMERIC = ("int", "float", "list[int]", "list[float]")
_VIT = ("dino", "mae", "timm")

#: Numeric parameters without bounds, on purpose: (kind, plugin, parameter) -> why.
UNBOUNDED: dict[tuple[str, str, str], str] = {
    **{("backbones", p, "layer"): "negative counts from the end; its range is the model's depth (see RUN_TIME_ONLY)"
       for p in _VIT},
    **{("backbones", p, "mean"): "a normalisation mean may be any real number" for p in _VIT},
}

#: Checks only the factory can make: (kind, plugin, parameter) -> (a value validate accepts, why it cannot know).
RUN_TIME_ONLY: dict[tuple[str, str, str], tuple[Any, str]] = {
    ("backbones", p, "layer"): (5, "the number of blocks is known only once timm has built the model")
    for p in _VIT
}

#: Limits on the data: validate accepts every value inside the bounds, but whether the data keeps to the
#: value is known only once it is read, so the factory may refuse the data (a DataError naming the
#: parameter): (kind, plugin, parameter) -> why.
DATA_LIMITS: dict[tuple[str, str, str], str] = {
    ("datasets", p, "max_image_pixels"): "an image's size is known only once its header is read" for p in ("coco", "images")
}

#: Values the plugins of this test need to build on a CPU in milliseconds and offline (required
#: parameters, tiny models). Every built-in's defaults are built with these on top.
CONTEXT: dict[tuple[str, str], dict[str, Any]] = {
    # pretrained: true needs timm's weights (network or cache): the ViTs are built with random weights
    ("backbones", "timm"): {"model": "vit_tiny_patch16_224", "pretrained": False, "size": 32, "model_kwargs": {"depth": 1},
                            "std": [0.5, 0.5, 0.5]},
    ("backbones", "dino"): {"pretrained": False, "size": 32, "model_kwargs": {"depth": 1}, "std": [0.5, 0.5, 0.5]},
    ("backbones", "mae"): {"pretrained": False, "size": 32, "model_kwargs": {"depth": 1}, "std": [0.5, 0.5, 0.5]},
    ("maskers", "vote"): {"members": ["a/b", "c/d"]},
    ("datasets", "coco"): {"root": "{coco}"},
    ("datasets", "images"): {"root": "{coco}/images"},
}

#: Built-ins whose default parameters cannot build offline: (kind, plugin) -> why. The ViTs' default
#: ``pretrained: true`` is left out this way (CONTEXT sets ``pretrained: false``); none is skipped whole.
NOT_BUILT: dict[tuple[str, str], str] = {}


def _builtins() -> tuple[Any, list[tuple[str, uisbench.types.PluginSpec]]]:
    host = uisbench.host.load_plugins()
    found = []
    for kind in uisbench.types.KINDS:
        for name, spec in sorted(host.specs(kind).items()):
            info = host.provider(kind, name)
            if info is not None and info.builtin:
                found.append((kind, spec))
    return host, found


def _edges(param: uisbench.Param) -> list[tuple[str, Any, Any]]:
    """Per declared bound: (bound, the value just inside, the value just outside)."""
    integer = param.type in ("int", "list[int]")
    out = []
    if param.ge is not None:
        inside = math.ceil(param.ge) if integer else float(param.ge)
        out.append((f">= {param.ge}", inside, inside - 1 if integer else math.nextafter(inside, -math.inf)))
    if param.gt is not None:
        outside = math.floor(param.gt) if integer else float(param.gt)
        out.append((f"> {param.gt}", outside + 1 if integer else math.nextafter(outside, math.inf), outside))
    if param.le is not None:
        inside = math.floor(param.le) if integer else float(param.le)
        out.append((f"<= {param.le}", inside, inside + 1 if integer else math.nextafter(inside, math.inf)))
    if param.lt is not None:
        outside = math.ceil(param.lt) if integer else float(param.lt)
        out.append((f"< {param.lt}", outside - 1 if integer else math.nextafter(outside, -math.inf), outside))
    return out


def _as_value(param: uisbench.Param, base: Any, number: Any, *, all_items: bool) -> Any:
    """``number`` as a value of ``param``: a list parameter gets it as its first item (or as every
    item), keeping the length of its default so that length rules still pass."""
    if not param.type.startswith("list["):
        return number
    n = len(base) if isinstance(base, list) and base else 1
    return [number] * n if all_items else [number, *(base[1:] if isinstance(base, list) else [])]


def _yaml(value: Any) -> str:
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    text = text.removesuffix("...").strip()
    assert yaml.safe_load(text) == value, (value, text)  # the file says exactly the value meant
    return text


def _cases(found: list[tuple[str, uisbench.types.PluginSpec]]) -> list[dict[str, Any]]:
    """One registry entry per (plugin, role, parameter, bound): defaults, inside, outside, run-time only."""
    cases = []
    for kind, spec in found:
        context = CONTEXT.get((kind, spec.name), {})
        cases.append({"kind": kind, "spec": spec, "role": "defaults", "param": None, "params": dict(context)})
        for param in spec.params:
            base = context.get(param.name, param.default)
            for bound, inside, outside in _edges(param):
                for role, number in (("inside", inside), ("outside", outside)):
                    value = _as_value(param, base, number, all_items=role == "inside")
                    cases.append({"kind": kind, "spec": spec, "role": role, "param": param.name, "bound": bound,
                                  "params": {**context, param.name: value}})
            if (kind, spec.name, param.name) in RUN_TIME_ONLY:
                value = RUN_TIME_ONLY[kind, spec.name, param.name][0]
                cases.append({"kind": kind, "spec": spec, "role": "run-time", "param": param.name,
                              "params": {**context, param.name: value}})
    return cases


def _write_registry(path, cases: list[dict[str, Any]], coco: str) -> None:
    """Block-style YAML, one key a line, so each case knows the line of its entry and of its parameter."""
    lines = ["version: 1"]
    for kind in uisbench.types.KINDS:
        mine = [c for c in cases if c["kind"] == kind]
        if not mine:
            continue
        lines.append(f"{kind}:")
        for i, case in enumerate(mine):
            case["name"] = f"{kind[:-1]}-{i}-{case['spec'].name}-{case['role']}"
            lines.append(f"  {case['name']}:")
            case["line"] = len(lines)
            lines.append(f"    plugin: {case['spec'].name}")
            case["params"] = {k: v.format(coco=coco) if isinstance(v, str) else v for k, v in case["params"].items()}
            for key, value in case["params"].items():
                lines.append(f"    {key}: {_yaml(value)}")
                if key == case["param"]:
                    case["param_line"] = len(lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _build(case: dict[str, Any], backbone: Any) -> Any:
    """The plugin built as the bench builds an entry: its factory on the defaults plus the entry's values."""
    extra = {"split": "val"} if case["kind"] == "datasets" else {"backbone": backbone} if case["kind"] == "students" else {}
    return case["spec"].build(**case["params"], **extra)


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    from uisbench_builtins import synth

    root = tmp_path_factory.mktemp("coco")
    uisbench.data.write_coco(synth.build("val", images=2, size=32), root, progress=False)
    return root


def test_every_numeric_parameter_of_every_builtin_declares_its_bounds():
    _, found = _builtins()
    assert {spec.name for kind, spec in found if kind == "maskers"} >= {"kmeans", "ncut", "vote"}  # the host found them
    unbounded = {(kind, spec.name, p.name) for kind, spec in found for p in spec.params
                 if p.type in _NUMERIC and not p.bounds}
    assert unbounded == set(UNBOUNDED), (
        f"numeric parameters without bounds: {sorted(unbounded - set(UNBOUNDED))}; declare ge/gt/le/lt on their "
        f"uisbench.Param (or list them in UNBOUNDED with the reason). Stale UNBOUNDED entries: {sorted(set(UNBOUNDED) - unbounded)}"
    )
    specs = {(kind, spec.name): spec for kind, spec in found}
    for kind, plugin, name in [*RUN_TIME_ONLY, *DATA_LIMITS]:
        assert (kind, plugin) in specs and specs[kind, plugin].param(name) is not None, (kind, plugin, name)
    assert set(CONTEXT) <= set(specs), sorted(set(CONTEXT) - set(specs))


@pytest.fixture
def bare_registry(tmp_path, monkeypatch):
    """The registry every file extends holds only the bench's default dataset: the problems found are
    the test file's own, whatever the shipped registry.yaml holds."""
    base = tmp_path / "base.yaml"
    base.write_text("version: 1\ndatasets:\n  synth-instances: {plugin: synth-instances}\n", encoding="utf-8")
    monkeypatch.setenv("UISBENCH_REGISTRY", str(base))
    return base


def test_validate_refuses_just_outside_each_bound_and_what_it_accepts_builds(tmp_path, capsys, coco_root, bare_registry):
    from uisbench.cli import main
    from uisbench_builtins.pixels import PixelsBackbone

    _, found = _builtins()
    cases = _cases(found)
    path = tmp_path / "bounds.yaml"
    _write_registry(path, cases, str(coco_root))

    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    refused: dict[str, list[tuple[int, str]]] = {}
    for line, entry, message in re.findall(rf"^  {re.escape(str(path))}:(\d+): \w+ entry '([^']+)': (.*)$", err, re.M):
        refused.setdefault(entry, []).append((int(line), message))
    assert sum(map(len, refused.values())) == len(re.findall(r"^  \S", err, re.M)), err  # every problem is an entry's

    backbone = PixelsBackbone(size=32, patch_size=8)  # the frozen backbone a frozen-ssl student needs
    built, agreed = 0, 0
    for case in cases:
        what = f"{case['kind'][:-1]} {case['spec'].name} {case['role']} {case.get('param')} {case.get('bound', '')}: {case['params']}"
        problems = refused.get(case["name"], [])
        if case["role"] == "outside":
            assert [line for line, _ in problems] == [case["param_line"]], (what, problems)
            assert problems[0][1].startswith(f"parameter {case['param']!r} "), (what, problems)
            assert "must" in problems[0][1], (what, problems)
            with pytest.raises(uisbench.ConfigError, match=re.escape(case["param"])):  # the factory refuses it too
                _build(case, backbone)
        elif case["role"] == "run-time":
            assert not problems, (what, problems)
            with pytest.raises(uisbench.ConfigError, match=re.escape(case["param"])):
                _build(case, backbone)
        elif (case["kind"], case["spec"].name) in NOT_BUILT:
            continue
        elif problems:
            # inside every bound, refused by the plugin's check of a combination (e.g. a size that is no
            # multiple of the patch size): the factory must refuse it the same way
            assert all(not message.startswith(f"parameter {case['param']!r} must") for _, message in problems), (what, problems)
            with pytest.raises(uisbench.ConfigError):
                _build(case, backbone)
            agreed += 1
        else:
            try:
                _build(case, backbone)
            except uisbench.DataError as err:
                if (case["kind"], case["spec"].name, case["param"]) not in DATA_LIMITS or case["param"] not in str(err):
                    pytest.fail(f"validate accepts {what} but the factory refuses it: {type(err).__name__}: {err}")
                continue
            except Exception as err:  # noqa: BLE001 - the message names the case
                pytest.fail(f"validate accepts {what} but the factory refuses it: {type(err).__name__}: {err}")
            built += 1
    assert built > 2 * agreed, (built, agreed)  # the check above is about edges, not most values


def test_kmeans_of_the_issue_is_refused_by_validate_with_each_line(tmp_path, capsys, bare_registry):
    """The entry of issue 21, item 3: every bad value is named at its line, none waits for the run."""
    from uisbench.cli import main

    path = tmp_path / "r.yaml"
    path.write_text("version: 1\nmaskers:\n  k:\n    plugin: kmeans\n    iters: 0\n    n_init: 0\n    ks: [0, 1]\n"
                    "  e:\n    plugin: kmeans\n    ks: []\n")
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:5: masker entry 'k': parameter 'iters' must be >= 1, got 0." in err, err
    assert f"{path}:6: masker entry 'k': parameter 'n_init' must be >= 1, got 0." in err, err
    assert f"{path}:7: masker entry 'k': parameter 'ks' items must be >= 1, got [0]." in err, err
    assert f"{path}:10: masker entry 'e': parameter 'ks' must name at least one number of clusters" in err, err
    from uisbench_builtins.kmeans import KMeansMasker

    with pytest.raises(uisbench.ConfigError, match=r"ks: items must be >= 1, got \[0\]; iters: must be >= 1, got 0; n_init: must be >= 1, got 0"):
        KMeansMasker(iters=0, n_init=0, ks=[0, 1])


def test_finetune_student_overrides_are_checked_like_the_student_entry(tmp_path, capsys, bare_registry):
    """The few-label stage builds each student with the finetune entry's overrides on top: validate
    checks that combination with the student's own check, at the line of the override."""
    from uisbench.cli import main

    path = tmp_path / "r.yaml"
    path.write_text("version: 1\nstudents:\n  s: {plugin: maskrcnn, detector_backbone: resnet18-fpn}\nfinetune:\n"
                    "  few:\n    budgets: [0, 8]\n    student:\n      iterations: 0\n      copy_paste_scale: [1.0, 0.5]\n"
                    "  fine:\n    budgets: [0, 8]\n    student: {iterations: 5, lr: 0.0005}\n")
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count(f"{path}:") == 1 + 1, err  # the header line and one problem: 'fine' passes
    assert (f"{path}:8: finetune entry 'few': student parameter 'iterations' must be >= 1, got 0 "
            "(over student entry 's').") in err, err
    path.write_text(path.read_text().replace("iterations: 0", "iterations: 3"))
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:9: finetune entry 'few': student parameter 'copy_paste_scale' is [low, high] with low <= high" in err, err
