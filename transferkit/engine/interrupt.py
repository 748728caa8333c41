"""Ctrl-C and `kill` (SIGINT, SIGTERM) stop a run cleanly instead of losing it.

While a run trains, the first signal only sets a flag: the loop finishes the optimisation step it is
in, writes `last/`, and returns; the CLI then exits with 128 + the signal number and prints the
command that resumes the run. A second signal interrupts at once (the previous checkpoint stays).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []


def requested() -> int | None:
    """The signal that asked the run to stop, or None."""
    return _received[0] if _received else None


def _handler(signum, frame):
    if _received:  # the second one: stop now
        raise KeyboardInterrupt
    _received.append(signum)


@contextmanager
def stop_on_signals(enabled: bool = True):
    """Install the handlers for the duration of a run (main thread only; elsewhere a no-op)."""
    _received.clear()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def name(signum: int) -> str:
    return signal.Signals(signum).name
