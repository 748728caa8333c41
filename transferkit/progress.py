"""Progress bars for the long loops (feature extraction, evaluation, prediction, rank, sweeps).
tqdm shows them on a terminal and stays silent when the output is a file or a pipe."""

from __future__ import annotations


def progress(iterable, desc: str | None, *, total: int | None = None):
    """`iterable` with a bar named `desc`; no bar when `desc` is None."""
    if not desc:
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, disable=None)


def step_bar(total: int, start: int, desc: str):
    """A bar counting optimisation steps from `start` to `total` (resumed runs start part way);
    like `progress`, silent when the output is not a terminal, so a log file gets no carriage-
    return updates."""
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=start, desc=desc, leave=False, dynamic_ncols=True, disable=None)
