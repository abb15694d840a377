"""One exception tree for everything uisbench raises on purpose.

Every message says what went wrong *and* what to do about it; callers chain the original
exception (``raise ... from err``) so tracebacks keep the root cause.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "raise_problems",
    "UisbenchError",
    "PluginError",
    "ConfigError",
    "UnknownNameError",
    "BackboneUnavailable",
    "DataError",
    "IncompatibleError",
]


class UisbenchError(Exception):
    """Base class of every error uisbench raises deliberately."""


class PluginError(UisbenchError):
    """A plugin is broken: it failed to import, declared a bad record, or clashes with another."""


class ConfigError(UisbenchError):
    """A registry file or command-line option is invalid.

    ``problems`` holds one line per problem (``file:line: message``) so a validator can list them all.
    """

    def __init__(self, message: str, problems: Iterable[str] = ()) -> None:
        self.problems = list(problems) or [message]
        super().__init__(message)


def raise_problems(where: str, problems: Iterable[tuple[str | None, str]]) -> None:
    """Raise one :class:`ConfigError` listing every ``(parameter or None, message)`` problem, if any.

    A plugin's factory calls it with its spec's ``check`` so that it rejects exactly what
    ``platform validate`` rejects::

        raise_problems("masker ncut", check_ncut_params(params))
    """
    found = [f"{name}: {message}" if name else message for name, message in problems]
    if found:
        raise ConfigError(f"{where}: " + "; ".join(found) + ".", [f"{where}: {line}" for line in found])


class UnknownNameError(UisbenchError, KeyError):
    """A name (plugin, registry entry, split ...) that does not exist; suggests close matches."""

    def __init__(self, kind: str, name: str, available: Iterable[str], hint: str = "") -> None:
        self.kind = kind
        self.name = name
        self.available = sorted(available)
        close = difflib.get_close_matches(name, self.available, n=3, cutoff=0.6)
        parts = [f"Unknown {kind} {name!r}."]
        if close:
            parts.append(f"Did you mean: {', '.join(close)}?")
        if self.available:
            shown = ", ".join(self.available[:20])
            more = f" ... ({len(self.available)} in all)" if len(self.available) > 20 else ""
            parts.append(f"Available: {shown}{more}.")
        else:
            parts.append(f"No {kind} is registered; run `pip install -e .` in the uisbench checkout.")
        if hint:
            parts.append(hint)
        self.message = " ".join(parts)
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.message


class BackboneUnavailable(UisbenchError):
    """A backbone that loads but cannot run here, e.g. its weights are not on disk and we are offline.

    The bench records the cell as *unavailable* (not failed) and goes on with the others.
    """


class DataError(UisbenchError):
    """Input data is unusable: a missing or corrupt image, a malformed annotation file, a bad polygon,
    a weights file that is damaged or refused. ``platform`` exits with code 3 for it (2 for the others)."""


class IncompatibleError(ConfigError):
    """A combination the platform refuses on purpose, e.g. ground-truth-reading (calibration) features
    feeding a student at prediction time. The bench records such a cell as *skipped* with the reason."""
