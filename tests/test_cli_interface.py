"""One interface: every command's `--help` is read, and a flag that two commands share has the same
name, meaning (description) and default in both, unless cli/options.py VARIANTS records why not.
Also: how the parsers are built (groups, examples, required flags), and the old spellings."""

import argparse
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from transferkit.cli import main
from transferkit.cli.main import COMMANDS, build_parser, command_parser
from transferkit.cli.options import DEPRECATED, FIELD_GROUPS, SHARED, VARIANTS
from transferkit.config import FIELD_NAMES, TrainConfig, load_recipe, make_config

REPO = Path(__file__).resolve().parents[1]
ENTRY = re.compile(r"^  (-\S.*?)(?: {2,}(\S.*))?$")


def _help_text(name: str, capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def _entries(text: str) -> dict[str, str]:
    """flag -> its help line, from `--help` output (`--tta, --no-tta` gives both flags)."""
    out, current = {}, None
    for line in text.splitlines():
        m = ENTRY.match(line)
        if m:
            current = [f.split()[0] for f in m.group(1).split(", ")]
            for f in current:
                out[f] = m.group(2) or ""
        elif current and line.startswith("    ") and line.strip():
            for f in current:
                out[f] = (out[f] + " " + line.strip()).strip()
        else:
            current = None
    out.pop("-h", None)
    out.pop("--help", None)
    return out


def _split(help_text: str) -> tuple[str, str]:
    """(description, default) of one help line: `... (default: X)` or `... (required...)`."""
    i = max(help_text.rfind(" (default: "), help_text.rfind(" (required"))
    assert i >= 0 and help_text.endswith(")"), f"no default or 'required' in {help_text!r}"
    tail = help_text[i + 2:-1]
    default = tail.split(";")[0].removeprefix("default: ")
    return help_text[:i], default


@pytest.fixture(scope="module")
def helps():
    """command -> {flag: help line}, read from each command's real `--help` output."""
    mp = pytest.MonkeyPatch()
    mp.setenv("COLUMNS", "1000")
    import io
    import contextlib
    out = {}
    for name in COMMANDS:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
            main([name, "--help"])
        out[name] = buf.getvalue()
    mp.undo()
    return out


@pytest.fixture(scope="module")
def flags(helps):
    return {name: _entries(text) for name, text in helps.items()}


def _actions(name: str) -> dict[str, argparse.Action]:
    return {s: a for a in command_parser(name)._actions for s in a.option_strings
            if a.help != argparse.SUPPRESS and a.dest != "help"}


def _kind(a: argparse.Action) -> tuple:
    return type(a).__name__, a.nargs, a.dest


def test_every_shared_flag_has_one_name_meaning_and_default(flags):
    shared = {}
    for name, entries in flags.items():
        for flag in entries:
            shared.setdefault(flag, []).append(name)
    shared = {f: names for f, names in shared.items() if len(names) > 1}
    assert {"--out", "--backbone", "--top-k", "--batch-size", "--tta", "--no-tta", "--shots", "--json"} <= set(shared)
    problems = []
    for flag, names in sorted(shared.items()):
        variants = VARIANTS.get(flag.replace("--no-", "--"), {})
        # the same kind of flag everywhere (a switch, a value, --x/--no-x), stored under one name
        kinds = {name: _kind(_actions(name)[flag]) for name in names}
        if len(set(kinds.values())) > 1:
            problems.append(f"{flag}: differs in kind across commands: {kinds}")
        if "*" in variants:
            continue
        ref = next(n for n in names if n not in variants)
        want = _split(flags[ref][flag])
        for name in names:
            got = _split(flags[name][flag])
            if name in variants:
                if got == want:
                    problems.append(f"{flag}: VARIANTS records {name} as different, but it is the same as {ref}")
            elif got != want:
                problems.append(f"{flag}: {name} says {got}, {ref} says {want} (make them one, or record why "
                                "in cli/options.py VARIANTS)")
    assert not problems, "\n".join(problems)


def test_variants_name_real_flags_of_real_commands(flags):
    for flag, commands in VARIANTS.items():
        for name, reason in commands.items():
            assert len(reason) > 20, f"{flag} {name}: give the reason"
            if name != "*":
                assert flag in flags[name], f"VARIANTS[{flag}] names {name}, which has no {flag}"
                assert sum(flag in f for f in flags.values()) > 1


def test_one_name_per_thing(flags):
    """A value stored under one name has one flag in every command (no --output beside --out)."""
    names = {}
    for name in COMMANDS:
        for flag, a in _actions(name).items():
            if not flag.startswith("--no-"):
                names.setdefault(a.dest, set()).add(flag)
    assert {d: f for d, f in names.items() if len(f) > 1} == {}
    visible = {f for entries in flags.values() for f in entries}
    assert not visible & {old for _, old in DEPRECATED}, "an old spelling is shown in --help"


def test_help_says_default_or_required_and_the_default_is_true(flags):
    for name in COMMANDS:
        for flag, a in _actions(name).items():
            text = flags[name][flag]
            desc, default = _split(text)
            assert len(desc) >= 8, f"{name} {flag}: no description"
            assert "default: none, required" not in text and "(default: required" not in text
            if a.required:
                assert "(required" in text, f"{name} {flag} is required but its help does not say so"
            elif a.default is not None and not flag.startswith("--no-"):
                shown = ["off", "on"][a.default] if isinstance(a.default, bool) else a.default
                texts = {str(shown)} | ({f"{shown:g}"} if isinstance(shown, float) else set())
                assert any(default.startswith(t) for t in texts), \
                    f"{name} {flag}: help says {default!r}, default is {a.default!r}"


def test_every_command_ends_its_help_with_examples(helps):
    for name, text in helps.items():
        tail = text.split("\nexamples:\n", 1)
        assert len(tail) == 2, f"{name} --help has no examples"
        lines = [ln.strip() for ln in tail[1].splitlines() if ln.strip()]
        assert 2 <= len(lines) <= 3 and all(ln.startswith(f"transferkit {name}") for ln in lines), lines


def test_every_example_parses(helps):
    import shlex
    for name, text in helps.items():
        for line in text.split("\nexamples:\n", 1)[1].splitlines():
            if line.strip():
                argv = shlex.split(line)[2:]
                command_parser(name).parse_args(argv)  # exits (2) on a flag that does not exist


def test_train_help_is_grouped_with_test_hooks_apart(helps):
    text = helps["train"]
    titles = re.findall(r"^(\S[^:\n]*):$", text, re.M)
    assert titles[:1] == ["options"] and {"essentials", "training", "data",
                                          "advanced and testing (checkpoints, caches, test hooks)"} <= set(titles)
    advanced = text.split("\nadvanced and testing")[1].split("\nexamples:")[0]
    for flag in ("--stop-after", "--store-anchor", "--checkpoint-seconds", "--resume-inexact"):
        assert flag in advanced
    essentials = text.split("\nessentials:")[1].split("\ntraining:")[0]
    for flag in ("--out", "--backbone", "--strategy", "--shots", "--config"):
        assert flag in essentials
    placed = [n for names in FIELD_GROUPS.values() for n in names]
    assert sorted(placed) == sorted(FIELD_NAMES), "each TrainConfig field in exactly one --help group"


def test_full_parser_builds_without_torch_and_knows_every_command():
    code = ("import sys\nfrom transferkit.cli.main import build_parser, COMMANDS\n"
            "p = build_parser(full=True)\n"
            "sub = next(a for a in p._actions if a.dest == 'command')\n"
            "assert list(sub.choices) == list(COMMANDS)\n"
            "t = sub.choices['train']\n"
            "assert any('--store-anchor' in a.option_strings for a in t._actions)\n"
            "assert t.epilog and 'examples' in t.epilog\n"
            "assert 'torch' not in sys.modules, 'torch imported'\nprint('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert build_parser(full=True).parse_args(["predict", "r", "x", "--top-k", "3"]).top_k == 3


@pytest.mark.parametrize("command,old", sorted(DEPRECATED))
def test_old_spellings_still_work_with_one_warning(command, old, capsys):
    new = DEPRECATED[command, old]
    pos = {"predict": ["run", "x.png"], "rank": ["data"]}[command]
    a = command_parser(command).parse_args(pos + [old, "v1"])
    err = capsys.readouterr().err
    b = command_parser(command).parse_args(pos + [new, "v1"])
    assert vars(a) == vars(b)
    assert capsys.readouterr().err == ""
    assert err.count("\n") == 1 and err.startswith("transferkit: warning:") and old in err and new in err


def test_shots_all_is_a_value(tmp_path):
    """`--shots all` is what the help's 'default: all' says, in train as in compare; it overrides a recipe."""
    args = command_parser("train").parse_args(["d", "--shots", "all", "--out", "o"])
    assert make_config({"shots": 5}, **{k: v for k, v in vars(args).items()
                                        if k in FIELD_NAMES}).shots is None
    assert make_config(None, shots="ALL").shots is None and make_config(None, shots="7").shots == 7
    recipe = tmp_path / "r.yaml"
    recipe.write_text("shots: all\n")
    assert make_config(load_recipe(recipe), shots=None).shots is None
    assert make_config(None, patience="off").patience is None
    assert "allowed: integer >= 1, or all" in _actions("train")["--shots"].help


def test_help_texts_that_drifted(flags):
    from transferkit.strategies.freeze import FEW_SHOT_PER_CLASS
    from transferkit.strategies.plan import STRATEGIES
    train = flags["train"]
    for s in STRATEGIES:
        assert s.split(":")[0] in train["--strategy"], f"--strategy's help omits {s}"
    assert f"<= {FEW_SHOT_PER_CLASS} training examples per class" in train["--bn"]
    assert "few" not in train["--bn"]  # "few" is <= 20 labels per class everywhere else
    assert flags["predict"]["--top-k"] == flags["serve"]["--top-k"]
    assert "(default: 5)" in flags["predict"]["--top-k"]
    for flag in ("--tta", "--no-tta", "--batch-size", "--out", "--backbone"):
        assert flag in flags["predict"]
    assert train["--out"].endswith("(required, here or as 'out:' in the --config recipe)")


def test_adapt_shares_trains_fields():
    """AdaptConfig: a field without its own help is train's field (same default: same help)."""
    from transferkit.adaptation.config import AdaptConfig
    train = TrainConfig.__dataclass_fields__
    for f in dataclasses.fields(AdaptConfig):
        if not f.metadata.get("help"):
            assert f.name in train and train[f.name].default == f.default, f.name


def test_bridge_defaults_match_bridge_config():
    from transferkit.cli.bridge import DEFAULTS
    from transferkit.zeroshot.bridge import BridgeConfig
    d = BridgeConfig()
    assert {k: getattr(d, k) for k in DEFAULTS} == DEFAULTS


def test_shared_table_flags_are_added_from_the_table(flags):
    """--json, --quiet, --top-k, --resume read the same wherever they appear."""
    for flag in ("--json", "--quiet", "--top-k", "--resume"):
        texts = {entries[flag] for entries in flags.values() if flag in entries}
        assert texts == {SHARED[flag]["help"]}, (flag, texts)
