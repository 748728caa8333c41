"""Run folders of dense tasks, by the rules of classification runs (store/runfolder.py): the folder is
claimed before anything is written, run.json records the task, config.yaml rebuilds the run, and
source.json says which weights it started from (with the input normalisation the run was trained with).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import ConfigError, TrainConfig, read_config, save_config
from ..store import checkpoint as ck
from ..store.environment import write_environment
from ..store.runfolder import RUN_META, check_out_dir, claim_out_dir, read_run_meta


def start_run(cfg: TrainConfig, task: str, source: dict, log=print) -> Path:
    """Claim `cfg.out` for a new `task` run and write run.json (with the task), config.yaml,
    environment.json and source.json."""
    check_out_dir(cfg)
    run = claim_out_dir(cfg, overwrite=cfg.overwrite, log=log)
    meta = read_run_meta(run)
    meta["task"] = task
    ck.atomic_write_json(run / RUN_META, meta)
    save_config(dataclasses.replace(cfg, task=task), run / "config.yaml")
    write_environment(run)
    ck.atomic_write_json(run / "source.json", source)
    return run


def open_run(run_dir: str | Path, task: str, needs: tuple[str, ...] = ("model.safetensors",)):
    """(config, source.json) of a finished `task` run, after checking its version and files."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory not found: {run}")
    meta = read_run_meta(run)
    if meta.get("task", task) != task:
        raise ConfigError(f"{run / RUN_META} says this is a {meta.get('task')} run, not {task}")
    for name in ("config.yaml", "source.json", *needs):
        if not (run / name).is_file():
            raise FileNotFoundError(f"{run} is not a finished transferkit {task} run ({name} is missing); "
                                    f"train one with 'transferkit train DATA --task {task} --out DIR'")
    return read_config(run / "config.yaml"), ck.read_json(run / "source.json")


def source_record(bb, size: int, extra: dict | None = None) -> dict:
    """source.json of a dense run: the source's id/arch/hash plus the input normalisation and size."""
    pre = bb.preprocess
    return {**bb.source.to_dict(), "mean": list(pre.mean), "std": list(pre.std), "image_size": size,
            **(extra or {})}


def free_output_dir(output: str | Path, names: list[str]) -> Path:
    """`predict --out DIR`: created if needed; a file we would write that exists already is refused
    (never replaced)."""
    out = Path(output).expanduser()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; dense predictions go into a folder: choose a folder")
    taken = [n for n in names if (out / n).exists()]
    if taken:
        raise FileExistsError(f"--out {out} already holds {taken[0]}"
                              + (f" and {len(taken) - 1} more" if len(taken) > 1 else "")
                              + "; choose an empty or new folder (files are never replaced)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def image_size(cfg: TrainConfig, default: int, multiple: int) -> int:
    """--image-size rounded up to a multiple of the encoder's largest stride (the decoders need it)."""
    size = cfg.image_size or default
    return -(-size // multiple) * multiple


def _as_task(classes: list[str], splits: dict[str, list[tuple[str, str]]]):
    """The shape store/fingerprint.py reads (classes, modality, train/val/test of Examples) over
    (file, label) pairs of a dense run: images, their masks and their annotations."""
    from types import SimpleNamespace

    from ..data.splits import Example
    return SimpleNamespace(classes=list(classes), modality="image",
                           **{name: [Example(str(x), str(label)) for x, label in splits.get(name, [])]
                              for name in ("train", "val", "test")})


def record_data(run: Path, classes: list[str], splits: dict[str, list[tuple[str, str]]]) -> None:
    """fingerprint.json of a dense run: every file it reads, by split, with its size and hash."""
    from ..store.fingerprint import write_fingerprint
    write_fingerprint(run, _as_task(classes, splits))


def check_data(run: Path, cfg: TrainConfig, classes: list[str], splits: dict[str, list[tuple[str, str]]],
               log=print) -> None:
    """A resume stops when the data changed since the run started (store/fingerprint.py), as a
    classification run's does; --resume-inexact continues on the data as it is now."""
    from ..store.fingerprint import check_data_unchanged
    check_data_unchanged(run, cfg, _as_task(classes, splits), log)
