"""mkdocs hooks that build pages from the code and the results files, so neither can drift.

- `reference/cli.md` is written at build time from the argparse parsers that answer `--help`
  (`transferkit.cli.main.COMMANDS` names every command and the module that parses it).
- `<!-- results: NAME -->` in a page is replaced by `benchmarks/results/NAME` as the benchmark
  wrote it (headings moved down under the page's own); a missing file fails the build.
- `<!-- file: PATH -->` includes a repository file (benchmarks/README.md) the same way.
Nothing here is copied into the site (mkdocs.yml excludes docs/hooks/).
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # document this checkout's transferkit, whichever one is installed
RESULTS = ROOT / "benchmarks" / "results"
_INCLUDE = re.compile(r"^<!-- (results|file): (\S+) -->$", re.M)


# ---------------------------------------------------------------- CLI reference, from the parsers

class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command's parser, caught as the command's own `main` is about to parse `--help`."""
    from transferkit.cli.main import COMMANDS

    real = argparse.ArgumentParser.parse_args

    def catch(self, *a, **k):
        raise _Parsed(self)

    parsers = {}
    argparse.ArgumentParser.parse_args = catch
    try:
        for name, (module, _) in COMMANDS.items():
            mod = importlib.import_module(f"transferkit.cli.{module}")
            try:
                mod.main([name, "--help"])
            except _Parsed as p:
                parsers[name] = p.parser
            else:
                raise PluginError(f"transferkit {name}: its main() returned without parsing arguments")
    finally:
        argparse.ArgumentParser.parse_args = real
    return parsers


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;")


def _options(parser: argparse.ArgumentParser) -> list[str]:
    fmt = parser._get_formatter()
    out = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.help != argparse.SUPPRESS
                   and not isinstance(a, argparse._SubParsersAction)]
        if not actions:
            continue
        out += ["", f"**{group.title}**", "", "| argument | what it does |", "|---|---|"]
        for a in actions:
            inv = fmt._format_action_invocation(a)
            out.append(f"| `{_cell(inv)}` | {_cell(fmt._expand_help(a) if a.help else '')} |")
    return out


def _subparsers(parser: argparse.ArgumentParser):
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            yield from a.choices.items()


INTERFACE = """\
**One interface.** A flag means the same thing, with the same default, in every command that has it
(`tests/test_cli_interface.py` checks it; the few deliberate differences are listed with a reason in
`VARIANTS`, `transferkit/cli/options.py`). `--out` is where a command writes. `--backbone` is the source
model: in `rank` a comma-separated list, in `predict` optional (without it the first input is a run).
`--top-k` defaults to 5 in `predict` and `serve`. `--tta/--no-tta` in `evaluate` and `predict` default to
the run's own setting. `--batch-size N` is the training batch; commands that only run the model
(`evaluate`, `predict`, `rank`, `embed`, `knn`, `cluster`) use batches of 2×N. `--shots all` (the
default) keeps every label and overrides a recipe's `shots:`; `--patience off` and `--layer-decay off`
work the same way. Each command's `--help` groups its options and ends with examples.

Renamed, the old spelling still accepted with a warning until the next release:

| old | new |
|---|---|
| `predict --output FILE or DIR` | `predict --out FILE or DIR` |
| `predict --model SRC` | `predict --backbone SRC` |
| `rank --backbones A,B` | `rank --backbone A,B` |
"""


def cli_markdown() -> str:
    os.environ["COLUMNS"] = "100"  # argparse wraps usage lines to the terminal: the same page on every machine
    from transferkit.cli.main import COMMANDS, build_parser

    top = build_parser()
    lines = ["# CLI reference", "",
             "Generated when the site is built, from the same parsers that print `transferkit COMMAND --help`; "
             "the train flags come from the metadata of `TrainConfig` (`transferkit/config.py`), which also "
             "checks every value. Every option of `train` can also be a key of a YAML recipe (`--config`).",
             "", INTERFACE, "", "```text", top.format_usage().strip(), "```", "",
             "| command | what it does |", "|---|---|"]
    lines += [f"| [`{n}`](#{n}) | {_cell(h)} |" for n, (_, h) in COMMANDS.items()]
    for name, parser in command_parsers().items():
        lines += ["", f"## {name} {{ #{name} }}", ""]
        if parser.description:
            lines += [_cell(parser.description), ""]
        lines += ["```text", parser.format_usage().strip(), "```"]
        lines += _options(parser)
        for sub, sp in _subparsers(parser):
            lines += ["", f"### {name} {sub}", "", "```text", sp.format_usage().strip(), "```", *_options(sp)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- includes

def _demote(text: str, by: int) -> str:
    out, fence = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
        if not fence and re.match(r"#{1,5} ", line):
            line = "#" * by + line
        out.append(line)
    return "\n".join(out)


def _include(kind: str, name: str, page) -> str:
    path = (RESULTS / name) if kind == "results" else (ROOT / name)
    if not path.is_file():
        raise PluginError(f"{page.file.src_path}: includes {kind} file {name}, which does not exist ({path})")
    text = path.read_text(encoding="utf-8")
    if kind == "results":
        return (f"\n<div class=\"results-file\" markdown>\n\n{_demote(text, 3)}\n\n"
                f"<small>`benchmarks/results/{name}`, as the benchmark wrote it</small>\n\n</div>\n")
    return _demote(text, 1)


# ---------------------------------------------------------------- mkdocs events

def on_files(files, config):
    files.append(File.generated(config, "reference/cli.md", content=cli_markdown()))
    return files


def on_page_markdown(markdown, page, config, files):
    return _INCLUDE.sub(lambda m: _include(m.group(1), m.group(2), page), markdown)
