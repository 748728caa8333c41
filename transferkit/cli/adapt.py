"""`transferkit adapt`: unsupervised domain adaptation over `transferkit.adaptation.adapt`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path


def _field_help() -> dict[str, str]:
    """The comment beside each AdaptConfig field is its help text (one source for both)."""
    from ..adaptation import config
    text = Path(config.__file__).read_text(encoding="utf-8")
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^    (\w+): [^=]+=.*?#(.*)$", text, re.M)}


def _parser() -> argparse.ArgumentParser:
    from ..adaptation.config import AdaptConfig
    p = argparse.ArgumentParser(
        prog="transferkit adapt", allow_abbrev=False,
        description="Train on labelled SOURCE images and unlabelled TARGET images with a domain adaptation "
                    "method (dann, mcc) or the source_only baseline; writes a run directory that "
                    "`transferkit predict` and `transferkit evaluate` use like a `train` run.")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN_DIR",
                   help="continue an interrupted run exactly (RUN_DIR, or the --out directory)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    helps = _field_help()
    for f in dataclasses.fields(AdaptConfig):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                           help=helps.get(f.name))
        else:
            p.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(),
                           help=helps.get(f.name, "") + (f" (default: {f.default})" if f.default not in ("", None) else ""))
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
