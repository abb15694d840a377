"""SIGTERM and SIGHUP end a bench the way Ctrl-C does.

Batch schedulers stop a job with SIGTERM (then SIGKILL after a grace period) and a closed terminal
sends SIGHUP; Python's default for both is to die on the spot, without a word. While a bench runs,
both raise :class:`Terminated`, a :class:`KeyboardInterrupt`, so the same path runs as for Ctrl-C:
temporary files are removed, the work directory lock released, finished stages stay cached, and
the command line prints "interrupted; ... rerun the same command to resume" (exit 130).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["Terminated", "terminate_as_interrupt"]

_SIGNALS = ("SIGTERM", "SIGHUP")


class Terminated(KeyboardInterrupt):
    """The run was stopped by SIGTERM or SIGHUP (``signum``)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`Terminated` in the main thread.

    Only signals left at their default are taken: a program embedding the bench keeps its own
    handlers, and ``nohup`` (SIGHUP ignored) keeps working. The first signal raises; later ones are
    ignored while the run unwinds (a scheduler repeating SIGTERM must not interrupt the cleanup), and
    the previous handlers are back when the block ends.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    taken: dict[int, object] = {}
    fired: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if fired:
            return
        fired.append(signum)
        raise Terminated(signum)

    for name in _SIGNALS:
        signum = getattr(signal, name, None)
        if signum is not None and signal.getsignal(signum) is signal.SIG_DFL:
            taken[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, previous in taken.items():
            signal.signal(signum, previous)
