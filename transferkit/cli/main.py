"""The `transferkit` command: a thin layer over the library (argument parsing, output, exit codes)."""

from __future__ import annotations

import argparse
import sys

from .options import EXIT_USAGE

# Every command: name -> (its module under transferkit/cli/, help). Each module has `main(argv)`,
# where argv starts with the command name, and `PARSERS[name]()`, its parser (built with
# cli/options.py like every other); the module is imported only for its command, so `--help` and
# usage errors answer before PyTorch loads.
COMMANDS = {
    "models": ("core", "list the backbone sources"),
    "train": ("core", "fine-tune a pretrained backbone on DATA"),
    "evaluate": ("core", "metrics of a trained run on labelled data"),
    "predict": ("core", "labels for new inputs, from a run or a source model as it is"),
    "demo": ("core", "the end-to-end demo on the bundled data sets"),
    "compare": ("choose", "compare strategies x shots x seeds on one task"),
    "rank": ("choose", "rank source models on DATA before training (LogME, LEEP)"),
    "export": ("ship", "write a run as timm/hf/onnx/torchscript, checked for parity"),
    "serve": ("ship", "serve a run over HTTP with a prediction page"),
    "bridge": ("bridge", "learn a bridge from image features to a text encoder (zero-shot, name priors)"),
    "embed": ("embeddings", "pooled features of DATA from a frozen source model, to .npy/.safetensors"),
    "knn": ("embeddings", "nearest class mean and k-NN on frozen features from a few labels"),
    "cluster": ("embeddings", "k-means on frozen features with no labels, a contact sheet per cluster"),
    "cache": ("cache", "the feature cache: info | clear"),
    "adapt": ("adapt", "unsupervised domain adaptation: labelled source + unlabelled target (dann, mcc)"),
}


def command_parser(name: str) -> argparse.ArgumentParser:
    """The full parser of `transferkit NAME` (what `transferkit NAME --help` prints); building it
    imports no PyTorch and has no side effects."""
    import importlib
    return importlib.import_module(f".{COMMANDS[name][0]}", __package__).PARSERS[name]()


def build_parser(full: bool = False) -> argparse.ArgumentParser:
    """The `transferkit` parser. `full=True`: every command's real parser as its subcommand (for
    generated references such as the docs' CLI page); else light stubs, so `transferkit --help`
    imports no command module."""
    from .options import HelpFormatter
    ap = argparse.ArgumentParser(
        prog="transferkit", description="Transfer learning from pretrained models.",
        formatter_class=HelpFormatter, allow_abbrev=False,
        epilog="examples:\n\n  transferkit train photos/ --out runs/photos\n"
               "  transferkit evaluate runs/photos held_out/\n  transferkit predict runs/photos new/ --out preds.csv"
               "\n\n'transferkit COMMAND --help' lists a command's options.")
    ap.add_argument("--version", action="store_true", help="print the version and exit")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    for name, (_, helptext) in COMMANDS.items():
        if full:
            real = command_parser(name)
            c = sub.add_parser(name, help=helptext, parents=[real], add_help=False,
                               description=real.description, epilog=real.epilog,
                               formatter_class=real.formatter_class, allow_abbrev=False)
        else:
            c = sub.add_parser(name, help=helptext, add_help=True)
        c.set_defaults(_deferred=name)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:  # the command owns its process: keep freed activations for the next batch (transferkit/allocator.py)
        from ..allocator import tune_allocator
        tune_allocator()
    except ValueError as e:
        print(f"transferkit: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if argv and argv[0] in COMMANDS:
        import importlib
        module = importlib.import_module(f".{COMMANDS[argv[0]][0]}", __package__)
        return _guard(lambda: module.main(argv))
    args = build_parser().parse_args(argv)
    if args.version:
        from .. import __version__
        print(__version__)
        return 0
    build_parser().print_help()
    return EXIT_USAGE


def _guard(fn) -> int:
    """Known user errors become one clear line and exit code 2; anything else is a real bug."""
    # DataError, SourceError and ConfigError are ValueErrors: nothing is imported here, so that
    # `--help` and usage errors answer before PyTorch loads
    try:
        return fn()
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"transferkit: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("transferkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
