"""`transferkit compare` and `transferkit rank`: argument parsing and output over
`transferkit.choose.compare.run_compare` and `transferkit.choose.rank.rank_sources`."""

from __future__ import annotations

import argparse
import json
import shlex

from .options import add_train_options


def _compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="transferkit compare", allow_abbrev=False,
        description="Train every strategy x shot count x seed on DATA with identical splits per seed, "
                    "always next to a plain linear probe; write OUT/compare.json, compare.md and "
                    "compare.html, and name the best strategy per shot count by validation score.")
    p.add_argument("data", help="folder of class folders, image CSV (path,label), or text CSV/TSV/JSONL")
    p.add_argument("--strategies", default="linear_probe,full,full+l2sp,two_phase,scratch",
                   help="comma-separated: linear_probe, partial:K, full, two_phase, stages:A-B, "
                        "STRATEGY+REG (full+l2sp = l2sp:0.01, two_phase+l2sp:0.001, full+bss:0.001), "
                        "scratch (same architecture, random init, full, lr 3e-3)")
    p.add_argument("--shots", default="5,10,all", help="labelled examples per class: e.g. 5,10,all")
    p.add_argument("--seeds", default="3", help="a count (3: seeds 0,1,2) or a list (0,5,7)")
    p.add_argument("--out", required=True, help="output directory (cells/ + compare.json/.md/.html)")
    p.add_argument("--budget", type=float, default=None, metavar="MINUTES",
                   help="wall-clock budget: training cells estimated not to fit are shortened or skipped")
    p.add_argument("--config", help="YAML recipe for the options every cell shares; flags override it")
    p.add_argument("--quiet", action="store_true", help="no per-cell lines")
    add_train_options(p, skip={"data", "out", "strategy", "shots", "seed", "stop_after"})
    return p


def _rank_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="transferkit rank", allow_abbrev=False,
        description="Score source models on DATA's training split before training: LogME on frozen "
                    "features, and LEEP where the source keeps its classifier. Higher is better.")
    p.add_argument("data")
    p.add_argument("--backbones", required=True,
                   help="comma-separated source ids, e.g. bundled:efficientnet_lite0,timm:tf_efficientnet_lite0@random")
    p.add_argument("--shots", type=int, default=None, help="score on N training examples per class")
    p.add_argument("--seed", type=int, default=0, help="the split/shot seed (as for train)")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--val", default=None)
    p.add_argument("--test", default=None)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--text-col", default="text")
    p.add_argument("--label-col", default="label")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    return p


def cmd_compare(argv: list[str]) -> int:
    from ..choose.compare import parse_seeds, parse_shots, run_compare
    from ..choose.compare_report import format_markdown
    from ..config import load_recipe, make_config
    args = _compare_parser().parse_args(argv)
    recipe = load_recipe(args.config) if args.config else {}
    own = {"data", "strategies", "shots", "seeds", "out", "budget", "config", "quiet"}
    overrides = {k: v for k, v in vars(args).items() if k not in own}
    base = make_config(recipe, data=args.data, out=args.out, **overrides)
    result = run_compare(base, args.strategies.split(","), parse_shots(args.shots), parse_seeds(args.seeds),
                         args.out, budget_minutes=args.budget,
                         log=(lambda *a, **k: None) if args.quiet else print,
                         command="transferkit compare " + shlex.join(argv))
    print()
    print(format_markdown(result))
    metric = result["metric"]
    for shots, r in result["recommended"].items():
        label = "all labels" if shots == "all" else f"{shots} shots"
        print(f"recommended for {label}: {r['strategy']} (mean validation {metric} {r[f'val_{metric}']:.3f})"
              if r else f"recommended for {label}: none (no cell ran)")
    print(f"\nwrote {args.out}/compare.json, compare.md, compare.html")
    return 0


def cmd_rank(argv: list[str]) -> int:
    from ..choose.rank import format_ranking, rank_sources
    args = _rank_parser().parse_args(argv)
    sources = [s.strip() for s in args.backbones.split(",") if s.strip()]
    rows = rank_sources(args.data, sources, shots=args.shots, seed=args.seed, image_size=args.image_size,
                        batch_size=args.batch_size, val=args.val, test=args.test,
                        val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                        text_col=args.text_col, label_col=args.label_col,
                        log=(lambda *a, **k: None) if args.json else print)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print()
        print(format_ranking(rows))
    return 0


def main(argv: list[str]) -> int:
    """`argv` starts with the command name (`compare` or `rank`)."""
    handlers = {"compare": cmd_compare, "rank": cmd_rank}
    return handlers[argv[0]](argv[1:])
