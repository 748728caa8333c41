#!/usr/bin/env python3
"""Build the Debian package-description text classification demo set.

Reads the package index (``apt-cache dumpavail``, or a saved dump via ``--input``),
takes each package's description as ``text`` and its archive section as ``label``,
and writes a deduplicated, class-balanced sample to a CSV (text,label,package).

Rebuild:  python scripts/build_text_demo.py
"""
from __future__ import annotations

import argparse
import csv
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "transferkit" / "demo_data" / "debian_descriptions.csv"
# Topical sections with a few hundred distinct descriptions each (after dedup).
# Generic sections (libs, libdevel, doc, utils, misc) and most language sections
# are left out because their packages are about every topic at once; python is
# kept as the one "language" class.  localization (templated dictionaries) and
# database/electronics/video (< 200 after dedup) were too small.
DEFAULT_SECTIONS = "games,graphics,sound,science,math,fonts,net,mail,editors,python"
MIN_CHARS = 40
# A few descriptions list hundreds of fonts or plugins (up to ~40k chars); cut
# them so one row cannot dominate the file or a tokenizer's budget.
MAX_CHARS = 2000
# Transitional/dummy packages say only "this package can be removed".
DUMMY = re.compile(r"\b(transitional|dummy)\b.{0,20}\bpackage\b", re.I)
# Package-name suffixes of secondary packages; when two packages share a
# description, the main package (not its -dev/-doc/... sibling) is kept.
VARIANT = re.compile(r"-(dev|doc|docs|dbg|dbgsym|common|data|examples|tests?|l10n)$")
# Boilerplate that differs between sibling packages of one source package.
BOILER = re.compile(
    r"\b(development files?|header files?|documentation|debug(ging)? symbols|"
    r"shared librar(y|ies)|runtime librar(y|ies)|static librar(y|ies)|common files|"
    r"data files|transitional (dummy )?package|this package (contains|provides))\b")


def read_index(path: str | None) -> str:
    """Return the raw deb822 package index text."""
    if path:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    if shutil.which("apt-cache") is None:
        sys.exit("error: apt-cache not found (this needs a Debian/Ubuntu system); "
                 "pass --input FILE with a saved `apt-cache dumpavail` instead.")
    return subprocess.run(["apt-cache", "dumpavail"], check=True, capture_output=True,
                          text=True, errors="replace").stdout


def stanzas(text: str):
    """Yield one dict per deb822 paragraph; continuation lines keep their newline."""
    for block in re.split(r"\n\s*\n", text):
        rec, key = {}, None
        for line in block.splitlines():
            if line.startswith((" ", "\t")) and key:
                rec[key] += "\n" + line
            elif ":" in line:
                key, _, val = line.partition(":")
                rec[key] = val.strip()
        if "Package" in rec:
            yield rec


def long_descriptions(names: list[str]) -> dict[str, str]:
    """Fetch ``Description-en`` via ``apt-cache show``.

    Current Debian indexes carry only the one-line synopsis; the long text lives in
    the separate Translation-en index, which ``apt-cache show`` merges in (docker
    images often switch it off, hence the -o override).
    """
    out = {}
    for i in range(0, len(names), 2000):  # keep the command line a sane length
        res = subprocess.run(["apt-cache", "-o", "Acquire::Languages=en", "show",
                              "--no-all-versions", *names[i:i + 2000]],
                             capture_output=True, text=True, errors="replace")
        for rec in stanzas(res.stdout):
            if "Description-en" in rec:
                out.setdefault(rec["Package"], rec["Description-en"])
    return out


