"""The classification backbone as a dense encoder: its timm architecture with `features_only`, and the
source's weights copied onto it with every name and shape checked (nothing loads with strict=False).

smp (segmentation-models-pytorch) builds the decoders on `tu-<timm name>` with `encoder_weights=None`,
so it never downloads anything: the weights always come from transferkit's own source loader
(bundled:, timm:, file:), which knows the offline cache and the bundled packages.
"""

from __future__ import annotations

from torch import nn

from ..models.hub import SourceError


def source_backbone(cfg):
    """The run's source model (a transferkit Backbone); dense tasks need a timm image architecture."""
    from ..models.sources import load_backbone
    bb = load_backbone(cfg.backbone, arch=cfg.arch)
    arch = bb.source.arch
    if bb.modality != "image" or not arch.startswith("timm:"):
        raise SourceError(f"--backbone {cfg.backbone} ({arch}): dense tasks need an image model with a timm "
                          "architecture (bundled:efficientnet_lite0, timm:NAME, or file:PATH --arch NAME)")
    if bb.input_adaptation:
        raise SourceError("dense tasks read RGB images only for now; drop --in-chans")
    return bb


def timm_name(arch: str) -> str:
    return arch.split(":", 1)[1] if arch.startswith("timm:") else arch


def copy_source_weights(target: nn.Module, source: nn.Module, origin: str, log=print) -> dict:
    """Copy `source`'s tensors onto `target` (a features_only copy of the same architecture).

    Every tensor of the target must exist in the source with the same shape (else a SourceError
    listing them); source tensors the encoder has no place for (the classification top: conv_head,
    bn2, fc...) are reported as unused. Returns {loaded, missing, unused}."""
    own, src = target.state_dict(), source.state_dict()
    missing = [k for k in own if k not in src]
    shape = [f"{k} source {tuple(src[k].shape)} vs encoder {tuple(own[k].shape)}" for k in own
             if k in src and tuple(src[k].shape) != tuple(own[k].shape)]
    unused = [k for k in src if k not in own]
    if missing or shape:
        lines = [f"the weights of {origin} do not fit its dense encoder:"]
        if shape:
            lines.append("  shape mismatch: " + "; ".join(shape[:8]))
        if missing:
            lines.append(f"  missing ({len(missing)}): {', '.join(missing[:8])}")
        raise SourceError("\n".join(lines))
    target.load_state_dict({k: src[k] for k in own}, strict=True)
    tops = sorted({k.split(".")[0] for k in unused})
    log(f"encoder: {len(own)} tensors from {origin}, 0 missing, {len(unused)} unused"
        + (f" (the classification top: {', '.join(tops)})" if unused else ""))
    return {"loaded": len(own), "missing": [], "unused": unused}


def build_segmenter(arch: str, decoder: str, n_classes: int) -> nn.Module:
    """An smp FPN or UNet on the timm encoder `arch` (random init; weights come from copy_source_weights)."""
    import segmentation_models_pytorch as smp
    cls = {"fpn": smp.FPN, "unet": smp.Unet}[decoder]
    return cls(encoder_name=f"tu-{timm_name(arch)}", encoder_weights=None, classes=n_classes)


def segmenter_encoder(model: nn.Module) -> nn.Module:
    """The timm features_only model inside an smp model (its names are the source model's)."""
    return model.encoder.model


def feature_extractor(arch: str, reductions: tuple[int, ...] = (8, 16)) -> tuple[nn.Module, list[int]]:
    """A timm features_only model giving the stages at these strides (e.g. 8 and 16) and their channels."""
    import timm
    probe = timm.create_model(timm_name(arch), pretrained=False, features_only=True)
    found = probe.feature_info.reduction()
    picks = [found.index(r) for r in reductions if r in found]
    if len(picks) != len(reductions):
        raise SourceError(f"{arch} has no feature maps at strides {reductions} (it has {found}); "
                          "choose another --backbone")
    model = timm.create_model(timm_name(arch), pretrained=False, features_only=True, out_indices=picks)
    return model, [probe.feature_info.channels()[i] for i in picks]
