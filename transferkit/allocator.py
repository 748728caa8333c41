"""glibc's malloc, told to keep the memory of freed activations for the next batch.

With glibc's defaults, a block above the mmap threshold (at most 32 MiB; one activation of
EfficientNet-Lite0 at batch 32 and 128 px is up to 50 MB) is mapped fresh from the kernel when a
layer allocates it and unmapped when it is freed, so every forward pass faults the same pages in
again: about a third of an inference batch's time was system time on the 2-core benchmark machine.
Two `mallopt` calls at the start of the process stop that: no mmap for large blocks
(`M_MMAP_MAX` 0: they come from the heap and go back to it) and no trimming of the heap's top below
1 GiB (`M_TRIM_THRESHOLD`). Evaluation and whole runs gain the most; training steps little (there
the activations stay allocated until the backward pass). The price: a higher peak RSS, and up to
1 GiB of freed memory stays with the process instead of going back to the system.
benchmarks/bench_speed.py measures it (the command with and without it); the README holds the numbers.

The `transferkit` command sets this once, first thing (`cli/main.py`), because it owns its process;
importing transferkit as a library changes nothing. `TRANSFERKIT_MALLOC=default` keeps glibc's
defaults. Other C libraries (macOS, Windows, musl) are left alone. What was done is recorded in
each run's environment.json (`allocator`).
"""

from __future__ import annotations

import ctypes
import os
import sys

ENV = "TRANSFERKIT_MALLOC"
M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30

_state: str | None = None  # what tune_allocator did in this process; None: not asked yet


def tune_allocator() -> str:
    """Apply the setting once per process; returns what was done: "glibc tuned", "glibc default
    (TRANSFERKIT_MALLOC=default)" or "not glibc: unchanged"."""
    global _state
    if _state is not None:
        return _state
    choice = os.environ.get(ENV, "auto").strip().lower()
    if choice in ("default", "off", "0", "no", "false"):
        _state = f"glibc default ({ENV}={choice})" if _glibc() else "not glibc: unchanged"
        return _state
    if choice not in ("auto", "tuned", "on", "1", "yes", "true", ""):
        raise ValueError(f"{ENV}={choice!r} is not understood: use 'auto' (tune glibc's malloc, the "
                         "default) or 'default' (leave it as it is)")
    libc = _glibc()
    if libc is None:
        _state = "not glibc: unchanged"
    elif libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1:
        _state = "glibc tuned (no mmap for large blocks, trim threshold 1 GiB)"
    else:  # mallopt returns 0 when it refuses a value
        _state = "glibc refused the setting: unchanged"
    return _state


def allocator_state() -> str:
    """What this process's allocator runs with (for environment.json)."""
    return _state if _state is not None else "library defaults (not set by transferkit in this process)"


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (musl does not)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        return libc
    except (OSError, AttributeError):
        return None
