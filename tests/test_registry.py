"""registry.yaml: validated data with file:line errors, user files extending the shipped one."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest

import uisbench
from helpers import REPO_ROOT
from uisbench.registry import load_registry


class _Masker(uisbench.Masker):
    def __init__(self, tau: float = 0.2, n_masks: int = 3, solver: str = "torch"):
        self.tau, self.n_masks, self.solver = tau, n_masks, solver

    def predict(self, features, records):
        return [[] for _ in records]


class _Plugin:
    @uisbench.hookimpl
    def uisbench_maskers(self):
        yield uisbench.MaskerSpec(
            name="cut",
            description="Test masker.",
            factory=_Masker,
            params=(
                uisbench.Param("tau", "float", 0.2, "threshold"),
                uisbench.Param("n_masks", "int", 3, "how many"),
                uisbench.Param("solver", "str", "torch", "which", choices=("torch", "scipy")),
            ),
        )

    @uisbench.hookimpl
    def uisbench_datasets(self):
        yield uisbench.DatasetSpec(
            name="toy",
            description="Test dataset.",
            factory=lambda split="val", root=None: None,
            params=(uisbench.Param("root", "path", uisbench.REQUIRED, "folder"),),
        )


@pytest.fixture
def toy_host():
    return uisbench.host.load_plugins(strict=True, load_entry_points=False, plugins=[("toy", _Plugin())])


def _write(tmp_path, text, name="reg.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


GOOD = """\
version: 1
datasets:
  toy-a: {plugin: toy, root: /data/a}
maskers:
  cut-fast: {plugin: cut, tau: 0.15}
  cut-ref:
    plugin: cut
    solver: scipy
bench:
  maskers: [cut-fast]
  dataset: toy-a
