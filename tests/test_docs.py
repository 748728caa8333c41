"""The documentation: the site builds with --strict (a broken link, a missing page or results file
fails), the README stays a front page, and every results file is written by a listed command."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def _hooks():
    spec = importlib.util.spec_from_file_location("transferkit_docs", REPO / "docs" / "hooks" / "transferkit_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_site_builds_strict(tmp_path):
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                       cwd=REPO, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for page in ("quickstart", "how-to/few-labels", "how-to/text", "how-to/lora", "how-to/dense",
                 "concepts/lp-ft", "concepts/regularizers", "concepts/few-label-protocol",
                 "reference/api", "reference/bad-inputs", "reference/architecture", "benchmarks/few-labels"):
        assert (site / page / "index.html").is_file(), page
    cli = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    from transferkit.cli.main import COMMANDS
    for name in COMMANDS:
        assert f'id="{name}"' in cli, name
    assert "--backbone-lr-mult" in cli and "--unlabelled-threshold" in cli  # TrainConfig's flags
    api = (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    assert "transferkit.api.fit" in api and "transferkit.api.Model" in api
    # a results file is shown as the benchmark wrote it
    assert "‖Δw‖/‖w‖" in (site / "benchmarks" / "few-labels" / "index.html").read_text(encoding="utf-8")


def test_the_cli_reference_has_every_option_of_every_command():
    hooks = _hooks()
    page = hooks.cli_markdown()
    for name, parser in hooks.command_parsers().items():
        for action in parser._actions:
            for flag in action.option_strings:
                assert flag in page, f"transferkit {name} {flag}"


def test_readme_is_a_front_page():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    for command in ("make demo", "make test", "pip install"):
        assert command in text, command
    assert not re.search(r"\bissues? \d+", text, re.I), "the README tells no history"
    for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not link.startswith("http"):
            assert (REPO / link).exists(), link


def _listed() -> list[tuple[str, str, list[str]]]:
    """Rows of the first table of benchmarks/README.md: (script, command, files written)."""
    text = (REPO / "benchmarks" / "README.md").read_text(encoding="utf-8")
    table = text.split("## Commands and the files they write", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 3 and cells[0].startswith("`") and cells[0].endswith(".py`"):
            rows.append((cells[0].strip("`"), cells[1], re.findall(r"`([^`]+)`", cells[2])))
    return rows


def test_every_results_file_is_written_by_a_listed_command():
    rows = _listed()
    assert rows
    written = set()
    for script, command, files in rows:
        assert (REPO / "benchmarks" / script).is_file(), script
        assert f"benchmarks/{script}" in command, (script, command)
        written.update(files)
    kept = {p.name for p in RESULTS.iterdir()}
    assert kept - written == set(), f"results files no listed command writes: {sorted(kept - written)}"
    assert written - kept == set(), f"listed but missing from benchmarks/results/: {sorted(written - kept)}"
