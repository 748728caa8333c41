"""A detector on a classification backbone: timm `features_only` body + torchvision FPN + FCOS
(default), RetinaNet or Faster R-CNN head.

FCOS: Tian et al., "FCOS: Fully Convolutional One-Stage Object Detection", ICCV 2019.
RetinaNet: Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017.
Faster R-CNN: Ren et al., NeurIPS 2015; FPN: Lin et al., CVPR 2017.

The body is any timm architecture; its ImageNet weights come from the same places as for
classification (`timm:NAME` from the local cache, `bundled:efficientnet_lite0` from its pip
package, `file:PATH`), mapped onto the features-only model by name and loaded with every name and
shape checked; `@random` builds it with no weights (the from-scratch baseline).

Class indices: the data's class i is label i + 1 inside the torchvision model, because Faster
R-CNN keeps label 0 for background; FCOS and RetinaNet get the same offset (one class never seen,
so never predicted) to keep one convention. `predict` undoes it.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..models.hub import SourceError

ARCHS = ("fcos", "retinanet", "fasterrcnn")
LABEL_OFFSET = 1


@dataclass
class DetectorSpec:
    """Everything needed to build the same detector again (saved beside its weights)."""
    source: str                         # backbone source, e.g. bundled:efficientnet_lite0, timm:resnet18@random
    num_classes: int                    # classes of the data (without background)
    arch: str = "fcos"                  # fcos | retinanet | fasterrcnn
    image_size: int = 256               # images are resized to image_size x image_size (a multiple of 32)
    fpn_channels: int = 128             # FPN width; torchvision uses 256, half costs a quarter in the head
    out_indices: tuple[int, ...] | None = None    # backbone levels (timm feature_info); None: default_levels
    frozen_bn: bool = True              # BatchNorm statistics kept from the source (few images)
    freeze_backbone: bool = False       # train FPN + heads only (the linear_probe-style baseline)
    timm_arch: str | None = None        # the timm architecture the source resolved to (set when built)


class TimmFPN(nn.Module):
    """A timm features-only body under a torchvision FeaturePyramidNetwork, in the form torchvision
    detectors take: `forward(images) -> OrderedDict[name, feature]`, `out_channels`."""

    def __init__(self, body: nn.Module, fpn_channels: int, extra: str):
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7
        super().__init__()
        self.body = body
        strides = list(body.feature_info.reduction())
        if extra == "p6p7":
            blocks, strides = LastLevelP6P7(fpn_channels, fpn_channels), strides + [strides[-1] * 2, strides[-1] * 4]
        else:
            blocks, strides = LastLevelMaxPool(), strides + [strides[-1] * 2]
        self.fpn = FeaturePyramidNetwork(list(body.feature_info.channels()), fpn_channels, extra_blocks=blocks)
        self.out_channels = fpn_channels
        self.strides = strides
        self.level_names = [str(i) for i in range(len(body.feature_info.channels()))]

    def forward(self, x: torch.Tensor) -> OrderedDict:
        feats = self.body(x)
        return self.fpn(OrderedDict(zip(self.level_names, feats)))


def build_detector(backbone_source: str, num_classes: int, arch: str = "fcos", pretrained: bool = True,
                   image_size: int = 256, *, fpn_channels: int = 128, out_indices=None,
                   frozen_bn: bool = True, freeze_backbone: bool = False) -> nn.Module:
    """A torchvision detector (train mode: `model(images, targets) -> losses`; eval mode:
    `model(images) -> [{boxes, labels, scores}]`) on the backbone `backbone_source`. The spec is kept
    as `model.spec` (a DetectorSpec) for saving."""
    spec = DetectorSpec(backbone_source, int(num_classes), arch, int(image_size), int(fpn_channels),
                        tuple(out_indices) if out_indices else None, frozen_bn, freeze_backbone)
    return build_from_spec(spec, pretrained=pretrained)


def build_from_spec(spec: DetectorSpec, pretrained: bool = True) -> nn.Module:
    from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    if spec.arch not in ARCHS:
        raise SourceError(f"unknown detector '{spec.arch}'; use one of {', '.join(ARCHS)}")
    if spec.num_classes < 1:
        raise SourceError(f"a detector needs at least one class, got {spec.num_classes}")
    if spec.image_size < 32 or spec.image_size % 32:
        raise SourceError(f"image size {spec.image_size} must be a multiple of 32 (the coarsest "
                          "backbone stride), e.g. 256")
    if spec.arch == "fcos" and (spec.fpn_channels < 64 or spec.fpn_channels % 32):
        # GroupNorm of one channel a group fails on a 1x1 level (P7 of a small image) with batch 1
        raise SourceError(f"FPN width {spec.fpn_channels}: FCOS's head normalises in 32 groups, so the "
                          "width must be a multiple of 32 and at least 64 (e.g. 128)")
    if not pretrained and spec.timm_arch:   # rebuilding a saved detector: no source weights needed
        import timm
        body = timm.create_model(spec.timm_arch, features_only=True, out_indices=spec.out_indices)
    else:
        body = features_body(spec.source, spec.out_indices, pretrained)
    # resolved, so that a saved spec rebuilds the same without the source (a file: may be gone)
    spec.out_indices = tuple(body.feature_info.out_indices)
    spec.timm_arch = body.pretrained_cfg.get("architecture") or spec.timm_arch
    mean = list(body.pretrained_cfg.get("mean", (0.485, 0.456, 0.406)))
    std = list(body.pretrained_cfg.get("std", (0.229, 0.224, 0.225)))
    if spec.frozen_bn:
        from timm.layers import freeze_batch_norm_2d
        body = freeze_batch_norm_2d(body)
    if spec.freeze_backbone:
        for p in body.parameters():
            p.requires_grad_(False)
    backbone = TimmFPN(body, spec.fpn_channels, "pool" if spec.arch == "fasterrcnn" else "p6p7")
    s = backbone.strides
    common = dict(num_classes=spec.num_classes + LABEL_OFFSET, min_size=spec.image_size,
                  max_size=spec.image_size, image_mean=mean, image_std=std)
    if spec.arch == "fcos":
        # one location per pixel of each level; FCOS assigns objects to levels by size in strides
        anchors = AnchorGenerator(tuple((st,) for st in s), ((1.0,),) * len(s))
        model = FCOS(backbone, anchor_generator=anchors, score_thresh=0.05, **common)
    elif spec.arch == "retinanet":
        anchors = AnchorGenerator(tuple((4 * st, int(4 * st * 2 ** (1 / 3)), int(4 * st * 2 ** (2 / 3))) for st in s),
                                  ((0.5, 1.0, 2.0),) * len(s))
        model = RetinaNet(backbone, anchor_generator=anchors, **common)
    else:
        anchors = AnchorGenerator(tuple((8 * st,) for st in s), ((0.5, 1.0, 2.0),) * len(s))
        pool = MultiScaleRoIAlign(backbone.level_names, output_size=7, sampling_ratio=2)
        model = FasterRCNN(backbone, rpn_anchor_generator=anchors, box_roi_pool=pool,
                           box_score_thresh=0.05, **common)
    model.spec = spec
    return model


def features_body(source: str, out_indices=None, pretrained: bool = True) -> nn.Module:
    """The timm features-only model of `source` (levels `out_indices`; None: `default_levels`), with
    the source's classification weights when `pretrained` (and the source has no `@random`): the
    full model is loaded as for classification, then its tensors are copied onto the features
    model by name, every one checked (timm's own features_only loading is not strict)."""
    import timm
    arch, state, origin = _source_weights(source, pretrained)
    out_indices = tuple(out_indices) if out_indices else default_levels(arch)
    body = timm.create_model(arch, features_only=True, out_indices=out_indices)
    if state is not None:
        load_features_checked(body, state, origin)
    return body


def default_levels(arch: str) -> tuple[int, ...]:
    """The last (at most) four feature levels of a timm architecture at stride 4 or coarser: strides
    4-32 for ResNets, EfficientNets, ConvNeXts (whose level indices differ: 1-4 or 0-3)."""
    import timm
    reductions = timm.create_model(arch, features_only=True).feature_info.reduction()
    return tuple(i for i, r in enumerate(reductions) if r >= 4)[-4:]


def _source_weights(source: str, pretrained: bool) -> tuple[str, dict | None, str]:
    """(timm architecture, classification state dict or None, where it came from), through
    transferkit's own source loader (bundled packages, the offline hub cache, file: metadata)."""
    from ..dense.encoder import timm_name
    from ..models.sources import load_backbone
    bb = load_backbone(source)
    arch = bb.source.arch
    if bb.modality != "image" or not arch.startswith("timm:"):
        raise SourceError(f"'{source}' ({arch}): detection needs an image backbone with a timm architecture "
                          "(bundled:efficientnet_lite0, timm:NAME, file:PATH)")
    state = bb.module.state_dict() if pretrained and bb.source.pretrained else None
    return timm_name(arch), state, source


def load_features_checked(body: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load a classification state dict into a features-only body: every tensor of the body must
    be found (by its name, or with timm's flattened `stages_0` for `stages.0`) with its shape; the
    classifier and the layers past the last level are what is left over."""
    from ..models.sources import load_state_dict_checked

    picked = {}
    for k in body.state_dict():
        for cand in (k, k.replace("_", ".", 1)):
            if cand in state:
                picked[k] = state[cand]
                break
    load_state_dict_checked(body, picked, origin)


# ------------------------------------------------------------------------------------ saving

def save_detector(model: nn.Module, classes: list[str], folder: Path,
                  category_ids: list[int] | None = None) -> None:
    """`folder/detector.safetensors` (weights) + `folder/detector.json` (spec, class names and the
    data's COCO category ids, so that predictions are written with the ids the data used)."""
    from ..store.checkpoint import atomic_save_tensors, atomic_write_json
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(folder / "detector.safetensors", model.state_dict(), {"format": "transferkit-detector"})
    atomic_write_json(folder / "detector.json", {"spec": asdict(model.spec), "classes": list(classes),
                                                  "category_ids": list(category_ids or range(1, len(classes) + 1))})


def load_detector(folder: Path) -> tuple[nn.Module, list[str]]:
    """The detector and class names saved by `save_detector`, weights checked by name and shape."""
    from ..store.safety import load_tensors
    from ..models.sources import load_state_dict_checked
    folder = Path(folder)
    meta_file = folder / "detector.json"
    if not meta_file.is_file():
        raise SourceError(f"{meta_file} not found; point at the folder a detection run wrote")
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    spec = meta["spec"]
    spec["out_indices"] = tuple(spec["out_indices"]) if spec.get("out_indices") else None
    model = build_from_spec(DetectorSpec(**spec), pretrained=False)
    load_state_dict_checked(model, load_tensors(folder / "detector.safetensors"), str(folder))
    return model.eval(), list(meta["classes"])
