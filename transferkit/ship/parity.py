"""Parity of an exported model with the run it came from: logits on the run's own test split.

An export is only as good as the proof that it computes what the run computes. Each exporter hands
back a loader for what it wrote; we run both on the same inputs (taken from `RUN/splits.csv`) and
require max |logit difference| <= tolerance and the same top-1 class on every input.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..data import DataError, Example, read_items
from ..infer.loaders import eval_loader, make_dataset

TOLERANCE = 1e-4


class ParityError(ValueError):
    """The exported model does not reproduce the run's logits."""


@dataclass
class ParityReport:
    format: str
    n_inputs: int
    max_abs_diff: float
    top1_agree: int
    tolerance: float = TOLERANCE

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.top1_agree == self.n_inputs

    def line(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        return (f"parity {self.format}: {self.n_inputs} test inputs, max |logit diff| "
                f"{self.max_abs_diff:.2e} (tolerance {self.tolerance:.0e}), top-1 identical on "
                f"{self.top1_agree}/{self.n_inputs}: {verdict}")

    def to_dict(self) -> dict:
        return {"format": self.format, "n_inputs": self.n_inputs, "max_abs_diff": self.max_abs_diff,
                "top1_agree": self.top1_agree, "tolerance": self.tolerance, "ok": self.ok}


def split_examples(run: Path, cfg, modality: str, *, data: str | None = None,
                   limit: int = 32) -> list[Example]:
    """Up to `limit` items of the run's test split, resolved from `splits.csv` against the data files
    (`data` replaces the recorded DATA path when the data moved)."""
    splits = run / "splits.csv"
    if not splits.is_file():
        raise FileNotFoundError(f"{splits} is missing: parity is checked on the run's test split")
    with open(splits, newline="", encoding="utf-8") as f:
        refs = [r["item"] for r in csv.DictReader(f) if r["split"] == "test"][:limit]
    if not refs:
        raise DataError(f"{splits} lists no test items to check the export on")
    sources = [data or cfg.data] + ([cfg.test] if cfg.test else [])
    by_ref: dict[str, Example] = {}
    for src in sources:
        if not src or not Path(src).exists():
            raise DataError(f"the run's data {src!r} is not there to check the export on; pass "
                            "--data PATH where the training data now lives")
        items, _ = read_items(src, modality, text_col=cfg.text_col, label_col=cfg.label_col)
        by_ref.update({e.ref or e.x: e for e in items})
    missing = [r for r in refs if r not in by_ref]
    if missing:
        raise DataError(f"{len(missing)} test item(s) of {splits} are not in {sources[0]} (e.g. "
                        f"{missing[0]!r}); pass --data PATH with the data the run was trained on")
    return [by_ref[r] for r in refs]


def split_batches(model, run: Path, cfg, *, data: str | None = None, limit: int = 32,
                 batch_size: int = 8) -> list:
    """Model-ready batches (image tensors or tokenised dicts) of the run's test items, then the first
    item alone (so the parity check sees two batch sizes)."""
    items = split_examples(run, cfg, model.spec.modality, data=data, limit=limit)
    ds = make_dataset(model, items, train=False, augment=False, image_size=cfg.image_size, seed=0)
    batches = [x for x, _ in eval_loader(model, ds, batch_size)]
    first = batches[0]
    single = {k: v[:1] for k, v in first.items()} if isinstance(first, dict) else first[:1]
    return batches + [single]  # a batch of one too: the batch axis must really be dynamic


@torch.no_grad()
def check_parity(fmt: str, model, batches: list, exported: Callable[[object], np.ndarray],
                 tolerance: float = TOLERANCE) -> ParityReport:
    """Compare `exported(batch)` logits with the run's PyTorch model (fp32, CPU, eval mode)."""
    model = model.float().cpu().eval()
    ref, got = [], []
    for x in batches:
        ref.append(model(x).float().numpy())
        got.append(np.asarray(exported(x), dtype=np.float32))
    ref_all, got_all = np.concatenate(ref), np.concatenate(got)
    if ref_all.shape != got_all.shape:
        raise ParityError(f"{fmt}: exported logits have shape {got_all.shape}, the run's {ref_all.shape}")
    diff = float(np.abs(ref_all - got_all).max())
    agree = int((ref_all.argmax(1) == got_all.argmax(1)).sum())
    return ParityReport(fmt, len(ref_all), diff, agree, tolerance)
