#!/usr/bin/env python3
"""Build image-text pairs from Debian icon themes: icons paired with the words of their names.

Icon themes name every icon by what it shows (`battery-caution`, `folder-music`, `weather-storm`), so
an icon is an image with a short description. This script takes the PNG icons of several themes,
keeps those whose name matches exactly one concept of a curated list (a concept drawn in most themes:
battery, printer, padlock, ...), and writes

    OUT/images/<concept>/<theme>__<icon>.png   64x64 RGB on white (an ImageFolder tree)
    OUT/pairs.csv     path,label,text,theme,icon   (text = the icon name as words: "battery caution")
    OUT/classes.csv   class,text                   (the concept's words, a --class-text file)
    OUT/extra/<theme>__<icon>.png, OUT/extra_pairs.csv   path,text,theme,icon: icons of no concept,
                      more pairs for a bridge (the benchmark drops those sharing a word with a held-out class)

Exact duplicates (the same pixels in two themes, e.g. MATE's copies of GNOME icons) are kept once.
Symbolic (monochrome) icons are left out.

Needs the Debian packages: adwaita-icon-theme tango-icon-theme gnome-icon-theme mate-icon-theme
oxygen-icon-theme elementary-xfce-icon-theme (any subset works; fewer themes, fewer images).

    apt-get install adwaita-icon-theme tango-icon-theme gnome-icon-theme mate-icon-theme \
        oxygen-icon-theme elementary-xfce-icon-theme
    python scripts/build_icon_pairs.py --out runs/icon_pairs
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import re
import sys
from pathlib import Path

from PIL import Image

THEMES = ("Adwaita", "Tango", "gnome", "mate", "oxygen", "elementary-xfce")
APT_PACKAGES = ("adwaita-icon-theme", "tango-icon-theme", "gnome-icon-theme", "mate-icon-theme",
                "oxygen-icon-theme", "elementary-xfce-icon-theme")

# concept -> (its words, a regex on the icon name). Chosen by counting which concepts most themes
# draw; an icon whose name matches two concepts (e.g. "folder-music") is left out.
CONCEPTS: dict[str, tuple[str, str]] = {
    "folder": ("folder", r"^folder(-|$)"),
    "battery": ("battery", r"battery"),
    "weather": ("weather sky clouds", r"^weather-|stock_weather"),
    "printer": ("printer", r"^printer|print"),
    "keyboard": ("keyboard", r"keyboard"),
    "mouse": ("computer mouse", r"^input-mouse|mouse$"),
    "trash": ("trash can", r"trash"),
    "mail": ("mail envelope", r"^mail-|^internet-mail|evolution-mail|^email"),
    "calendar": ("calendar", r"calendar|appointment"),
    "camera": ("camera", r"^camera|webcam"),
    "phone": ("telephone", r"(^|-)phone|smartphone|telephone"),
    "computer": ("computer", r"^computer|^user-desktop$"),
    "monitor": ("display monitor", r"video-display|^display|preferences-desktop-display"),
    "harddisk": ("hard disk drive", r"drive-harddisk|harddisk"),
    "disc": ("optical disc cd", r"media-optical|^cdrom|dvd|^media-cdrom"),
    "speaker": ("speaker volume", r"^audio-volume|audio-speaker|speaker"),
    "wireless": ("wireless network signal", r"network-wireless|nm-signal|wifi"),
    "face": ("smiley face", r"^face-|stock_smiley|^emote-"),
    "search": ("magnifying glass search", r"^zoom-|^edit-find|system-search|search"),
    "arrow": ("arrow", r"^go-(up|down|next|previous|first|last|top|bottom|jump)|arrow"),
    "playback": ("media playback play pause", r"^media-(playback|skip|seek|record|eject)"),
    "formatting": ("text formatting", r"^format-(text|justify|indent)"),
    "dialog": ("dialog warning information", r"^dialog-"),
    "person": ("user person", r"^avatar|^user-(info|available|away|busy|idle|offline|invisible)|"
                              r"^stock_person|system-users|^config-users|^user-identity"),
    "home": ("house home", r"home"),
    "lock": ("padlock lock", r"lock|changes-(prevent|allow)|encrypted|^security"),
    "help": ("help question", r"help"),
    "gamepad": ("game controller joystick", r"gaming|joystick|gamepad"),
    "browser": ("globe web browser", r"web-browser|globe|applications-internet"),
    "package": ("package box", r"package"),
    "font": ("font letters", r"font"),
    "picture": ("picture photo image", r"^image-|x-generic-image|photo"),
    "video": ("film video", r"^video-x|video-generic|film"),
    "spreadsheet": ("spreadsheet table", r"spreadsheet"),
    "document": ("text document page", r"^text-|x-office-document|^document-|text-x-generic"),
    "music": ("music note audio", r"audio-x|music"),
    "star": ("star bookmark favorite", r"bookmark|starred|^emblem-favorite"),
    "settings": ("gear settings", r"^preferences-system$|^emblem-system|settings|configure|gear"),
    "tools": ("tools wrench hammer", r"tool|wrench|hammer|screwdriver"),
    "microphone": ("microphone", r"microphone"),
}

SIZE = 64


def concepts_of(icon: str) -> list[str]:
    return [c for c, (_, rx) in CONCEPTS.items() if re.search(rx, icon)]


def icon_words(icon: str) -> str:
    """`media-playback-start` -> "media playback start" (mime prefixes like `x-` dropped)."""
    words = [w for w in re.split(r"[-_.]+", icon) if w and w not in ("x", "gnome", "gtk", "stock")]
    return " ".join(words)


def _pixel_size(path: Path) -> int:
    for part in path.parts:
        m = re.fullmatch(r"(\d+)x\1|(\d+)", part)  # 48x48/apps/ or (elementary) apps/48/
        if m:
            return int(m.group(1) or m.group(2))
    return 0


def find_icons(root: Path, themes=THEMES) -> dict[tuple[str, str], Path]:
    """(theme, icon name) -> the PNG closest to 48 px (at least 32 px) of that icon."""
    best: dict[tuple[str, str], Path] = {}
    for theme in themes:
        tdir = root / theme
        if not tdir.is_dir():
            continue
        for p in sorted(tdir.rglob("*.png")):
            name = p.stem
            if "symbolic" in name or "symbolic" in str(p.parent):
                continue
            size = _pixel_size(p)
            if size < 32:
                continue
            key = (theme, name)
            if key not in best or abs(size - 48) < abs(_pixel_size(best[key]) - 48):
                best[key] = p
    return best


def _render(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im = im.convert("RGBA")
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im, mask=im.split()[-1])
        return bg.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def _save(img: Image.Image, out: Path, rel: Path) -> None:
    (out / rel.parent).mkdir(parents=True, exist_ok=True)
    img.save(out / rel, optimize=True)


def _write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def build(root: Path, out: Path, max_per_class: int, max_extra: int) -> dict:
    icons = find_icons(root)
    if not icons:
        raise SystemExit(f"no icon themes found under {root}: install the Debian packages "
                         f"{' '.join(APT_PACKAGES)} (apt-get install ...)")
    rows, extra, seen = [], [], set()
    per_class: dict[str, int] = {}
    # concept icons first, so an extra icon with the same pixels (an alias) never takes their place
    ordered = sorted(icons.items(), key=lambda kv: (not concepts_of(kv[0][1]), kv[0]))
    for (theme, name), path in ordered:
        hits = concepts_of(name)
        if len(hits) > 1 or (hits and per_class.get(hits[0], 0) >= max_per_class):
            continue  # ambiguous (two concepts), or the class is full
        if not hits and (len(extra) >= max_extra or not icon_words(name)):
            continue
        img = _render(path)
        digest = hashlib.sha1(img.tobytes()).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        row = {"text": icon_words(name), "theme": theme, "icon": name}
        if hits:
            row.update(path=str(Path("images") / hits[0] / f"{theme}__{name}.png"), label=hits[0])
            rows.append(row)
            per_class[hits[0]] = per_class.get(hits[0], 0) + 1
        else:
            row.update(path=str(Path("extra") / f"{theme}__{name}.png"))
            extra.append(row)
        _save(img, out, Path(row["path"]))
    keep = {c for c, n in per_class.items() if n >= 10}
    for r in [r for r in rows if r["label"] not in keep]:
        (out / r["path"]).unlink()
    rows = [r for r in rows if r["label"] in keep]
    _write_csv(out / "pairs.csv", rows, ["path", "label", "text", "theme", "icon"])
    _write_csv(out / "extra_pairs.csv", extra, ["path", "text", "theme", "icon"])
    _write_csv(out / "classes.csv", [{"class": c, "text": CONCEPTS[c][0]} for c in sorted(keep)],
               ["class", "text"])
    return {"images": len(rows), "extra": len(extra), "classes": len(keep),
            "themes": sorted({r["theme"] for r in rows})}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--icons", default="/usr/share/icons", help="where the themes are installed")
    ap.add_argument("--out", default="runs/icon_pairs")
    ap.add_argument("--max-per-class", type=int, default=80)
    ap.add_argument("--max-extra", type=int, default=3000, help="icons of no concept kept as extra pairs")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if (out / "pairs.csv").exists():
        print(f"{out} already holds a build; remove it to rebuild", file=sys.stderr)
        return 1
    info = build(Path(args.icons), out, args.max_per_class, args.max_extra)
    print(f"{info['images']} images in {info['classes']} classes (+{info['extra']} extra pairs), themes "
          f"{', '.join(info['themes'])} -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
