"""Channel adaptation: a source trained on RGB pictures reads inputs with N channels.

The first convolution is the only layer that sees the channel count, so it is the only one that
changes. Its RGB filters W_R, W_G, W_B (shape [out, 3, k, k]) become N filters by a stated rule:

- ``sum`` (the default for N = 1 or 2): every new channel gets (W_R + W_G + W_B) / N. For N = 1 the
  adapted conv applied to a gray image x is exactly the source conv applied to the RGB image
  [x, x, x] (convolution is linear in its input channels); for any N, an input whose N channels are
  equal gives the source's output on the equal-channel RGB image. This is the rule for multispectral
  inputs whose bands have no RGB meaning (use it explicitly for N >= 4).
- ``rgb+mean`` (the default for N >= 4): channels 0-2 keep W_R, W_G, W_B (the input's first three
  channels are R, G, B); each of the N - 3 extra channels starts from the mean RGB filter
  (W_R + W_G + W_B) / 3 divided by N - 3, so the extras together add about as much as one more
  colour channel, however many there are.
- ``rgb+zeros``: channels 0-2 keep the RGB filters, the extras start at zero, so the adapted model's
  output at initialisation is exactly the source's output on the RGB channels.

The conv is edited in place (its class, padding and stride are kept: timm's "same"-padding convs
stay what they are). Which conv is first is found generically: timm's ``pretrained_cfg['first_conv']``
when the model has one, else the first ``nn.Conv2d`` (in module order) that reads 3 channels.
"""

from __future__ import annotations

import torch
from torch import nn

from .backbone import Backbone

CHANS_INIT = ("auto", "sum", "rgb+mean", "rgb+zeros")


class ChannelError(ValueError):
    pass


def find_first_conv(module: nn.Module) -> tuple[str, nn.Conv2d]:
    """(name, conv) of the convolution that reads the input image, for any timm/torchvision model."""
    named = dict(module.named_modules())
    hint = None
    for m in named.values():
        cfg = getattr(m, "pretrained_cfg", None)
        if isinstance(cfg, dict) and cfg.get("first_conv"):
            hint = cfg["first_conv"]
            break
    if hint:
        for name, m in named.items():
            if (name == hint or name.endswith("." + hint)) and isinstance(m, nn.Conv2d):
                return name, m
    for name, m in named.items():
        if isinstance(m, nn.Conv2d) and m.in_channels == 3:
            return name, m
    raise ChannelError("found no convolution reading 3 input channels in this backbone; channel "
                       "adaptation needs a convolutional image model")


def resolve_rule(in_chans: int, rule: str) -> str:
    if rule not in CHANS_INIT:
        raise ChannelError(f"unknown chans_init '{rule}'; use one of {', '.join(CHANS_INIT)}")
    if rule == "auto":
        return "sum" if in_chans < 3 else "rgb+mean"
    if rule.startswith("rgb+") and in_chans < 3:
        raise ChannelError(f"chans_init '{rule}' keeps the RGB filters, which needs at least 3 input "
                           f"channels (got {in_chans}); use 'sum'")
    return rule


def adapted_weight(w: torch.Tensor, in_chans: int, rule: str) -> torch.Tensor:
    """The [out, in_chans, k, k] weight made from an RGB conv weight [out, 3, k, k] by `rule`."""
    if w.shape[1] != 3:
        raise ChannelError(f"the first conv reads {w.shape[1]} channels, not 3")
    total = w.sum(dim=1, keepdim=True)
    if rule == "sum":
        return (total / in_chans).repeat(1, in_chans, 1, 1)
    extra = in_chans - 3
    if rule == "rgb+zeros":
        extras = torch.zeros_like(w[:, :1]).repeat(1, extra, 1, 1)
    elif rule == "rgb+mean":
        extras = (total / 3 / max(extra, 1)).repeat(1, extra, 1, 1)
    else:
        raise ChannelError(f"unknown rule {rule}")
    return torch.cat([w, extras], dim=1)


@torch.no_grad()
def adapt_input_channels(backbone: Backbone, in_chans: int, rule: str = "auto") -> dict | None:
    """Make `backbone.module` read `in_chans` channels (in place). Returns what was done, for the
    run record (`{"conv": name, "in_chans": N, "rule": rule}`), or None when N is already 3."""
    if in_chans < 1:
        raise ChannelError(f"in_chans must be at least 1, got {in_chans}")
    if in_chans == 3:
        return None
    rule = resolve_rule(in_chans, rule)
    name, conv = find_first_conv(backbone.module)
    if conv.groups != 1:
        raise ChannelError(f"the first conv '{name}' is grouped (groups={conv.groups}); cannot adapt it")
    conv.weight = nn.Parameter(adapted_weight(conv.weight.detach(), in_chans, rule),
                               requires_grad=conv.weight.requires_grad)
    conv.in_channels = in_chans
    return {"conv": name, "param": f"{name}.weight", "in_chans": in_chans, "rule": rule}
