"""Plugin discovery: a fresh pluggy manager per call, with our own fault-isolating loading loop.

pluggy's ``load_setuptools_entrypoints`` lets one broken plugin take the host down; we load each
entry point ourselves (as conda does), record failures and carry on unless strict mode is on.
Built-ins come through the very same entry-point group as third-party plugins.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import os
import sys
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError, UnknownNameError
from .types import KINDS, SPEC_TYPES, PluginSpec

ENTRY_POINT_GROUP = "uisbench"
BUILTIN_DISTRIBUTION = "uisbench"
_HOOKS = {kind: f"uisbench_{kind}" for kind in KINDS}


@dataclass(frozen=True)
class PluginInfo:
    """A loaded plugin: its entry point, module and the distribution that ships it."""

    name: str
    module: str
    distribution: str
    version: str

    @property
    def builtin(self) -> bool:
        return self.distribution == BUILTIN_DISTRIBUTION


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded or whose hook raised."""

    name: str
    distribution: str
    version: str
    error: str


def _entry_points() -> Iterable[Any]:
    """The one door to ``importlib.metadata`` (tests monkeypatch it with fake entry points)."""
    return importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass
class PluginHost:
    """A plugin manager plus what we learnt while loading it: plugins, failures, spec owners."""

    pm: pluggy.PluginManager
    strict: bool = False
    trace: bool = False
    plugins: dict[str, PluginInfo] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)
    #: kind -> name -> every (spec, plugin name) that provides it (two or more: a conflict)
    _specs: dict[str, dict[str, list[tuple[PluginSpec, str]]]] = field(default_factory=dict)

    # -- loading ---------------------------------------------------------------------------------

    def _fail(self, name: str, dist: str, version: str, err: BaseException, what: str) -> None:
        failure = PluginFailure(name, dist, version, f"{type(err).__name__}: {err}")
        if self.strict:
            raise PluginError(
                f"Plugin {name!r} from distribution {dist} {version} failed to {what}: {failure.error}. "
                "Fix or uninstall it (`pip uninstall " + dist + "`), or run without --strict-plugins."
            ) from err
        warnings.warn(
            f"uisbench: plugin {name!r} ({dist} {version}) failed to {what} and was skipped: {failure.error}",
            stacklevel=3,
        )
        self.failures.append(failure)

    def load_entry_points(self, allowed: set[str] | None) -> None:
        seen: dict[str, str] = {}  # entry-point name -> distribution
        for ep in _entry_points():
            dist = getattr(ep, "dist", None)
            dist_name = (dist.metadata["Name"] if dist is not None else None) or "unknown"
            version = (dist.version if dist is not None else None) or "unknown"
            if ep.name in seen:
                if seen[ep.name] != dist_name:  # never settled silently by load order
                    clash = PluginError(
                        f"entry point {ep.name!r} is also declared by distribution {seen[ep.name]}; "
                        "rename the entry point of one of them or uninstall one"
                    )
                    self._fail(ep.name, dist_name, version, clash, "load")
                continue  # else the same distribution found twice on sys.path (editable + cwd)
            seen[ep.name] = dist_name
            builtin = dist_name == BUILTIN_DISTRIBUTION
            if allowed is not None and not builtin and dist_name not in allowed:
                continue
            if self.pm.get_plugin(ep.name) is not None or self.pm.is_blocked(ep.name):
                continue
            try:
                module = ep.load()
                self.pm.register(module, name=ep.name)
                self._check_hook_names(ep.name)
            except Exception as err:  # isolation is the point: any import error
                self._fail(ep.name, dist_name, version, err, "load")
                continue
            self.plugins[ep.name] = PluginInfo(ep.name, ep.value, dist_name, version)

    def _check_hook_names(self, plugin_name: str) -> None:
        """A ``@hookimpl`` whose name matches no hookspec is a typo: unregister and fail loudly."""
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as err:
            callers = self.pm.get_hookcallers(self.pm.get_plugin(plugin_name)) or []
            bad = [c.name for c in callers if not c.has_spec()]  # this plugin's, not earlier failures'
            self.pm.unregister(name=plugin_name)
            known = list(_HOOKS.values())
            hints = [f"{n!r} -> did you mean {difflib.get_close_matches(n, known, 1, 0.5) or known}?" for n in bad]
            raise PluginError(f"unknown hook name(s) in plugin {plugin_name!r}: {'; '.join(hints) or err}") from err

    def register(self, plugin: object, name: str, distribution: str = "local", version: str = "0") -> None:
        """Register an in-process plugin object (tests, notebooks); bad hook names raise PluginError."""
        self.pm.register(plugin, name=name)
        self._check_hook_names(name)
        self.plugins[name] = PluginInfo(name, repr(plugin), distribution, version)
        self._specs.clear()

    # -- querying --------------------------------------------------------------------------------

    def specs(self, kind: str) -> dict[str, PluginSpec]:
        """Every spec of ``kind`` by name; duplicate names are an error naming every provider."""
        found = self._found(kind)
        conflicts = self.conflicts(kind)
        if conflicts:
            raise PluginError(
                "Conflicting plugins: " + "; ".join(conflicts) + ". Uninstall one of them or rename its entry."
            )
        return {name: owners[0][0] for name, owners in found.items()}

    def providers(self, kind: str) -> dict[str, list[tuple[PluginSpec, PluginInfo | None]]]:
        """Every spec of ``kind`` by name with all its providers, conflicts included and not raised:
        ``platform plugins`` must show both sides of a clash, which :meth:`specs` refuses."""
        return {
            name: [(spec, self.plugins.get(plugin)) for spec, plugin in owners] for name, owners in self._found(kind).items()
        }

    def conflicts(self, kind: str) -> list[str]:
        """One line per name of ``kind`` that several plugins provide, naming each of them."""
        return [
            f"{kind[:-1]} {name!r} is provided by " + ", ".join(self._describe(plugin) for _, plugin in owners)
            for name, owners in sorted(self._found(kind).items())
            if len(owners) > 1
        ]

    def provider(self, kind: str, name: str) -> PluginInfo | None:
        self.specs(kind)
        owners = self._specs[kind].get(name)
        return self.plugins.get(owners[0][1]) if owners else None

    def spec(self, kind: str, name: str) -> PluginSpec:
        specs = self.specs(kind)
        if name not in specs:
            raise UnknownNameError(f"{kind[:-1]} plugin", name, specs, hint="`platform plugins` lists what is installed.")
        return specs[name]

    def _found(self, kind: str) -> dict[str, list[tuple[PluginSpec, str]]]:
        if kind not in SPEC_TYPES:
            raise UnknownNameError("plugin kind", kind, KINDS)
        if kind not in self._specs:
            self._specs[kind] = self._collect(kind)
        return self._specs[kind]

    def _collect(self, kind: str) -> dict[str, list[tuple[PluginSpec, str]]]:
        expected = SPEC_TYPES[kind]
        found: dict[str, list[tuple[PluginSpec, str]]] = {}
        for impl in getattr(self.pm.hook, _HOOKS[kind]).get_hookimpls():
            info = self.plugins.get(impl.plugin_name)
            dist, version = (info.distribution, info.version) if info else ("local", "0")
            try:
                started = time.perf_counter()
                items = list(impl.function() or ())
                if self.trace:
                    ms = (time.perf_counter() - started) * 1000
                    names = ", ".join(getattr(i, "name", "?") for i in items)
                    print(f"uisbench trace: {impl.plugin_name}.{_HOOKS[kind]}() -> [{names}] in {ms:.1f} ms", file=sys.stderr)
                for item in items:
                    if not isinstance(item, expected):
                        raise PluginError(f"{_HOOKS[kind]} yielded {type(item).__name__}, expected {expected.__name__}")
            except Exception as err:
                self._fail(impl.plugin_name, dist, version, err, f"provide {kind}")
                continue
            for item in items:
                found.setdefault(item.name, []).append((item, impl.plugin_name))
        return found

    def _describe(self, plugin_name: str) -> str:
        info = self.plugins.get(plugin_name)
        return f"{plugin_name!r} ({info.distribution} {info.version})" if info else repr(plugin_name)


