"""What the data reading found, said before training: skipped items, missing labels, short classes.

Skipped items (unreadable images, missing labels, files outside the class folders) are logged with a
count and listed in metrics.json (`skipped`); `--strict-images` makes an unreadable image fatal. A
class with fewer training items than `--shots` is named in a warning (metrics.json `warnings`);
`--strict-shots` makes it fatal.
"""

from __future__ import annotations

from collections import Counter

from .splits import DataError


def _unreadable(skipped: list[str]) -> list[str]:
    return [s for s in skipped if "unreadable image" in s or "too many pixels" in s
            or "file not found" in s or "broken symbolic link" in s]


def short_classes(task, shots: int | None) -> dict[str, int]:
    if not shots:
        return {}
    counts = Counter(e.label for e in task.train)
    return {c: counts.get(c, 0) for c in task.classes if counts.get(c, 0) < shots}


def report_data_issues(task, cfg, log) -> None:
    """Log what was skipped and warn about short classes (into `task.warnings`); raise under the strict flags."""
    bad = _unreadable(task.skipped)
    if bad and cfg.strict_images:
        raise DataError(f"{len(bad)} unreadable image(s) (--strict-images): " + "; ".join(bad[:5])
                        + ("; ..." if len(bad) > 5 else "") + ". Remove or replace them, or drop --strict-images "
                        "to skip them")
    missing = [s for s in task.skipped if "missing label" in s]
    if task.skipped:
        log(f"skipped {len(task.skipped)} item(s): {len(bad)} unreadable image(s), {len(missing)} missing "
            f"label(s) (empty, NaN, None, N/A, null), {len(task.skipped) - len(bad) - len(missing)} other "
            "(listed in metrics.json 'skipped')")
        for s in task.skipped[:20]:
            log(f"  skipped: {s}")
        if len(task.skipped) > 20:
            log(f"  ... and {len(task.skipped) - 20} more")
    short = short_classes(task, cfg.shots)
    if short:
        names = ", ".join(f"'{c}' ({n})" for c, n in short.items())
        msg = f"fewer training items than --shots {cfg.shots} in class(es) {names}"
        if cfg.strict_shots:
            raise DataError(f"{msg} (--strict-shots); add items to those classes or lower --shots")
        task.warnings.append(msg)
        log(f"warning: {msg}; they train on what they have")
