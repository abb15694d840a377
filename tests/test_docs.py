"""The README matches the code: every YAML example in it is a registry file (or a fragment of one)
that `platform validate` accepts, against the installed plugins; its Python API example and the
command blocks marked to run ("For vendors", "For leaderboard keepers") run as written."""

from __future__ import annotations

import re

import pytest
import yaml

import uisbench
from helpers import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
_FENCED_YAML = re.compile(r"^( *)```yaml\n(.*?)^\1```", re.S | re.M)


def _yaml_blocks() -> list[tuple[int, str]]:
    blocks = []
    for match in _FENCED_YAML.finditer(README):
        indent = len(match.group(1))
        text = "\n".join(line[indent:] for line in match.group(2).splitlines())
        blocks.append((README[: match.start()].count("\n") + 1, text))
    return blocks


def test_readme_has_yaml_examples():
    assert len(_yaml_blocks()) >= 6  # a test that cannot find its subject must fail, not pass


@pytest.mark.parametrize("line,text", _yaml_blocks(), ids=lambda v: f"README.md:{v}" if isinstance(v, int) else "")
def test_readme_yaml_example_validates(tmp_path, host, line, text):
    data = yaml.safe_load(text)
    assert isinstance(data, dict), f"README.md:{line}: not a YAML mapping"
    data.setdefault("version", 1)  # fragments show only the section they are about
    path = tmp_path / "example.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        uisbench.host.load_registry([path], host)
    except uisbench.ConfigError as err:
        pytest.fail(f"README.md:{line}: the example does not validate:\n" + "\n".join(err.problems))


_FENCED_PYTHON = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def test_readme_python_api_example_runs(tmp_path, monkeypatch):
    """The README's example of uisbench.evaluate runs as written (in a scratch folder)."""
    examples = [code for code in _FENCED_PYTHON.findall(README) if "uisbench.evaluate(" in code]
    assert examples, "the README lost its uisbench.evaluate example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(examples[0], "README.md", "exec"), namespace)  # noqa: S102 - our own README
    results = namespace["results"]
    assert results.exit_code == 0 and (tmp_path / "runs" / "notebook" / "results.json").is_file()
    assert namespace["best"]["backbone"] == "pixels" and namespace["best"]["rank"] == 1  # the one contender
    assert results.ranked(calibration=True)[0]["backbone"] == "oracle-instance"  # the calibration ceiling, apart


# README blocks marked to run ("For vendors", "For leaderboard keepers"): shell commands, run as written
_RUN_MARK = "<!-- test_docs runs the next block -->"
_MARKED_BASH = re.compile(r"^" + re.escape(_RUN_MARK) + r"\n```bash\n(.*?)^```", re.S | re.M)


def _run_blocks() -> list[tuple[int, str]]:
    return [(README[: m.start()].count("\n") + 2, m.group(1)) for m in _MARKED_BASH.finditer(README)]


def test_readme_marks_its_command_blocks():
    assert README.count(_RUN_MARK) == len(_run_blocks()) >= 2  # a mark before anything but a bash block is a typo


def _scratch_environment(tmp_path):
    """A fresh virtualenv that sees uisbench's environment (a .pth, nothing downloaded) and puts
    `platform`, `pip` and `pytest` of its own python first on PATH: `pip install` lands there, not in
    the environment the other tests share."""
    import os
    import subprocess
    import sys
    import sysconfig

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(purelib, "_uisbench_parent.pth"), "w") as f:
        f.write(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    for command, module in (("platform", "uisbench"), ("pip", "pip"), ("pytest", "pytest")):
        shim = venv / "bin" / command
        shim.write_text(f'#!/bin/sh\nexec "{python}" -m {module} "$@"\n')
        shim.chmod(0o755)
    return {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
            "UISBENCH_STRICT_PLUGINS": "1", "PIP_NO_INDEX": "1", "PIP_NO_DEPS": "1", "PIP_NO_BUILD_ISOLATION": "0",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTEST_ADDOPTS": "-p no:cacheprovider"}


@pytest.mark.slow
@pytest.mark.parametrize("line,text", _run_blocks(), ids=lambda v: f"README.md:{v}" if isinstance(v, int) else "")
def test_readme_commands_run(tmp_path, line, text):
    """Each marked block runs as written (bash -e, a scratch folder and virtualenv) and exits 0: for the
    keepers' block that includes `--rescore` accepting both runs."""
    import subprocess

    env = _scratch_environment(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", text], cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"README.md:{line}: exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    if "--rescore" in text:
        assert done.stderr.count(": accepted (") == 2, done.stderr[-2000:]
    if "pytest" in text:  # the generated test of the installed distribution ran, not skipped
        assert " passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-2000:]
    if "new-plugin backbone" in text:  # and the bench scored the pip-installed backbone (random init, declared)
        import json

        (results,) = [json.loads(p.read_text()) for p in work.glob("runs/*/results.json")]
        (cell,) = [c for c in results["cells"] if c["backbone"] == "acme-vit"]
        assert cell["status"] == "ok" and cell["pretrained"] is False, cell
        assert cell["pseudo_masks"]["metrics"]["coco"]["values"]["AP50mask"] is not None
