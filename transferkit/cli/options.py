"""How every command's parser is built, and the flags the commands share.

One interface: a flag means the same thing with the same default in every command that has it.
- Options backed by a `TrainConfig` field (transferkit/config.py) get their flag, help, default and
  allowed values from the field's metadata (`add_train_options`, `add_fields`), in every command.
- The other shared flags (`--out`, `--json`, `--quiet`, `--top-k`, `--resume`, ...) are defined once
  in `SHARED` and added with `add_shared`.
- Where a shared flag legitimately means something else in one command, the difference and its
  reason are recorded in `VARIANTS`; tests/test_cli_interface.py reads every command's `--help` and
  fails on any difference not recorded there (and on a record that no longer differs).
- Old spellings are accepted for one release with a one-line warning (`add_deprecated`,
  `DEPRECATED`).
Nothing here imports PyTorch: `--help` and usage errors answer at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import textwrap

EXIT_USAGE = 2


class HelpFormatter(argparse.HelpFormatter):
    """argparse's layout, except that paragraphs are wrapped separately and lines indented by
    two spaces (the examples) are kept as written."""

    def _fill_text(self, text, width, indent):
        out = []
        for para in text.split("\n\n"):
            if all(line.startswith("  ") for line in para.splitlines()):
                out.append("\n".join(indent + line for line in para.splitlines()))
            else:
                out.append(textwrap.fill(" ".join(para.split()), width, initial_indent=indent,
                                         subsequent_indent=indent))
        return "\n\n".join(out)


def command_parser(name: str, description: str, examples: list[str],
                   usage: str | None = None) -> argparse.ArgumentParser:
    """The parser of `transferkit NAME`, built the same way for every command: a description,
    no abbreviated flags, and two or three examples at the end of `--help`. `usage`: a short
    usage line for commands with dozens of options (else argparse lists every flag)."""
    epilog = "examples:\n\n" + "\n".join("  " + e for e in examples)
    return argparse.ArgumentParser(prog=f"transferkit {name}", description=description, epilog=epilog,
                                   usage=usage, formatter_class=HelpFormatter, allow_abbrev=False)


# --- TrainConfig-backed options -----------------------------------------------------------------

# The `--help` group of every TrainConfig field (tests check that each field has exactly one).
FIELD_GROUPS: dict[str, tuple[str, ...]] = {
    "essentials": ("data", "out", "backbone", "strategy", "shots", "task", "overwrite"),
    "training": ("epochs", "steps", "lr", "backbone_lr_mult", "layer_decay", "optimizer", "weight_decay",
                 "warmup", "batch_size", "grad_accum", "seed", "reg", "bn", "head_hidden", "head_dropout",
                 "feature_norm", "label_smoothing", "augment", "augment_policy", "tta", "tta_views",
                 "eval_every", "patience", "metric", "wise", "probe_views", "cv_folds", "backbone_budget",
                 "decoder", "class_text", "bridge", "unlabelled", "unlabelled_weight", "unlabelled_ratio",
                 "unlabelled_threshold"),
    "data": ("val", "test", "val_fraction", "test_fraction", "image_size", "in_chans", "chans_init",
             "array_layout", "spectrogram", "chan_mean", "chan_std", "text_col", "label_col", "max_length",
             "pooling", "strict_images", "strict_shots", "allow_overlap"),
    "advanced and testing": ("precision", "num_workers", "cache", "cache_dir", "stage_cache", "arch",
                             "log_with", "resume_inexact", "checkpoint_every", "checkpoint_seconds",
                             "stop_after", "store_anchor"),
}
GROUP_TITLES = {"essentials": "essentials", "training": "training", "data": "data",
                "advanced and testing": "advanced and testing (checkpoints, caches, test hooks)"}

# How a flag reads in `--help` where the command itself requires it, though the field is optional
# in the library and in recipes.
REQUIRED_TEXT = {"out": "required, here or as 'out:' in the --config recipe"}


def _default_text(f: dataclasses.Field) -> str:
    if isinstance(f.default, bool):
        return "on" if f.default else "off"
    if f.default is None or f.default == "":
        return f.metadata.get("none") or "none"
    return str(f.default)


def field_help(f: dataclasses.Field, default: str | None = None) -> str:
    """`help (default: X; allowed: ...)` for one TrainConfig field."""
    from ..config import describe_allowed
    if default is None and _default_text(f).startswith("required"):
        default = _default_text(f)  # `(required, except with --resume)`, not `(default: required...)`
    text = f"{f.metadata.get('help', '')} ({default or 'default: ' + _default_text(f)}"
    allowed = describe_allowed(f)
    if allowed:
        text += f"; allowed: {allowed}"
    return (text + ")").replace("%", "%%")


def _metavar(f: dataclasses.Field) -> str:
    from ..config import is_float_field, is_int_field
    if f.metadata.get("choices"):
        return "{" + ",".join(f.metadata["choices"]) + "}"
    if f.metadata.get("none") == "all":
        return "{N,all}"
    if is_int_field(f):
        return "N"
    if is_float_field(f):
        return "X"
    return f.name.upper()


def add_field(group, f: dataclasses.Field, *, required: bool = False, help: str | None = None) -> None:
    """The flag of one TrainConfig field. Values are parsed and checked by `make_config`, so recipes,
    flags and the notebook API give the same errors. `help`: a recorded variant's own text (VARIANTS)."""
    from ..config import flag
    text = field_help(f, REQUIRED_TEXT.get(f.name) if required else None)
    if help:
        text = help + text[len(f.metadata.get("help", "")):]
    if isinstance(f.default, bool):
        group.add_argument(flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                           default=None, help=text)
    else:
        group.add_argument(flag(f.name), dest=f.name, default=None, metavar=_metavar(f), help=text)