"""


def test_valid_registry_loads(tmp_path, toy_host):
    reg = load_registry([_write(tmp_path, GOOD)], toy_host, include_default=False)
    assert reg.names("maskers") == ["cut-fast", "cut-ref"]
    entry = reg.entry("maskers", "cut-ref")
    assert entry.plugin == "cut" and entry.params == {"solver": "scipy"} and entry.line == 6
    assert reg.resolved_params(entry, toy_host) == {"tau": 0.2, "n_masks": 3, "solver": "scipy"}
    masker = reg.build("maskers", "cut-fast", toy_host)
    assert isinstance(masker, _Masker) and masker.tau == 0.15
    assert reg.bench.maskers == ("cut-fast",) and reg.bench.dataset == "toy-a"
    assert len(reg.sha256) == 64


def test_every_problem_reported_with_file_and_line(tmp_path, toy_host):
    bad = _write(
        tmp_path,
        """\
        version: 1
        datasets:
          toy-a: {plugin: toy}
        maskers:
          a: {plugin: cutt}
          b: {plugin: cut, n_mask: 3}
          c:
            plugin: cut
            tau: high
          d: {plugin: cut, solver: lapack}
        bench:
          maskers: [a, zzz]
          dataset: toy-a
        """,
    )
    with pytest.raises(uisbench.ConfigError) as err:
        load_registry([bad], toy_host, include_default=False)
    text = "\n".join(err.value.problems)
    assert f"{bad}:3:" in text and "missing required parameter 'root'" in text
    assert f"{bad}:5:" in text and "unknown plugin 'cutt'" in text and "Did you mean 'cut'" in text
    assert f"{bad}:6:" in text and "unknown parameter 'n_mask'" in text and "Did you mean 'n_masks'" in text
    assert f"{bad}:9:" in text and "parameter 'tau' expected float" in text
    assert f"{bad}:10:" in text and "must be one of" in text
    assert "unknown entry 'zzz'" in text


@pytest.mark.parametrize(
    "text, needle",
    [
        ("version: 2\n", "'version: 1' is required"),
        ("version: 1\nmaskerz: {}\n", "Did you mean 'maskers'"),
        ("version: 1\nmaskers:\n  a: {plugin: cut}\n  a: {plugin: cut}\n", "appears twice"),
        ("version: 1\nmaskers: [1, 2]\n", "must map entry names"),
        ("version: 1\nmaskers:\n  a: {tau: 1.0}\n", "needs a 'plugin: NAME'"),
        ("version: 1\nmaskers: {a: {plugin: cut}\n", "not valid YAML"),
        ("version: 1\nbench: {maskerss: []}\n", "unknown bench key"),
    ],
)
def test_structural_errors(tmp_path, toy_host, text, needle):
    with pytest.raises(uisbench.ConfigError, match=needle):
        load_registry([_write(tmp_path, text)], toy_host, include_default=False)


def test_yaml_tags_are_not_executed(tmp_path, toy_host):
    evil = _write(tmp_path, "version: 1\nmaskers: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(uisbench.ConfigError, match="not valid YAML"):
        load_registry([evil], toy_host, include_default=False)


def test_user_file_extends_and_overrides(tmp_path, toy_host):
    base = _write(tmp_path, GOOD, "base.yaml")
    user = _write(
        tmp_path,
        """\
        version: 1
        maskers:
          cut-fast: {plugin: cut, tau: 0.3}
          cut-mine: {plugin: cut, n_masks: 5}
        bench:
          maskers: [cut-fast, cut-mine]
        """,
        "user.yaml",
    )
    reg = load_registry([base, user], toy_host, include_default=False)
    assert reg.entry("maskers", "cut-fast").params == {"tau": 0.3}
    assert reg.entry("maskers", "cut-fast").source == str(user)
    assert reg.bench.maskers == ("cut-fast", "cut-mine") and reg.bench.dataset == "toy-a"
    with pytest.raises(uisbench.UnknownNameError, match="Did you mean: cut-mine"):
        reg.entry("maskers", "cut-mnie")


def test_shipped_registry_is_valid():
    out = subprocess.run(
        [sys.executable, "-m", "uisbench", "validate", str(REPO_ROOT / "registry.yaml")],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout


def test_validate_cli_lists_all_problems(tmp_path):
    bad = _write(
        tmp_path,
        """\
        version: 1
        maskers:
          m1: {plugin: nocut}
          m2: {plugin: ncut, n_maskz: 2}
          m3: {plugin: ncut, tau: "0.2"}
        """,
    )
    out = subprocess.run(
        [sys.executable, "-m", "uisbench", "validate", str(bad)], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert out.returncode != 0
    err = out.stderr
    assert f"{bad}:3:" in err and "unknown plugin 'nocut'" in err
    assert f"{bad}:4:" in err and "unknown parameter 'n_maskz'" in err
    assert f"{bad}:5:" in err and "parameter 'tau' expected float" in err


def test_validate_names_the_shipped_file_once_even_by_a_relative_path(tmp_path, monkeypatch, capsys):
    from uisbench.cli import main

    bad = _write(tmp_path, "version: 1\nmaskerz: {}\n")
    monkeypatch.setenv("UISBENCH_REGISTRY", str(bad))
    monkeypatch.chdir(tmp_path)
    assert main(["validate", bad.name]) == 1
    err = capsys.readouterr().err
    assert err.count("unknown top-level key 'maskerz'") == 1, err


# What a run would reject, `platform validate` rejects: each case is checked both ways.
_REJECTED_AT_RUN_TIME = [
    ("backbones", {"plugin": "timm", "model": "vit_tiny_patch16_224", "pretrained": False, "size": 32,
                   "model_kwargs": {"img_size": 96}}, "model_kwargs", "img_size"),
    ("backbones", {"plugin": "dino", "size": 100, "pretrained": False}, "size", "multiple of the patch size 16"),
    ("backbones", {"plugin": "mae", "weights": "/models/mae.pth", "pretrained": False}, "pretrained", "contradicts"),
    ("backbones", {"plugin": "timm", "model": "vit_tiny_patch16_224", "pretrained": False, "size": 32,
                   "std": [0.2, 0.0, 0.2]}, "std", "items must be > 0"),
    ("backbones", {"plugin": "oracle", "size": 100, "patch_size": 8}, "size", "multiple of the patch size 8"),
    ("backbones", {"plugin": "pixels", "histogram_bins": -1}, "histogram_bins", ">= 0"),
    ("students", {"plugin": "maskrcnn", "detector_backbone": "resnet18-fpn", "anchor_sizes": [8, 16]}, "anchor_sizes", "needs 5 sizes"),
    ("students", {"plugin": "maskrcnn", "detector_backbone": "resnet18-fpn", "copy_paste_scale": [1.0, 0.5]},
     "copy_paste_scale", "low <= high"),
    ("students", {"plugin": "maskrcnn", "detector_backbone": "resnet18-fpn", "iterations": 0}, "iterations", ">= 1"),
    ("datasets", {"plugin": "synth-instances", "min_instances": 5, "max_instances": 2}, None, "min_instances <= max_instances"),
]


@pytest.mark.parametrize("kind,body,param,needle", _REJECTED_AT_RUN_TIME, ids=[f"{c[1]['plugin']}-{c[2]}" for c in _REJECTED_AT_RUN_TIME])
def test_validate_rejects_what_the_plugin_rejects_at_run_time(tmp_path, host, kind, body, param, needle):
    import yaml

    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"version": 1, kind: {"bad": body}}, default_flow_style=False, sort_keys=False))
    with pytest.raises(uisbench.ConfigError) as validated:
        uisbench.host.load_registry([path], host)
    text = "\n".join(validated.value.problems)
    assert re.search(rf"{re.escape(str(path))}:\d+: \w+ entry 'bad': ", text) and needle in text, text
    if param is not None:
        assert f"parameter {param!r}" in text
    params = {k: v for k, v in body.items() if k != "plugin"}
    with pytest.raises(uisbench.ConfigError, match=re.escape(needle)):
        host.spec(kind, body["plugin"]).build(**({"split": "val"} if kind == "datasets" else {}), **params)


def test_bench_seeds_bootstrap_and_rank_by_are_validated(tmp_path, host):
    import yaml

    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "bench": {"seeds": 0, "bootstrap": -1, "rank_by": "cocoo.AP50mask"}}))
    with pytest.raises(uisbench.ConfigError) as info:
        uisbench.host.load_registry([path], host)
    text = "\n".join(info.value.problems)
    assert "bench seeds must be an integer >= 1" in text and "bench bootstrap must be an integer >= 0" in text
    assert "rank_by names unknown metric entry 'cocoo'. Did you mean 'coco'?" in text
    path.write_text(yaml.safe_dump({"version": 1, "bench": {"seeds": 3, "rank_by": "student.count-error.count_mae"}}))
    bench = uisbench.host.load_registry([path], host).bench
    assert (bench.seeds, bench.bootstrap, bench.rank_by) == (3, 200, "student.count-error.count_mae")


def test_bench_defaults_follow_the_device(tmp_path, host, registry):
    """On a CPU the default matrix is CPU-sized; `cuda:` keys apply on a GPU; a bad override names its line."""
    cpu, cuda = registry.bench.for_device("cpu"), registry.bench.for_device("cuda")
    assert "dino-vitb8" not in cpu.backbones and {"oracle-instance", "pixels", "dino-vits16-cpu"} <= set(cpu.backbones)
    assert cpu.maskers == cuda.maskers == registry.bench.maskers
    # a GPU gets every backbone but the SSL-family block (scored on request: `--backbones NAME` or `--all`)
    family = {n for n, e in registry.entries["backbones"].items() if e.params.get("family")}
    assert family and not family & set(cuda.backbones) and {"dino-vitb8", "mae-vith14", "pixels"} <= set(cuda.backbones)
    import yaml

    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "bench": {"cpu": {"backbones": ["pixelz"], "seeds": 0}}}))
    with pytest.raises(uisbench.ConfigError) as info:
        uisbench.host.load_registry([path], host)
    text = "\n".join(info.value.problems)
    assert "bench cpu seeds must be an integer >= 1" in text and "bench cpu backbones names unknown entry 'pixelz'" in text
    assert f"{path}:" in text


def test_a_user_file_bench_key_wins_over_the_shipped_device_override(tmp_path, host):
    import yaml

    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "bench": {"backbones": ["pixels"]}}))
    bench = uisbench.host.load_registry([path], host).bench
    assert bench.for_device("cpu").backbones == ("pixels",) == bench.for_device("cuda").backbones