def clean(desc: str) -> tuple[str, str]:
    """Return (text, long description).

    The text is the synopsis plus the long description on one line: the ' .'
    paragraph marks become plain spaces and runs of whitespace collapse.
    """
    synopsis, _, body = desc.partition("\n")
    paras = [" ".join(p.split()) for p in re.split(r"\n[ \t]+\.[ \t]*(?=\n|$)", body)]
    paras = [p for p in paras if p]
    synopsis = " ".join(synopsis.split())
    if paras and not synopsis.endswith((".", "!", "?", ":")):
        synopsis += "."  # so the synopsis reads as a sentence before the body
    text = " ".join([synopsis, *paras])
    if len(text) > MAX_CHARS:
        text = text[:MAX_CHARS].rsplit(" ", 1)[0] + " ..."
    return text, " ".join(paras)


def near_key(text: str) -> str:
    """Lower-cased text without punctuation or sibling-package boilerplate, so exact
    and "same but for 'development files'" duplicates get the same key."""
    t = BOILER.sub(" ", text.lower())
    return re.sub(r"[^a-z0-9]+", " ", t).strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--sections", default=DEFAULT_SECTIONS, help="comma-separated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--input", help="saved `apt-cache dumpavail` (or `apt-cache show`) output "
                    "instead of running apt-cache")
    args = ap.parse_args(argv)
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]

    pkgs: dict[str, tuple[str, str, str]] = {}  # name -> (section, description, source)
    for rec in stanzas(read_index(args.input)):
        section = rec.get("Section", "").split("/")[-1]  # drop contrib/, non-free/
        desc = rec.get("Description-en") or rec.get("Description", "")
        source = rec.get("Source", rec["Package"]).split(" ")[0]  # "src (version)"
        if section in wanted and desc:
            pkgs.setdefault(rec["Package"], (section, desc, source))  # first = candidate

    # Fill in long descriptions when the index only has synopses.
    def few_long() -> bool:
        return sum("\n" in d for _, d, _ in pkgs.values()) < len(pkgs) / 2
    if not args.input and few_long():
        longs = long_descriptions(sorted(pkgs))
        pkgs = {n: (s, longs.get(n, d), src) for n, (s, d, src) in pkgs.items()}
    if few_long():
        print("warning: most packages have only a one-line synopsis; for full texts run\n"
              "    sudo apt-get update -o Acquire::Languages=en", file=sys.stderr)

    # Dedupe across all sections, main packages first, then by name, so the
    # surviving copy (and its label) does not depend on the sampling seed.
    order = sorted(pkgs, key=lambda n: (bool(VARIANT.search(n)), n))
    seen, pool = set(), {s: [] for s in wanted}
    dropped = {"short/dummy": 0, "duplicate": 0}
    for name in order:
        section, desc, source = pkgs[name]
        text, body = clean(desc)
        if len(text) < MIN_CHARS or DUMMY.search(text):
            dropped["short/dummy"] += 1
            continue
        # Siblings from one source package (foo, foo-data, foo-client, plugins of
        # one program) share all but a sentence, or at least the opening lines;
        # keeping several would leak near-copies across a train/test split.
        # So: one package per source package, and no repeated opening either.
        keys = {near_key(text), "source:" + source}
        intro = near_key(body)[:150]
        if len(intro) >= 80:
            keys.add("intro:" + intro)
        if keys & seen:
            dropped["duplicate"] += 1
            continue
        seen.update(keys)
        pool[section].append((text, section, name))

    rows = []
    for section in wanted:
        items = sorted(pool[section], key=lambda r: r[2])
        # one generator per section: adding a section leaves the others' samples alone
        random.Random(f"{args.seed}:{section}").shuffle(items)
        rows.extend(sorted(items[:args.per_class], key=lambda r: r[2]))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label", "package"])
        w.writerows(rows)

    print(f"{'section':<14} {'available':>9} {'kept':>5}")
    for section in wanted:
        kept = sum(r[1] == section for r in rows)
        print(f"{section:<14} {len(pool[section]):>9} {kept:>5}")
    print(f"{'total':<14} {sum(map(len, pool.values())):>9} {len(rows):>5}  -> {args.out}"
          f"  (dropped {dropped['short/dummy']} short/dummy, {dropped['duplicate']} duplicate)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