def add_train_options(p: argparse.ArgumentParser, skip: set[str], title: str | None = None,
                      required: set[str] = frozenset(), helps: dict[str, str] | None = None) -> None:
    """One flag per TrainConfig field not in `skip`, in the `--help` groups of FIELD_GROUPS (or all
    in one group called `title`)."""
    from ..config import TrainConfig
    fields = {f.name: f for f in dataclasses.fields(TrainConfig) if f.name not in skip}
    helps = helps or {}
    if title:
        group = _group(p, title)
        for f in fields.values():
            add_field(group, f, required=f.name in required, help=helps.get(f.name))
        return
    for key, names in FIELD_GROUPS.items():
        mine = [fields[n] for n in names if n in fields]
        if mine:
            group = _group(p, GROUP_TITLES[key])
            for f in mine:
                add_field(group, f, required=f.name in required, help=helps.get(f.name))


def add_fields(p, names, title: str | None = None, helps: dict[str, str] | None = None) -> None:
    """The flags of the TrainConfig fields `names` (same help, default and checks as `train`;
    `helps`: the own description of a recorded variant)."""
    from ..config import FIELD_NAMES
    add_train_options(p, skip=set(FIELD_NAMES) - set(names), title=title, helps=helps)


# `--backbone` where a command uses the one source it is given (train's auto:... chooses one)
ONE_SOURCE_HELP = "source model id (see 'transferkit models'): kind:NAME[@random]; one source, no auto"


def train_field(name: str) -> dataclasses.Field:
    from ..config import TrainConfig
    return TrainConfig.__dataclass_fields__[name]


MAIN = "options"  # add_fields(p, ..., title=MAIN): beside the command's own flags


def _group(p: argparse.ArgumentParser, title: str):
    if title == MAIN:
        return p._optionals  # "options" (Python >= 3.10) or "optional arguments"
    for g in p._action_groups:
        if g.title == title:
            return g
    return p.add_argument_group(title)


def config_help() -> str:
    from ..config import shipped_recipes
    return ("YAML recipe: a path, or the name of a shipped recipe (" + ", ".join(shipped_recipes())
            + "); flags override it (default: none)")


# --- the other shared flags ------------------------------------------------------------------------

def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


# flag -> add_argument keywords. The help is the flag's one meaning; `add_shared(..., help=)` may
# replace it only where VARIANTS records why.
SHARED: dict[str, dict] = {
    "--json": dict(action="store_true", help="print the result as JSON (default: off)"),
    "--quiet": dict(action="store_true", help="no progress bars or messages (default: off)"),
    "--top-k": dict(type=positive_int, default=5, metavar="K",
                    help="labels per input, most probable first (default: 5)"),
    "--resume": dict(nargs="?", const=True, default=None, metavar="RUN_DIR",
                     help="continue an interrupted run exactly (RUN_DIR, or the --out directory) "
                          "(default: a new run)"),
    "--tta": dict(action=argparse.BooleanOptionalAction, default=None),  # help: TrainConfig.tta's
    "--out": dict(metavar="DIR"),
}


def _shared_tta_help() -> str:
    return train_field("tta").metadata["help"] + " (default: as the run was trained)"


