"""Meta-tests of the hook specifications: typed, documented, with an example, one per kind."""

from __future__ import annotations

import inspect

import pytest

import uisbench
from uisbench import hookspecs
from uisbench.types import KINDS, SPEC_TYPES

HOOKS = [f"uisbench_{kind}" for kind in KINDS]


def test_one_hook_per_kind():
    declared = sorted(n for n, f in vars(hookspecs).items() if n.startswith("uisbench_") and callable(f))
    assert declared == sorted(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_marked_typed_and_documented(hook):
    func = getattr(hookspecs, hook)
    assert hasattr(func, "uisbench_spec"), f"{hook} lacks @hookspec"
    doc = inspect.getdoc(func)
    assert doc and "Example::" in doc and "@uisbench.hookimpl" in doc and "versionadded" in doc
    spec_type = SPEC_TYPES[hook.removeprefix("uisbench_")].__name__
    assert spec_type in str(inspect.signature(func).return_annotation)


@pytest.mark.parametrize("kind", KINDS)
def test_hook_roundtrip_through_manager(kind):
    """A plugin implementing the hook of each kind is found, attributed and built lazily."""
    built = []

    def factory(**params):
        built.append(params)
        return object()

    spec_type = SPEC_TYPES[kind]
    extra = {}

    class Plugin:
        pass

    def impl():
        yield spec_type(name=f"t-{kind}", description="Test.", factory=factory, params=(uisbench.Param("p", "int", 1),), **extra)

    setattr(Plugin, f"uisbench_{kind}", staticmethod(uisbench.hookimpl(impl)))
    host = uisbench.host.load_plugins(strict=True, load_entry_points=False, plugins=[("p", Plugin())])
    spec = host.spec(kind, f"t-{kind}")
    assert built == []  # nothing built until asked
    spec.build(p=3)
    assert built == [{"p": 3}]
    assert host.provider(kind, f"t-{kind}").name == "p"


def test_public_api_facade():
    for name in uisbench.__all__:
        assert hasattr(uisbench, name), name
    assert not any(n.startswith("_") and n != "__version__" for n in uisbench.__all__)


def test_plugin_authors_facade_holds_no_host_side_names():
    # Plugin authors import `uisbench`; discovery and registries live in `uisbench.host`.
    for name in ("PluginHost", "load_registry", "Registry", "load_plugins", "get_plugin_manager"):
        assert name not in uisbench.__all__ and not hasattr(uisbench, name), name
    assert callable(uisbench.host.load_plugins) and callable(uisbench.host.load_registry)


def _imports(path):
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            for alias in node.names:
                yield module, alias.name, node.lineno


def test_builtins_use_only_public_names_of_uisbench_and_of_each_other():
    """The built-ins are the templates vendors copy: they may use only what a vendor can use."""
    import re
    from pathlib import Path

    import uisbench_builtins

    root = Path(uisbench_builtins.__file__).parent
    problems = []
    for path in sorted(root.glob("*.py")):
        for module, name, line in _imports(path):
            where = f"{path.name}:{line}"
            parts = module.lstrip(".").split(".")
            if module.startswith("uisbench.") or module == "uisbench":
                if any(p.startswith("_") for p in parts[1:]) or (name or "").startswith("_"):
                    problems.append(f"{where} imports private {module}.{name}")
                if parts[1:2] in (["bench"], ["cli"], ["host"]):
                    problems.append(f"{where} imports host-side {module}")
            elif module.startswith("."):
                sibling = parts[0]
                if sibling.startswith("_"):
                    # A private helper module belongs to exactly one plugin, which says so in its docstring;
                    # a helper may import the other helpers of its own plugin.
                    plugin = path.stem
                    if plugin.startswith("_"):
                        found = re.search(r"Private helper of :mod:`uisbench_builtins\.(\w+)`", path.read_text(encoding="utf-8"))
                        plugin = found.group(1) if found else path.stem
                    owner = f"Private helper of :mod:`uisbench_builtins.{plugin}`"
                    if owner not in (root / f"{sibling}.py").read_text(encoding="utf-8"):
                        problems.append(f"{where} imports {sibling}, a private helper of another plugin")
                elif (name or "").startswith("_"):
                    problems.append(f"{where} imports private name {name} of plugin {sibling}")
    assert problems == []


def test_version_lives_in_a_leaf_module_that_agrees_with_pyproject():
    """One version number: uisbench/_version.py (imports nothing), the facade re-exports it, every module
    that needs it imports the leaf (not the facade, which pulls in ``api``), and pyproject.toml states
    the same number."""
    import ast
    import re

    from helpers import REPO_ROOT
    from uisbench import _version

    pyproject = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    project = pyproject.split("[project]", 1)[1].split("\n[", 1)[0]
    assert re.search(r'^version = "([^"]+)"', project, re.M).group(1) == _version.__version__ == uisbench.__version__
    leaf = ast.parse((REPO_ROOT / "platform/uisbench/_version.py").read_text(encoding="utf-8"))
    assert not [n for n in ast.walk(leaf) if isinstance(n, (ast.Import, ast.ImportFrom))]
    readers = []
    for path in sorted((REPO_ROOT / "platform/uisbench").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if "__version__" not in text:  # parse only the candidates
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and any(a.name == "__version__" for a in node.names):
                readers.append(path.relative_to(REPO_ROOT).as_posix())
                assert (node.module or "").endswith("_version"), f"{path}: import __version__ from uisbench._version"
    assert "platform/uisbench/__init__.py" in readers and len(readers) >= 4, readers
