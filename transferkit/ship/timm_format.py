"""`--format timm`: the run as a plain timm model folder (timm's own hub layout).

The run's keys are `backbone.<timm name>` (the timm model after `reset_classifier(0)`) and
`head.*`. timm itself decides where the classifier lives: we build the architecture with
`num_classes=K`, ask `get_classifier()` which module that is, and put the head's Linear there.
The folder holds `model.safetensors` and a `config.json` in the layout timm reads for
`timm.create_model("local-dir:PATH")` (architecture, num_classes, label_names, pretrained_cfg with
the preprocessing), and loads equally with `timm.create_model(arch, num_classes=K,
checkpoint_path="PATH/model.safetensors")`.
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
    tm = timm.create_model(arch, pretrained=False, num_classes=model.num_classes)
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


def timm_config(model, arch: str, clf_name: str, preprocess: dict) -> dict:
    size = int(preprocess["size"])
    pretrained_cfg = {
        "input_size": [3, size, size], "mean": preprocess["mean"], "std": preprocess["std"],
        "interpolation": preprocess["interpolation"], "crop_pct": preprocess["crop_pct"],
        "crop_mode": "center", "num_classes": model.num_classes, "classifier": clf_name,
    }
    return {"architecture": arch, "num_classes": model.num_classes,
            "num_features": int(model.spec.feature_dim), "label_names": list(model.class_names),
            "pretrained_cfg": pretrained_cfg}


def write_timm(model, out: Path, preprocess: dict) -> list[str]:
    from safetensors.torch import save_file
    tm, clf_name = to_timm(model)
    arch = timm_arch(model)
    state = {k: v.detach().contiguous().cpu() for k, v in tm.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(timm_config(model, arch, clf_name, preprocess), indent=2))
    return ["model.safetensors", "config.json"]


def load_timm(out: Path):
    """Reload the export the way a timm user would, and return a logits function."""
    import timm
    cfg = json.loads((out / "config.json").read_text())
    tm = timm.create_model(cfg["architecture"], pretrained=False, num_classes=cfg["num_classes"],
                           checkpoint_path=str(out / "model.safetensors")).eval()

    def run(x):
        with torch.no_grad():
            return tm(x).numpy()
    return run
