"""`--format timm`: the run as a plain timm model folder (timm's own hub layout).

The run's keys are `backbone.<timm name>` (the timm model after `reset_classifier(0)`) and
`head.*`. timm itself decides where the classifier lives: we build the architecture with
`num_classes=K`, ask `get_classifier()` which module that is, and put the head's Linear there.
The folder holds `model.safetensors` and a `config.json` in the layout timm reads for
`timm.create_model("local-dir:PATH")` (architecture, num_classes, label_names, pretrained_cfg with
the preprocessing), and loads equally with `timm.create_model(arch, num_classes=K,
checkpoint_path="PATH/model.safetensors")`.

A run that reads other than 3 channels (`--in-chans`, arrays, signals) is built with timm's own
`in_chans=N` (its first conv then has N input channels, the shape the run's weights have);
`config.json` says so in `model_args`, which timm's local-dir loader passes back to `create_model`,
and its `pretrained_cfg.input_size` starts with N. Arrays and signals are not pictures timm's data
pipeline can read: `config.json` then has `transferkit_input`, what to feed the model (the array
in its own units or the log-mel spectrogram, resized to size x size, normalised by mean/std), and
`crop_mode` "squash" (resized whole, no centre crop), as transferkit feeds them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..models import SourceError, load_state_dict_checked


def timm_arch(model) -> str:
    arch = model.spec.source.arch
    if model.spec.modality != "image" or not arch.startswith("timm:"):
        raise ValueError(f"--format timm needs a run on a timm architecture (timm:, bundled:, file:); "
                         f"this run's model is {arch!r}. Use --format onnx or torchscript for it")
    return arch.split(":", 1)[1]


def head_linear(head: nn.Module) -> nn.Linear:
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if len(linears) != 1:
        raise ValueError("--format timm maps the head onto timm's single Linear classifier, but this "
                         f"run's head has {len(linears)} Linear layers (an MLP head, --head-hidden); "
                         "use --format onnx or torchscript for it")
    return linears[0]


def to_timm(model) -> tuple[nn.Module, str]:
    """A fresh timm model with the run's weights, and the name of its classifier module."""
    import timm
    arch = timm_arch(model)
    tm = timm.create_model(arch, pretrained=False, num_classes=model.num_classes, **_chans_args(model))
    clf = tm.get_classifier()
    clf_name = next((n for n, m in tm.named_modules() if m is clf), None)
    if not isinstance(clf, nn.Linear) or clf_name is None:
        raise SourceError(f"timm's {arch} has a {type(clf).__name__} classifier, not one Linear "
                          "layer; use --format onnx or torchscript for this run")
    lin = head_linear(model.head)
    state = {k[len("backbone."):]: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    state[f"{clf_name}.weight"] = lin.weight.detach()
    state[f"{clf_name}.bias"] = lin.bias.detach()
    load_state_dict_checked(tm, state, f"the run mapped onto timm {arch}")
    return tm.eval(), clf_name


def _chans_args(model) -> dict:
    """timm's `in_chans` for a run whose first conv reads other than 3 channels, else nothing."""
    n = model.spec.preprocess.channels
    return {"in_chans": n} if n != 3 else {}


def timm_config(model, arch: str, clf_name: str, preprocess: dict, kind: str = "image") -> dict:
    """timm's config.json. `kind`: what the run reads, "image", "array" or "signal"
    (data.kinds)."""
    from ..data.kinds import KINDS
    size = int(preprocess["size"])
    entry = KINDS.get(kind)
    whole = entry is not None and not entry.picture  # resized whole to size x size, no centre crop
    chans = _chans_args(model).get("in_chans", 3)
    pretrained_cfg = {
        "input_size": [chans, size, size], "mean": preprocess["mean"], "std": preprocess["std"],
        "interpolation": preprocess["interpolation"], "crop_pct": 1.0 if whole else preprocess["crop_pct"],
        "crop_mode": "squash" if whole else "center", "num_classes": model.num_classes,
        "classifier": clf_name,
    }
    cfg = {"architecture": arch, "num_classes": model.num_classes,
           "num_features": int(model.spec.feature_dim), "label_names": list(model.class_names),
           "pretrained_cfg": pretrained_cfg}
    if _chans_args(model):
        cfg["model_args"] = _chans_args(model)
    if whole:
        what = entry.feed.format(**preprocess)
        cfg["transferkit_input"] = {"kind": kind, "feed": f"{what}, resized to {size} x {size} (bilinear, "
                                                         "antialiased, no crop), minus mean, divided by std"}
    return cfg


def write_timm(model, out: Path, preprocess: dict, kind: str = "image") -> list[str]:
    from safetensors.torch import save_file
    tm, clf_name = to_timm(model)
    arch = timm_arch(model)
    state = {k: v.detach().contiguous().cpu() for k, v in tm.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = timm_config(model, arch, clf_name, preprocess, kind)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return ["model.safetensors", "config.json"]


def load_timm(out: Path):
    """Reload the export the way a timm user would, and return a logits function."""
    import timm
    cfg = json.loads((out / "config.json").read_text())
    tm = timm.create_model(cfg["architecture"], pretrained=False, num_classes=cfg["num_classes"],
                           checkpoint_path=str(out / "model.safetensors"), **cfg.get("model_args", {})).eval()

    def run(x):
        with torch.no_grad():
            return tm(x).numpy()
    return run
