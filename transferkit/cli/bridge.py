"""`transferkit bridge`: learn a DeViSE bridge from image features into a text encoder's space."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .options import add_fields, add_shared, command_parser, out_help


# BridgeConfig's defaults (transferkit/zeroshot/bridge.py imports PyTorch, so `--help` does not read
# them; tests/test_cli_interface.py checks that they agree)
DEFAULTS = dict(backbone="bundled:efficientnet_lite0", text_encoder="bundled:minilm-l6", loss="eszsl",
                margin=0.1, steps=300, lr=1e-3, alpha=100.0, beta=1.0, seed=0, image_size=None)


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    ap = command_parser("bridge", (
        "Train a linear map from an image backbone's pooled features into a text encoder's embedding "
        "space on paired data (DeViSE, Frome et al. 2013), for zero-shot prediction "
        "(transferkit predict --zero-shot DIR) and class-name priors (train --class-text F --bridge DIR)."),
        ["transferkit bridge pairs.csv --out bridges/photos",
         "transferkit bridge named_folders/ --loss hinge --steps 500 --out bridges/hinge"])
    ess = ap.add_argument_group("essentials")
    ess.add_argument("pairs", help="CSV with path,text columns (images and their words), or a folder of "
                                   "folders named by their words")
    add_shared(ess, "--out", required=True,
               help=out_help("directory for bridge.safetensors and bridge.json", required=True))
    ess.add_argument("--backbone", default=d["backbone"],
                     help=f"image source whose pooled features are mapped (default: {d['backbone']})")
    ess.add_argument("--text-encoder", default=d["text_encoder"],
                     help=f"text source whose embedding space is the target (default: {d['text_encoder']})")
    t = ap.add_argument_group("training")
    t.add_argument("--loss", default=d["loss"], choices=["eszsl", "ridge", "hinge", "softmax"],
                   help="eszsl / ridge: closed-form maps with --alpha (and --beta); hinge: DeViSE's rank loss "
                        f"with --margin; softmax: cross-entropy over cosines (default: {d['loss']})")
    t.add_argument("--alpha", type=float, default=d["alpha"],
                   help="eszsl/ridge: image-side penalty, over the features' mean eigenvalue "
                        f"(default: {d['alpha']:g})")
    t.add_argument("--beta", type=float, default=d["beta"],
                   help=f"eszsl: text-side penalty, over the texts' mean eigenvalue (default: {d['beta']:g})")
    t.add_argument("--margin", type=float, default=d["margin"], help=f"hinge margin (default: {d['margin']})")
    t.add_argument("--steps", type=int, default=d["steps"],
                   help=f"hinge/softmax: full-batch AdamW steps on the cached features (default: {d['steps']})")
    t.add_argument("--lr", type=float, default=d["lr"],
                   help=f"hinge/softmax: learning rate of the map (default: {d['lr']})")
    t.add_argument("--seed", type=int, default=d["seed"], help="seed of the map's initialisation (default: 0)")
    add_fields(ap, ["image_size"], title="data")
    add_shared(ap, "--quiet")
    return ap


def _image_size(args) -> int | None:
    from ..config import make_config
    return make_config(None, image_size=args.image_size).image_size


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv[1:])  # --help and usage errors answer before torch loads
    from ..zeroshot.bridge import BRIDGE_FILE, BridgeConfig
    from ..zeroshot.pairs import read_pairs, train_bridge
    out = Path(args.out)
    if (out / BRIDGE_FILE).exists():
        raise FileExistsError(f"{out} already holds a bridge; choose another --out")
    cfg = BridgeConfig(backbone=args.backbone, text_encoder=args.text_encoder, loss=args.loss,
                       margin=args.margin, alpha=args.alpha, beta=args.beta,
                       steps=args.steps, lr=args.lr, seed=args.seed,
                       image_size=_image_size(args))
    pairs = read_pairs(args.pairs)
    _, info = train_bridge(pairs, cfg, out, log=(lambda *a: None) if args.quiet else print)
    print(json.dumps({k: info[k] for k in ("pairs", "texts", "train_text_accuracy")} | {"out": str(out)}))
    return 0


PARSERS = {"bridge": build_parser}