def load_plugins(
    *,
    strict: bool | None = None,
    load_entry_points: bool = True,
    plugins: Iterable[tuple[str, object]] = (),
) -> PluginHost:
    """Build a fresh :class:`PluginHost`: hookspecs added, entry points loaded, pending hooks checked.

    ``strict`` defaults to ``UISBENCH_STRICT_PLUGINS``; ``UISBENCH_LOAD_PLUGINS`` restricts which
    third-party distributions load (unset: all; empty: built-ins only; comma list: those only).
    ``plugins`` registers extra ``(name, object)`` plugins in-process (tests, notebooks).
    """
    pm = pluggy.PluginManager("uisbench")
    pm.add_hookspecs(hookspecs)
    host = PluginHost(pm, strict=_env_flag("UISBENCH_STRICT_PLUGINS") if strict is None else strict)
    host.trace = _env_flag("UISBENCH_TRACE_PLUGINS")
    raw = os.environ.get("UISBENCH_LOAD_PLUGINS")
    allowed = None if raw is None else {p.strip() for p in raw.split(",") if p.strip()}
    if load_entry_points:
        host.load_entry_points(allowed)
    for name, plugin in plugins:
        host.register(plugin, name)
    if load_entry_points and not any(p.builtin for p in host.plugins.values()) and not host.failures and allowed is None:
        warnings.warn(
            "uisbench: no built-in plugins found; run `pip install -e .` in the uisbench checkout.", stacklevel=2
        )
    return host
