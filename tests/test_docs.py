"""The README matches the code: every YAML example in it is a registry file (or a fragment of one)
that `platform validate` accepts, against the installed plugins."""

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
