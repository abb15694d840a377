"""The host side of uisbench: finding plugins and reading registries.

Plugin authors never need this module (they import :mod:`uisbench`); tools that *run* plugins do::

    from uisbench import host

    plugins = host.load_plugins()                       # entry points of group "uisbench"
    registry = host.load_registry([host.default_registry_path()], plugins)
    registry.entries["maskers"]["ncut"].params          # resolved, validated parameters

To run the bench itself from Python use :func:`uisbench.evaluate`.
"""

from __future__ import annotations

from ._manager import PluginFailure, PluginHost, PluginInfo, load_plugins
from .registry import BenchDefaults, Entry, Registry, default_registry_path, ensemble_members, load_registry

__all__ = [
    "load_plugins",
    "PluginHost",
    "PluginInfo",
    "PluginFailure",
    "load_registry",
    "default_registry_path",
    "ensemble_members",
    "Registry",
    "Entry",
    "BenchDefaults",
]
