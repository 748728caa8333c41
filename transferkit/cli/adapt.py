"""`transferkit adapt`: unsupervised domain adaptation over `transferkit.adaptation.adapt`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


# the `--help` group of each AdaptConfig field
GROUPS = {"essentials": ("source", "target", "out", "backbone", "method", "target_test"),
          "training": ("strategy", "steps", "batch_size", "lr", "backbone_lr_mult", "weight_decay", "optimizer",
                       "warmup", "trade_off", "mcc_temperature", "disc_hidden", "eval_every", "seed", "augment",
                       "tta", "bn", "head_hidden"),
          "data": ("val_fraction", "image_size"),
          "advanced and testing": ("precision", "stop_after")}


def _parser() -> argparse.ArgumentParser:
    """One flag per AdaptConfig field: adapt's own fields from their metadata, the others from the
    TrainConfig field of the same name (same help and default as train)."""
    from ..adaptation.config import AdaptConfig
    from .options import GROUP_TITLES, ONE_SOURCE_HELP, add_field, add_shared, command_parser, train_field
    p = command_parser(
        "adapt",
        "Train on labelled SOURCE images and unlabelled TARGET images with a domain adaptation method "
        "(dann, mcc) or the source_only baseline; writes a run directory that `transferkit predict` and "
        "`transferkit evaluate` use like a `train` run.",
        ["transferkit adapt --source photos/ --target sketches/ --out runs/adapt",
         "transferkit adapt --source photos/ --target sketches/ --target-test sketches_labelled/ "
         "--method mcc --steps 500 --out runs/mcc",
         "transferkit adapt --resume runs/mcc"])
    fields = AdaptConfig.__dataclass_fields__
    for key, names in GROUPS.items():
        group = p.add_argument_group(GROUP_TITLES[key])
        if key == "essentials":
            add_shared(group, "--resume")
            add_shared(group, "--quiet")
        for name in names:
            f = fields[name]
            add_field(group, f if f.metadata.get("help") else train_field(name),
                      help=ONE_SOURCE_HELP if name == "backbone" else None)
    return p


def main(argv: list[str]) -> int:
    """`argv[0]` is the command name (`adapt`)."""
    from ..adaptation import adapt, make_adapt_config
    args = _parser().parse_args(argv[1:])
    values = {k: v for k, v in vars(args).items() if k not in ("resume", "quiet")}
    say = (lambda *a, **k: None) if args.quiet else print
    if args.resume:
        out = args.resume if isinstance(args.resume, str) else values.get("out")
        if not out:
            raise ValueError("--resume needs the run directory: --resume RUN_DIR")
        if not (Path(out) / "adapt.yaml").is_file():
            raise FileNotFoundError(f"{out} has no adapt.yaml: it is not a `transferkit adapt` run to resume")
        cfg = make_adapt_config(out=out, stop_after=values.get("stop_after"))
        result = adapt(cfg, resume=True, log=say, progress=not args.quiet)
    else:
        for need in ("source", "target", "out"):
            if not values.get(need):
                raise ValueError(f"adapt needs --{need}" + (" RUN_DIR" if need == "out" else " DATA"))
        result = adapt(make_adapt_config(**values), log=say, progress=not args.quiet)
    if result.interrupted:
        return 0
    m = result.metrics or {}
    print(json.dumps({"method": m.get("method"), "target_accuracy": m.get("accuracy"),
                      "target_macro_f1": m.get("macro_f1"),
                      "source_val_accuracy": (m.get("source_val") or {}).get("accuracy"),
                      "n_train": m.get("n_train"), "n_target": m.get("n_target"), "n_test": m.get("n_test")}))
    return 0


PARSERS = {"adapt": _parser}
