"""The core commands: models, train, evaluate, predict, demo. Registered in `main.COMMANDS` like every
other command; `main(argv)` parses with the command's own parser (argv starts with its name)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from .options import (MAIN, add_deprecated, add_fields, add_shared, add_train_options, command_parser,
                      config_help, field_help, out_help, positive_int, train_field)


def models_parser() -> argparse.ArgumentParser:
    m = command_parser("models", "List the source models transferkit bundles or knows how to load, with "
                       "their modality, feature size and stages.",
                       ["transferkit models", "transferkit models --json"])
    add_shared(m, "--json")
    return m


def train_parser() -> argparse.ArgumentParser:
    t = command_parser(
        "train", "Fine-tune a pretrained backbone on DATA and write a run directory (model, config.yaml, "
        "metrics.json, report.html) that evaluate, predict, export and serve read. Every option is also "
        "a key of a --config recipe; flags override the recipe.",
        ["transferkit train photos/ --out runs/photos",
         "transferkit train photos/ --backbone timm:convnext_tiny --strategy two_phase --shots 10 --out runs/p10",
         "transferkit train --config two_phase data.csv --out runs/x --no-tta"],
        usage="%(prog)s [DATA] --out RUN_DIR [options]  |  %(prog)s --resume RUN_DIR")
    ess = t.add_argument_group("essentials")
    ess.add_argument("data", nargs="?", help="folder of class folders, image CSV (path,label), or text "
                     "CSV/TSV/JSONL (or 'data:' in the recipe)")
    ess.add_argument("--config", metavar="RECIPE", help=config_help())
    add_shared(ess, "--resume")
    add_shared(ess, "--quiet")
    add_train_options(t, skip={"data"}, required={"out"})
    return t


def evaluate_parser() -> argparse.ArgumentParser:
    e = command_parser("evaluate", "Metrics of a finished run on labelled data (accuracy, macro-F1, ECE, "
                       "per class), optionally written with per-item predictions and a report.",
                       ["transferkit evaluate runs/photos held_out/",
                        "transferkit evaluate runs/photos held_out/ --out eval/ --json"])
    e.add_argument("run_dir", help="a finished run directory")
    e.add_argument("data", help="labelled data in any form train accepts; classes are matched by name")
    add_shared(e, "--out", help=out_help("also write DIR/metrics.json, predictions.csv (one row per item) and "
                                         "report.html with the most confident mistakes"))
    add_fields(e, ["overwrite", "batch_size"], title=MAIN)
    add_shared(e, "--tta")
    add_shared(e, "--json")
    return e


def predict_parser() -> argparse.ArgumentParser:
    pr = command_parser(
        "predict", "Labels for new inputs: from a finished run (RUN_DIR first), from a source model as it "
        "is (--backbone, its own classes), or zero-shot from class words (--zero-shot). For segment, "
        "anomaly and detect runs, --out names the folder that receives masks, heat maps or boxes.",
        ["transferkit predict runs/photos new/ --out preds.csv",
         "transferkit predict --backbone bundled:efficientnet_lite0 flower.jpg --top-k 3",
         "transferkit predict runs/seg photos/ --out masks/"])
    pr.add_argument("inputs", nargs="+", help="RUN_DIR then files/folders/texts, or files with --backbone")
    add_shared(pr, "--out", metavar="FILE|DIR",
               help=out_help("also write the rows, with every class's probability, to FILE: .csv (a column per "
                             "class and one per top-k label, as evaluate --out) or .jsonl, never replacing a "
                             "file; a dense run (segment, anomaly, detect) writes its outputs into the folder DIR"))
    pr.add_argument(
        "--backbone", metavar="SRC", default=None,
        help="predict with a source model's own classes, e.g. bundled:efficientnet_lite0 "
             "(default: none: the first input is a run directory)")
    add_shared(pr, "--top-k")
    add_shared(pr, "--tta")
    add_fields(pr, ["batch_size"], title=MAIN)
    add_shared(pr, "--json")
    z = pr.add_argument_group("zero-shot")
    z.add_argument("--zero-shot", metavar="BRIDGE_DIR|clip:NAME",
                   help="classify images by class words in a joint space (a bridge from 'transferkit bridge', "
                        "or a clip: model); classes from --classes/--class-text (default: off)")
    z.add_argument("--classes", help='zero-shot candidate classes, "a,b,c"; their names are their words '
                                     "(default: all classes of --class-text)")
    z.add_argument("--class-text", help="zero-shot: CSV/JSON class -> words (default: the class names)")
    add_deprecated(pr, "predict")
    return pr


def demo_parser() -> argparse.ArgumentParser:
    d = command_parser("demo", "Train, evaluate and report on a bundled data set end to end: the quickest "
                       "way to see what transferkit does.",
                       ["transferkit demo", "transferkit demo --text --out runs/text-demo",
                        "transferkit demo --quick --seed 1"])
    d.add_argument("--text", action="store_true",
                   help="the text demo (Debian package descriptions) (default: off, the image demo)")
    add_shared(d, "--out", default="runs/demo", help=out_help("run directory to write", default="runs/demo"))
    d.add_argument("--shots", type=positive_int, default=None, metavar="N",
                   help="labels per class (default: 10 for images, 16 for text)")
    d.add_argument("--seed", type=_seed, default=0, help=field_help(train_field("seed")))
    d.add_argument("--quick", action="store_true", help="fewer steps, for a smoke test (default: off)")
    return d


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"expected 0 <= seed < 2**32, got {value}")
    return value


def _print_table(rows: list[dict], cols: list[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in cols))


def cmd_models(args) -> int:
    from ..models import KINDS, list_sources
    rows = list_sources()
    if args.json:
        print(json.dumps({"sources": rows, "kinds": list(KINDS)}, indent=2))
        return 0
    _print_table([{**r, "feature_dim": r.get("feature_dim", "-"), "stages": r.get("num_stages", "-"),
                   "params": f"{r['params'] / 1e6:.1f}M" if "params" in r else "-"} for r in rows],
                 ["id", "modality", "feature_dim", "stages", "params", "description"])
    print("\nother sources: timm:NAME (e.g. timm:resnet50), torchvision:NAME, hf:NAME_OR_DIR, "
          "file:PATH [--arch NAME], clip:NAME_OR_DIR (joint image-text); add @random for random init (e.g. timm:tf_efficientnet_lite0@random)")
    return 0


def _print_dense(rows: list[dict], args) -> int:
    if args.json:
        print(json.dumps(_strict_json(rows), indent=2))
    else:
        for r in rows:
            print("\t".join(str(v) for v in r.values()))
    return 0


def cmd_predict(args) -> int:
    from ..engine.run import predict_run, predict_source
    from .. import dense
    task = None if args.backbone or args.zero_shot else dense.run_task(args.inputs[0])
    if dense.is_dense(task):  # masks / heat maps / boxes: files in the folder --out names
        if len(args.inputs) < 2:
            raise ValueError("predict needs RUN_DIR and at least one input (file or folder)")
        return _print_dense(dense.task_module(task).predict(args.inputs[0], args.inputs[1:], args.out), args)
    if args.out:
        from ..report.outputs import check_predictions_path, write_predictions
        check_predictions_path(args.out)
    if (args.backbone or args.zero_shot) and args.tta is not None:
        raise ValueError("--tta/--no-tta apply to a run's predictions (RUN_DIR first), not to "
                         + ("--backbone" if args.backbone else "--zero-shot"))
    if args.zero_shot:
        from ..zeroshot.predict import predict_zero_shot
        rows = predict_zero_shot(args.zero_shot, args.inputs, classes=args.classes,
                                 class_text=args.class_text, top_k=args.top_k, probabilities=bool(args.out))
    elif args.backbone:
        rows = predict_source(args.backbone, args.inputs, top_k=args.top_k, probabilities=bool(args.out))
    else:
        run, inputs = args.inputs[0], args.inputs[1:]
        if not inputs:
            raise ValueError("predict needs RUN_DIR and at least one input (file, folder or text)")
        rows = predict_run(run, inputs, top_k=args.top_k, batch_size=_batch_size(args), tta=args.tta,
                           probabilities=bool(args.out))
    failed = [r for r in rows if r.get("error")]
    if failed:
        print(f"transferkit: warning: no prediction for {len(failed)} input(s), marked 'error' in the output",
              file=sys.stderr)
    if args.out:
        print(f"wrote {write_predictions(rows, args.out)} ({len(rows)} rows)", file=sys.stderr)
        rows = [{k: v for k, v in r.items() if k != "probabilities"} for r in rows]  # the file has them
    if args.json:
        print(json.dumps(_strict_json(rows), indent=2))
        return 0
    for r in rows:
        top = ", ".join(f"{t['label']} {t['probability']:.3f}" for t in r["top"])
        print(f"{r['input']}\t{top or 'ERROR: ' + r['error']}")
    return 0


def _batch_size(args) -> int:
    """The forward-only batch of --batch-size (twice it, as in train's evaluation), checked as
    train checks it (make_config)."""
    from ..config import make_config
    return 2 * make_config(None, batch_size=args.batch_size).batch_size


def _strict_json(obj):
    from ..store.safety import json_safe
    return json_safe(obj)[0]


def cmd_train(args) -> int:
    from ..config import load_recipe, make_config
    from ..train import train
    recipe = load_recipe(args.config) if args.config else {}
    overrides = {k: getattr(args, k) for k in vars(args)
                 if k not in ("command", "config", "resume", "quiet", "version", "_deferred")}
    if args.resume:
        out = args.resume if isinstance(args.resume, str) else overrides.get("out")
        if not out:
            raise ValueError("--resume needs the run directory: --resume RUN_DIR")
        from ..engine.resume import RUNTIME_OPTIONS
        cfg = make_config({}, out=out, **{k: overrides.get(k) for k in RUNTIME_OPTIONS})
        result = train(cfg, resume=True, quiet=args.quiet)
    else:
        from ..dense import with_task_defaults  # detect: batches of 8 unless --batch-size or the recipe says
        cfg = make_config(with_task_defaults(recipe, overrides.get("task"), overrides.get("data")), **overrides)
        if not cfg.data:
            raise ValueError("train needs DATA (a folder, CSV, TSV or JSONL) or 'data:' in the recipe")
        if not cfg.out:
            raise ValueError("train needs --out RUN_DIR (or 'out:' in the recipe)")
        result = train(cfg, quiet=args.quiet)
    if result.interrupted:
        return _report_interrupted(result)
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun / accelerate launch, one process reports
    m = result.metrics or {}
    keys = getattr(result, "summary", None) or ("accuracy", "macro_f1", "ece", "n_train", "n_val", "n_test")
    print(json.dumps(_strict_json({k: m.get(k) for k in keys})))
    return 0


def _report_interrupted(result) -> int:
    if result.signal is None:
        return 0  # --stop-after: stopped as asked
    from ..engine.interrupt import name
    print(f"transferkit: {name(result.signal)}: stopped after step {result.state.global_step} with a checkpoint; "
          f"continue with: transferkit train --resume {result.run_dir}", file=sys.stderr)
    return 128 + result.signal


def cmd_evaluate(args) -> int:
    from .. import dense
    if dense.is_dense(dense.run_task(args.run_dir)):
        return _evaluate_dense(args, dense.task_module(dense.run_task(args.run_dir)))
    from ..engine.run import evaluate_loaded, load_run
    if args.out:
        from ..report.outputs import check_evaluation_dir, write_evaluation
        check_evaluation_dir(args.out, bool(args.overwrite))
    model, cfg = load_run(args.run_dir)
    m, items, probs = evaluate_loaded(model, cfg, args.data, tta=args.tta, run_dir=args.run_dir,
                                      batch_size=_batch_size(args))
    for w in m.get("warnings", []):
        print(f"transferkit: warning: {w}", file=sys.stderr)
    if args.out:
        d = write_evaluation(args.out, args.run_dir, model, cfg, m, items, probs, overwrite=bool(args.overwrite),
                             log=lambda line: print(line, file=sys.stderr))
        print(f"wrote {d}/metrics.json, predictions.csv, report.html", file=sys.stderr)
    if args.json:
        print(json.dumps(_strict_json(m), indent=2))
        return 0
    print(f"accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  ECE {m['ece']:.4f}  n={m['n']}")
    if m.get("absent_classes"):
        print(f"classes of the run absent from {args.data} (not in macro-F1): {', '.join(m['absent_classes'])}")
    _print_table([{"class": c, **{k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in r.items()}}
                  for c, r in m["per_class"].items()], ["class", "precision", "recall", "f1", "support"])
    return 0


def _evaluate_dense(args, task) -> int:
    if args.out:
        from ..dense.runs import free_output_dir
        free_output_dir(args.out, ["metrics.json"])
    m = task.evaluate(args.run_dir, args.data)
    if args.out:
        from ..store.checkpoint import atomic_write_json
        atomic_write_json(os.path.join(args.out, "metrics.json"), m)
        print(f"wrote {args.out}/metrics.json", file=sys.stderr)
    if args.json:
        print(json.dumps(_strict_json(m), indent=2))
        return 0
    print("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items()
                    if isinstance(v, (int, float, str)) or v is None))
    for k, v in m.items():  # per class (segment) or per defect type (anomaly)
        if isinstance(v, dict):
            print(f"{k}: " + "  ".join(f"{c} {'-' if x is None else f'{x:.4f}'}" for c, x in v.items()))
    return 0


def cmd_demo(args) -> int:
    from ..demo import run_demo
    run_demo(text=args.text, out=args.out, shots=args.shots, seed=args.seed, quick=args.quick)
    return 0


PARSERS = {"models": models_parser, "train": train_parser, "evaluate": evaluate_parser,
           "predict": predict_parser, "demo": demo_parser}
HANDLERS = {"models": cmd_models, "train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict,
            "demo": cmd_demo}


def main(argv: list[str]) -> int:
    """`argv` starts with the command name."""
    args = PARSERS[argv[0]]().parse_args(argv[1:])
    return HANDLERS[argv[0]](args)
