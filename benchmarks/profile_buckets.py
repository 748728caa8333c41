"""Share of a py-spy profile's samples by kind of work, for the README's profile paragraphs.

    py-spy record -r 50 -f raw -o run.raw -- python -m transferkit train ...
    python benchmarks/profile_buckets.py run.raw

Each sample goes to the first bucket whose marker occurs anywhere in its stack (so a backward pass
called from the training loop counts as backward, a transform called inside a forward-looking
helper counts as transforms), in the order listed below; what matches none is `other`.
"""

from __future__ import annotations

import sys
from collections import Counter

BUCKETS = [  # (bucket, markers): the first bucket with a marker in the stack takes the sample
    ("backward", ("backward",)),
    ("head fit (headfit.py)", ("headfit.py",)),
    ("transforms (augment/resize)", ("torchvision/transforms",)),
    ("report", ("report",)),
    ("optimizer step", ("optim",)),
    ("forward", ("forward",)),
    ("imports", ("_bootstrap", "importlib")),
]


def buckets(path: str) -> tuple[Counter, int]:
    counts, total = Counter(), 0
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            total += int(n)
            name = next((b for b, marks in BUCKETS if any(m in stack for m in marks)), "other")
            counts[name] += int(n)
    return counts, total


def main(argv: list[str]) -> int:
    counts, total = buckets(argv[0])
    for name, n in counts.most_common():
        print(f"{name:30s} {n / max(total, 1):6.1%}")
    print(f"{total} samples")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
