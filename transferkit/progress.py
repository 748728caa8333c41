"""Progress bars for the long loops (feature extraction, evaluation, prediction, rank, sweeps).
tqdm shows them on a terminal and stays silent when the output is a file or a pipe."""

from __future__ import annotations


def progress(iterable, desc: str | None, *, total: int | None = None):
    """`iterable` with a bar named `desc`; no bar when `desc` is None."""
    if not desc:
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, disable=None)
