"""`transferkit bridge`: learn a DeViSE bridge from image features into a text encoder's space."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from ..zeroshot.bridge import BridgeConfig
    d = BridgeConfig()
    ap = argparse.ArgumentParser(prog="transferkit bridge", description=(
        "Train a linear map from an image backbone's pooled features into a text encoder's embedding "
        "space on paired data (DeViSE, Frome et al. 2013), for zero-shot prediction "
        "(transferkit predict --zero-shot DIR) and class-name priors (train --class-text F --bridge DIR)."))
    ap.add_argument("pairs", help="CSV with path,text columns (images and their words), or a folder of "
                                  "folders named by their words")
    ap.add_argument("--out", required=True, help="directory for bridge.safetensors and bridge.json")
    ap.add_argument("--backbone", default=d.backbone,
                    help=f"image source whose pooled features are mapped (default: {d.backbone})")
    ap.add_argument("--text-encoder", default=d.text_encoder,
                    help=f"text source whose embedding space is the target (default: {d.text_encoder})")
    ap.add_argument("--loss", default=d.loss, choices=["eszsl", "ridge", "hinge", "softmax"],
                    help="eszsl / ridge: closed-form maps with --alpha (and --beta); hinge: DeViSE's rank loss "
                         f"with --margin; softmax: cross-entropy over cosines (default: {d.loss})")
    ap.add_argument("--alpha", type=float, default=d.alpha,
                    help=f"eszsl/ridge: image-side penalty, over the features' mean eigenvalue (default: {d.alpha:g})")
    ap.add_argument("--beta", type=float, default=d.beta,
                    help=f"eszsl: text-side penalty, over the texts' mean eigenvalue (default: {d.beta:g})")
    ap.add_argument("--margin", type=float, default=d.margin, help=f"hinge margin (default: {d.margin})")
    ap.add_argument("--steps", type=int, default=d.steps,
                    help=f"hinge/softmax: full-batch AdamW steps on the cached features (default: {d.steps})")
    ap.add_argument("--lr", type=float, default=d.lr, help=f"learning rate (default: {d.lr})")
    ap.add_argument("--image-size", type=int, default=None,
                    help="input size in pixels (default: the backbone's own)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the map's initialisation (default: 0)")
    ap.add_argument("--quiet", action="store_true", help="no progress messages (default: off)")
    return ap


def main(argv: list[str]) -> int:
    from ..zeroshot.bridge import BRIDGE_FILE, BridgeConfig
    from ..zeroshot.pairs import read_pairs, train_bridge
    args = build_parser().parse_args(argv[1:])
    out = Path(args.out)
    if (out / BRIDGE_FILE).exists():
        raise FileExistsError(f"{out} already holds a bridge; choose another --out")
    cfg = BridgeConfig(backbone=args.backbone, text_encoder=args.text_encoder, loss=args.loss,
                       margin=args.margin, alpha=args.alpha, beta=args.beta,
                       steps=args.steps, lr=args.lr, seed=args.seed,
                       image_size=args.image_size)
    pairs = read_pairs(args.pairs)
    _, info = train_bridge(pairs, cfg, out, log=(lambda *a: None) if args.quiet else print)
    print(json.dumps({k: info[k] for k in ("pairs", "texts", "train_text_accuracy")} | {"out": str(out)}))
    return 0
