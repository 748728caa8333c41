"""`transferkit compare` and `transferkit rank`: argument parsing and output over
`transferkit.choose.compare.run_compare` and `transferkit.choose.rank.rank_sources`."""

from __future__ import annotations

import argparse
import json
import shlex

from ..config import FIELD_NAMES
from .options import (add_deprecated, add_shared, add_train_options, command_parser, config_help, out_help,
                      require)


def _compare_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "compare",
        "Train every strategy x shot count x seed on DATA with identical splits per seed, always next to "
        "a plain linear probe; write OUT/compare.json, compare.md and compare.html, and name the best "
        "strategy per shot count by validation score. A --config recipe sets the options every cell "
        "shares.",
        ["transferkit compare photos/ --out cmp/",
         "transferkit compare photos/ --strategies linear_probe,two_phase --shots 5,all --seeds 2 --out cmp/",
         "transferkit compare texts.csv --backbone bundled:minilm-l6 --budget 30 --out cmp-text/"],
        usage="%(prog)s DATA --out DIR [options]")
    ess = p.add_argument_group("essentials")
    ess.add_argument("data", help="folder of class folders, image CSV (path,label), or text CSV/TSV/JSONL")
    add_shared(ess, "--out", required=True,
               help=out_help("output directory (cells/ + compare.json/.md/.html)", required=True))
    ess.add_argument("--strategies", default="linear_probe,multi_probe,two_phase,full+l2sp,auto,scratch",
                     help="comma-separated: auto, linear_probe, multi_probe, partial:K, full, two_phase, "
                          "stages:A-B, prototypes, STRATEGY+REG (full+l2sp = l2sp:10, two_phase+l2sp:100, "
                          "full+bss:0.001), scratch (same architecture, random init, full, lr 3e-3) "
                          "(default: linear_probe,multi_probe,two_phase,full+l2sp,auto,scratch)")
    ess.add_argument("--shots", default=None, metavar="LIST",
                     help="labelled examples per class (dense tasks: training images), one cell each: e.g. "
                          "5,10,all (default: 5,10,all; for segment, detect and anomaly: all)")
    ess.add_argument("--seeds", default="3", help="a count (3: seeds 0,1,2) or a list (0,5,7) (default: 3)")
    ess.add_argument("--budget", type=float, default=None, metavar="MINUTES",
                     help="wall-clock budget: training cells estimated not to fit are shortened or "
                          "skipped (default: none; allowed: number > 0)")
    ess.add_argument("--config", metavar="RECIPE", help=config_help())
    add_shared(ess, "--quiet")
    add_train_options(p, skip={"data", "out", "strategy", "shots", "seed", "stop_after"})
    return p


_RANK_KEEP = {"shots", "seed", "image_size", "val", "test", "val_fraction", "test_fraction",
              "text_col", "label_col", "in_chans", "chans_init", "array_layout", "spectrogram", "batch_size"}
_RANK_SKIP = set(FIELD_NAMES) - _RANK_KEEP


def _rank_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "rank",
        "Score source models on DATA's training split before training: LogME on frozen features, and "
        "LEEP where the source keeps its classifier. Higher is better.",
        ["transferkit rank photos/ --backbone bundled:efficientnet_lite0,timm:resnet18",
         "transferkit rank photos/ --backbone bundled:efficientnet_lite0,timm:convnext_tiny --pick --json"])
    ess = p.add_argument_group("essentials")
    ess.add_argument("data", help="folder of class folders, image CSV (path,label), or text CSV/TSV/JSONL")
    ess.add_argument("--backbone", metavar="SRC1,SRC2,...", default=None,
                     help="comma-separated source ids to rank, e.g. bundled:efficientnet_lite0,"
                          "timm:tf_efficientnet_lite0@random (train's auto:SRC1,SRC2,... also works) (required)")
    ess.add_argument("--pick", action="store_true",
                     help="also cross-validate a logistic-regression probe on each source's features and "
                          "name the source with the best held-out accuracy, the one 'train --backbone "
                          "auto:SRC1,SRC2,...' would train (default: off)")
    add_shared(ess, "--json")
    # the data options mean what they mean for `train`, and are checked the same way
    add_train_options(p, skip=_RANK_SKIP)
    from .embeddings import add_cache_options
    add_cache_options(p)
    add_deprecated(p, "rank")
    return p


