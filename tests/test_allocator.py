"""The `transferkit` command keeps freed activations in the heap (transferkit/allocator.py): checked
by what glibc itself reports about a large block, in a fresh process each."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "mallinfo2"),
                           reason="glibc >= 2.33 (mallinfo2) only")

# Allocate 64 MiB with malloc and ask glibc how many more bytes it then holds in mmapped blocks.
PROBE = r"""
import ctypes, json, sys
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
from transferkit.cli.main import main
code = main(sys.argv[1:])
before = libc.mallinfo2().hblkhd
p = libc.malloc(64 << 20)
mapped = libc.mallinfo2().hblkhd - before
libc.free(p)
from transferkit.allocator import allocator_state
print("PROBE " + json.dumps({"code": code, "mapped": mapped, "state": allocator_state()}))
"""


def _probe(env_value: str | None, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRANSFERKIT_MALLOC"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    if env_value is not None:
        env["TRANSFERKIT_MALLOC"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("PROBE ")), None)
    assert line, out.stderr[-2000:]
    return {**json.loads(line[6:]), "stderr": out.stderr}


@glibc
def test_the_command_keeps_large_blocks_off_mmap():
    res = _probe(None, "--version")
    assert res["code"] == 0
    assert res["state"].startswith("glibc tuned")
    assert res["mapped"] == 0  # the 64 MiB block came from the heap


@glibc
def test_default_keeps_glibcs_setting():
    res = _probe("default", "--version")
    assert res["code"] == 0
    assert res["state"].startswith("glibc default")
    assert res["mapped"] >= 64 << 20  # glibc's own threshold maps a block this large


@glibc
def test_an_unknown_setting_is_refused_by_name():
    res = _probe("fast", "--version")
    assert res["code"] == 2
    assert "TRANSFERKIT_MALLOC='fast'" in res["stderr"] and "'default'" in res["stderr"]


def test_importing_the_library_changes_nothing():
    code = ("import transferkit, transferkit.api, transferkit.engine; from transferkit.allocator import "
            "allocator_state; print(allocator_state())")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip().startswith("library defaults")