def add_shared(p, flag: str, **override) -> argparse.Action:
    """Add one SHARED flag; `override` (e.g. `required`, or the help of a recorded variant)
    replaces its keywords. A required flag's help ends in `(required)` (see `out_help`)."""
    kw = dict(SHARED[flag])
    if flag == "--tta":
        kw["help"] = _shared_tta_help()
    kw.update(override)
    return p.add_argument(flag, dest=flag[2:].replace("-", "_"), **kw)


def out_help(what: str, required: bool = False, default: str = "none") -> str:
    """`--out`'s help: always where the command writes; `what` says what goes there."""
    return f"{what} ({'required' if required else 'default: ' + default})"


class _Deprecated(argparse.Action):
    """An old spelling: stores like the new flag, with a one-line warning on stderr."""

    def __init__(self, option_strings, dest, new: str = "", command: str = "", **kw):
        self.new, self.command = new, command
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"transferkit: warning: '{self.command} {option_string}' is deprecated and will be removed in the "
              f"next release; use '{self.new}'", file=sys.stderr)
        setattr(namespace, self.dest, values)


# (command, old spelling) -> new spelling: accepted, with a warning, until the next release
DEPRECATED: dict[tuple[str, str], str] = {
    ("predict", "--output"): "--out",
    ("predict", "--model"): "--backbone",
    ("rank", "--backbones"): "--backbone",
}


def add_deprecated(p: argparse.ArgumentParser, command: str) -> None:
    """The old spellings of `command`'s flags (DEPRECATED), hidden from `--help`."""
    for (cmd, old), new in DEPRECATED.items():
        if cmd == command:
            dest = next(a.dest for a in p._actions if new in a.option_strings)
            p.add_argument(old, dest=dest, action=_Deprecated, new=new, command=command,
                           help=argparse.SUPPRESS)


def require(args: argparse.Namespace, command: str, *flags: str) -> None:
    """The flags a command needs, checked after parsing (so a deprecated spelling counts)."""
    for flag in flags:
        if getattr(args, flag[2:].replace("-", "_"), None) in (None, ""):
            raise ValueError(f"{command} needs {flag}")


# Shared flags that mean something else in some commands, with the reason. `"*"`: the help is
# the command's own everywhere (the flag's role is the same, what it names differs). The test
# fails on a difference not recorded here, and on a record that no longer differs.
VARIANTS: dict[str, dict[str, str]] = {
    "--out": {"*": "always where the command writes; each command's help says what it writes there "
                   "(a run directory, a report folder, a file) and whether it is required"},
    "--backbone": {
        "predict": "optional: without it the first input is a run directory; with it, the source "
                   "model predicts its own classes",
        "rank": "a comma-separated list: rank scores several sources (auto:SRC1,SRC2 as for train is "
                "also accepted)",
        "bridge": "one image source (no auto); its features are mapped into the text space",
        "adapt": "one source (no auto: the adaptation trains the source it is given)",
        "embed": "one source (no auto: there is nothing to choose by)",
        "knn": "one source (no auto: knn scores the source it is given)",
        "cluster": "one source (no auto: there are no labels to choose by)",
    },
    "--backbone-lr-mult": {
        "adapt": "0.1 always: adapt trains on a labelled source set of any size, and the backbone's "
                 "features are what it adapts",
    },
    "--shots": {
        "compare": "a list: compare sweeps shot counts (5,10,all)",
        "demo": "the demo picks its own default per data set (10 images, 16 texts per class)",
    },
    "--tta": {
        "evaluate": "reads a finished run: the default is the run's own setting",
        "predict": "reads a finished run: the default is the run's own setting",
    },
    "--class-text": {
        "predict": "the same class -> words file; here the words are the zero-shot classes "
                   "(default: the class names), in train a prior for the head",
    },
    "--steps": {
        "adapt": "adapt has no epochs: a fixed 300 steps of one source and one target batch each",
        "bridge": "full-batch steps of the linear map on cached features (hinge/softmax losses)",
    },
    "--lr": {"bridge": "the learning rate of the linear map (no backbone trains)"},
    "--seed": {"bridge": "bridge has no splits or batches: the seed initialises the map only"},
    "--strategy": {"adapt": "one trainable phase (full, partial:K, stages:A-B); default full"},
    "--batch-size": {"adapt": "per domain: each step reads a source batch and a target batch"},
    "--val-fraction": {"adapt": "a share of the labelled source, held out to monitor source accuracy "
                                "(default 0.1)"},
    "--eval-every": {"adapt": "adapt has no epochs: the default is 10 times per run"},
    "--k": {"cluster": "k of k-means (clusters), where knn's is k of k-NN (neighbours); each is the "
                       "conventional k of the command's algorithm"},
}