def cmd_compare(argv: list[str]) -> int:
    args = _compare_parser().parse_args(argv)  # --help and usage errors answer before torch loads
    from ..choose.compare import parse_seeds, parse_shots, run_compare
    from ..choose.compare_report import format_markdown
    from ..config import load_recipe, make_config
    recipe = load_recipe(args.config) if args.config else {}
    own = {"data", "strategies", "shots", "seeds", "out", "budget", "config", "quiet"}
    overrides = {k: v for k, v in vars(args).items() if k not in own}
    from .. import dense
    base = make_config(dense.with_task_defaults(recipe, overrides.get("task"), args.data), data=args.data,
                       out=args.out, **overrides)
    task = dense.resolve_task(base, log=print)
    if dense.is_dense(task):  # segment / detect / anomaly: a run per cell, the task's metric (dense/compare.py)
        return _compare_dense(task, base, args, argv)
    result = run_compare(base, args.strategies.split(","), parse_shots(args.shots or "5,10,all"), parse_seeds(args.seeds),
                         args.out, budget_minutes=args.budget,
                         log=(lambda *a, **k: None) if args.quiet else print,
                         command="transferkit compare " + shlex.join(argv))
    print()
    print(format_markdown(result))
    metric = result["metric"]
    for shots, r in result["recommended"].items():
        label = "all labels" if shots == "all" else f"{shots} shots"
        print(f"recommended for {label}: {r['strategy']} (mean {r['by'].replace('_', ' ')} {r['score']:.3f})"
              if r else f"recommended for {label}: none (no cell ran)")
    print(f"\nwrote {args.out}/compare.json, compare.md, compare.html")
    return 0


def _compare_dense(task: str, base, args, argv: list[str]) -> int:
    from ..choose.compare import parse_seeds, parse_shots
    from ..dense.compare import STRATEGIES, format_markdown, run_dense_compare
    if args.budget is not None:
        raise ValueError(f"--budget: a {task} compare runs every cell; drop --budget, or pass fewer "
                         "--strategies, --shots or --seeds")
    given = args.strategies if args.strategies != _compare_parser().get_default("strategies") else None
    result = run_dense_compare(task, base, (given or ",".join(STRATEGIES[task])).split(","),
                               parse_shots(args.shots or "all"), parse_seeds(args.seeds), args.out,
                               log=(lambda *a, **k: None) if args.quiet else print,
                               command="transferkit compare " + shlex.join(argv))
    print()
    print(format_markdown(result))
    for shots, r in result["recommended"].items():
        label = "all images" if shots == "all" else f"{shots} images"
        print(f"recommended for {label}: {r['strategy']} (mean validation {result['metric']} {r['score']:.3f})"
              if r else f"recommended for {label}: none (no cell has a validation score, and the "
                        "test split never chooses)")
    print(f"\nwrote {args.out}/compare.json, compare.md, compare.html")
    return 0


def cmd_rank(argv: list[str]) -> int:
    args = _rank_parser().parse_args(argv)
    require(args, "rank", "--backbone")
    from ..choose.rank import format_ranking, rank_sources
    from ..config import make_config
    from .embeddings import open_cache_from_args
    listed = args.backbone[len("auto:"):] if args.backbone.startswith("auto:") else args.backbone
    sources = [s.strip() for s in listed.split(",") if s.strip()]
    from ..engine.input_kind import settle_inputs
    # arrays, signals, --in-chans: channels, statistics and spectrogram from the training split, as
    # `train` settles them (engine/input_kind.py); RGB pictures: the config as given
    c = settle_inputs(make_config(None, data=args.data, **{k: getattr(args, k) for k in _RANK_KEEP}))
    log = (lambda *a, **k: None) if args.json else print

    def rank(srcs):
        return rank_sources(args.data, srcs, shots=c.shots, seed=c.seed, image_size=c.image_size,
                            batch_size=2 * c.batch_size, val=c.val, test=c.test,
                            val_fraction=c.val_fraction, test_fraction=c.test_fraction,
                            text_col=c.text_col, label_col=c.label_col,
                            cache=open_cache_from_args(args), cv=args.pick, log=log)
    rows = rank(sources) if c.chan_mean is None else _rank_adapted(sources, c, rank)
    picked = None
    if args.pick:
        from ..choose.source import best_row
        picked = best_row(rows)
    if args.json:
        print(json.dumps({"rows": rows, "picked": picked["source"]} if picked else rows, indent=2))
    else:
        print()
        print(format_ranking(rows))
        if picked:
            how = (f"cross-validated probe accuracy {picked['cv_accuracy']:.3f}"
                   if picked.get("cv_accuracy") is not None else "LogME (a class has one label)")
            print(f"\npicked: {picked['source']} (by {how})")
    return 0


def _rank_adapted(sources: list[str], cfg, rank) -> list[dict]:
    """Rank sources whose first conv must read cfg.in_chans channels: each is loaded as `train`
    would build it (seeded, first conv adapted, the data's channel statistics), ranked alone so
    only one is in memory, and the rows are ordered together."""
    import torch
    from ..engine.input_kind import adapt_backbone
    from ..models import load_backbone
    rows = []
    for src in sources:
        torch.manual_seed(cfg.seed)
        bb = load_backbone(src)
        rows += rank([adapt_backbone(bb, cfg) if bb.modality == "image" else bb])
    rows.sort(key=lambda r: -r["logme"])
    for i, r in enumerate(rows, start=1):
        r["rank"] = i
    return rows


def main(argv: list[str]) -> int:
    """`argv` starts with the command name (`compare` or `rank`)."""
    handlers = {"compare": cmd_compare, "rank": cmd_rank}
    return handlers[argv[0]](argv[1:])


PARSERS = {"compare": _compare_parser, "rank": _rank_parser}
