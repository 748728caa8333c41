"""Inputs that are not RGB pictures: settle the channel count, the per-channel statistics and the
spectrogram parameters of a run from its training data (once), and adapt the backbone to them.

What is decided here is settled into the run's TrainConfig once, when the run starts (`settle_inputs`
returns a new config: a config is never changed after it is validated), so config.yaml records it and a resumed or
reloaded run (engine/run.py `load_run`) rebuilds the same model and preprocessing with no data:

- `in_chans`: from `--in-chans`, else from the data (an array's channel count; 1 for signals).
  Image files (.png, .jpg, ...) are read as RGB (3) or, with `--in-chans 1`, as luminance.
- `chan_mean` / `chan_std`: for arrays, signals and 1-channel images, the mean and standard
  deviation of every value of every *training* item, per channel. RGB image files keep the source's
  own mean/std (what the source was trained with).
- `spectrogram`: the full log-mel parameter string, defaults filled in (signals only); test-time
  flipping (`tta`) is switched off for signals, since a mirrored spectrogram plays time backwards.
"""

from __future__ import annotations

import dataclasses

from ..config import ConfigError, TrainConfig, validate
from ..data.kinds import KINDS, channel_stats, input_kind, peek_kind
from ..data.splits import DataError
from ..models.backbone import Backbone
from ..models.channels import adapt_input_channels


def _given_stats_mismatch(cfg: TrainConfig, n: int, what: str) -> None:
    """`--chan-mean/--chan-std` given for data of another channel count: refused naming both counts
    (one value is neither spread over 3 channels nor turned into a one-channel model of RGB data)."""
    if cfg.chan_mean is not None and len(cfg.chan_mean) != n:
        hint = " or --in-chans 1 to read the images as luminance" if what.startswith("RGB") and len(cfg.chan_mean) == 1 else ""
        raise ConfigError(f"'chan_mean' (--chan-mean) has {len(cfg.chan_mean)} value(s) but the data has {n} "
                          f"channels ({what}): give {n} values, one per channel{hint}")


def settled(cfg: TrainConfig) -> bool:
    """Whether `cfg`'s inputs need nothing more from the data (no data, or settled before)."""
    return not cfg.data or (cfg.chan_mean is not None and cfg.in_chans is not None)


def settle_inputs(cfg: TrainConfig, task=None) -> TrainConfig:
    """`cfg` with `in_chans`, `chan_mean`, `chan_std`, `spectrogram` (and `tta`) settled from the
    training data, validated: a new config (the one given is not changed). The same config for RGB
    image data and for a config settled before.

    `task`: the run's splits (`engine.build.load_task_for`), read once by the caller; without it,
    DATA is read here, and only when it is not RGB pictures. The statistics come from exactly the
    run's training split."""
    if settled(cfg):
        return cfg
    if cfg.in_chans is not None and cfg.in_chans < 1:
        raise ConfigError(f"in_chans must be at least 1, got {cfg.in_chans}")
    if cfg.in_chans in (None, 3) and peek_kind(cfg.data) == "image":
        _given_stats_mismatch(cfg, 3, "RGB image files")
        return cfg
    if task is None:
        from ..data import load_task
        task = load_task(cfg.data, val=cfg.val, test=cfg.test, shots=cfg.shots, seed=cfg.seed,
                         val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, modality="image")
    if task.modality != "image":
        return cfg
    kinds = {}
    for ex in task.train + task.val + task.test:
        kinds.setdefault(input_kind(ex.x), ex.x)
    if len(kinds) > 1:
        raise DataError(f"{cfg.data} mixes input kinds ({', '.join(f'{k}: {v}' for k, v in kinds.items())}); "
                        "a run reads one kind: images, arrays (.npy/.tif) or signals (.wav, 1-D .npy)")
    kind = KINDS[next(iter(kinds))]
    first = task.train[0].x
    data_chans = kind.data_channels(first, cfg.in_chans, cfg.array_layout)
    values = kind.settle(cfg.spectrogram)
    in_chans = cfg.in_chans or data_chans
    _given_stats_mismatch(cfg, in_chans, kind.words(first))
    values["in_chans"] = in_chans
    if cfg.chan_mean is None:
        values["chan_mean"], values["chan_std"] = channel_stats(
            task.train, in_chans, cfg.array_layout, values.get("spectrogram", cfg.spectrogram))
    new = dataclasses.replace(cfg, **values)
    validate(new)
    return new


def adapt_backbone(backbone: Backbone, cfg: TrainConfig) -> Backbone:
    """The backbone reading `cfg.in_chans` channels, normalised by the run's channel statistics.

    Without recorded statistics (a model built from a config with no data), channels the source
    defines keep its mean/std and the others get the average of the source's.
    """
    if cfg.chan_mean is None and cfg.in_chans in (None, 3):
        return backbone
    n = cfg.in_chans or len(cfg.chan_mean)
    backbone.input_adaptation = adapt_input_channels(backbone, n, cfg.chans_init)
    pre = backbone.preprocess
    mean, std = cfg.chan_mean, cfg.chan_std
    if mean is None or std is None:
        avg_m, avg_s = sum(pre.mean) / len(pre.mean), sum(pre.std) / len(pre.std)
        mean = [pre.mean[i] if i < len(pre.mean) and n >= 3 else avg_m for i in range(n)]
        std = [pre.std[i] if i < len(pre.std) and n >= 3 else avg_s for i in range(n)]
    if len(mean) != n or len(std) != n:
        raise ConfigError(f"chan_mean/chan_std have {len(mean)}/{len(std)} values for {n} input channels")
    backbone.preprocess = dataclasses.replace(pre, mean=tuple(mean), std=tuple(std),
                                              array_layout=cfg.array_layout, spectrogram=cfg.spectrogram)
    return backbone


def source_only_anchor(anchor: dict, backbone: Backbone) -> dict:
    """L2-SP anchors only what exists in the source: the adapted first conv's weight does not (its
    filters were made by a rule, and its new channels have no source value), so it is left out and
    trains freely; every other backbone parameter, that conv's bias included, stays anchored."""
    info = backbone.input_adaptation
    if not info:
        return anchor
    drop = {f"backbone.{info['param']}", f"backbone.inner.{info['param']}"}  # inner.: multi-stage wrap
    return {k: v for k, v in anchor.items() if k not in drop}
