"""kill -9 at random moments, in the first second and in the middle of checkpoint writes: every run
resumes and ends with the same weights, history and metrics as one that was never interrupted.

The training runs in real child processes (forked after the imports, so each start costs
milliseconds, not seconds) that are killed with SIGKILL, the signal nothing can catch."""

import json
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch
from conftest import write_image_folder
from safetensors.torch import load_file

from transferkit.cli import main

TINY = "timm:test_resnet@random"


def _argv(data, out):
    return ["train", str(data), "--backbone", TINY, "--image-size", "32", "--batch-size", "8", "--steps", "6",
            "--strategy", "two_phase", "--eval-every", "2", "--checkpoint-every", "1", "--out", str(out), "--quiet"]


def _child(argv, hook):
    """Runs in the forked process. `hook` makes it kill itself at an exact point of a checkpoint write."""
    from transferkit.store import checkpoint as ck

    def die():
        os.kill(os.getpid(), signal.SIGKILL)
    if hook == "between_renames":  # `last` moved aside, the new copy not yet in place
        real_replace, seen = ck.os.replace, []

        def replace(src, dst):
            if Path(dst).name == "last":
                seen.append(dst)
                if len(seen) == 3:
                    die()
            return real_replace(src, dst)
        ck.os.replace = replace
    elif hook == "mid_build":  # tensors of the new checkpoint written, its state.json not yet
        real_json, seen = ck.atomic_write_json, []

        def write_json(path, obj):
            if Path(path).parent.name.startswith(".last.tmp"):
                seen.append(path)
                if len(seen) == 4:
                    die()
            return real_json(path, obj)
        ck.atomic_write_json = write_json
    os._exit(main(argv))


def _run(argv, hook=None, kill_after=None) -> int | None:
    ctx = multiprocessing.get_context("fork")
    p = ctx.Process(target=_child, args=(argv, hook))
    p.start()
    if kill_after is not None:
        p.join(kill_after)
        if p.is_alive():
            os.kill(p.pid, signal.SIGKILL)
    p.join(120)
    return p.exitcode


def _continue(data, run, **kill) -> int | None:
    """What a user does after a crash: resume when the run has a config, else the same command again."""
    argv = ["train", "--resume", str(run), "--quiet"] if (run / "config.yaml").is_file() else _argv(data, run)
    return _run(argv, **kill)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_random_kills_resume_to_the_uninterrupted_result(tmp_path):
    data = write_image_folder(tmp_path / "images")
    whole, run = tmp_path / "whole", tmp_path / "run"
    t0 = time.time()
    assert _run(_argv(data, whole)) == 0
    duration = time.time() - t0

    rng = random.Random(10)
    kills = [{"kill_after": 0.02}, {"hook": "between_renames"}, {"hook": "mid_build"}]
    kills += [{"kill_after": rng.uniform(0.1, duration)} for _ in range(3)]
    codes = []
    for kill in kills:
        codes.append(_continue(data, run, **kill))
        if (run / "metrics.json").is_file():
            break
    # the kill in the first second and the two inside checkpoint writes always land
    assert codes[:3] == [-signal.SIGKILL] * 3, codes
    assert not list(run.glob(".last.tmp.*")) or not (run / "metrics.json").is_file()
    for _ in range(3):
        if (run / "metrics.json").is_file():
            break
        assert _continue(data, run) == 0

    for name in ("last/model.safetensors", "model.safetensors"):
        a, b = load_file(str(whole / name)), load_file(str(run / name))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{name}: {k}")
    sa, sb = (json.loads((r / "last" / "state.json").read_text())["run_state"] for r in (whole, run))

    def strip(h):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in h]
    assert strip(sa["history"]) == strip(sb["history"]) and sb["done"] and sb["global_step"] == 6
    m_whole, m_run = (json.loads((r / "metrics.json").read_text()) for r in (whole, run))
    # wall-clock seconds per phase are the one thing a resumed run cannot reproduce
    assert m_whole.pop("phase_seconds").keys() == m_run.pop("phase_seconds").keys()
    assert m_whole == m_run
