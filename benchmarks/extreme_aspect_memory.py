"""Peak memory of `transferkit predict` on an extreme-aspect image against a normal one (issue 19,
item 9). The eval resize brings the short side to size / crop_pct and keeps the aspect ratio: before
the bound, a 475-byte 1 x 100,000 PNG became a 256 x 25,600,000 image (GBs) for the centre crop to
keep 224 x 224 of it. Now a strip over 100:1 is refused per item, and anything up to that is
centre-cropped to 4:1 before the resize (data/images.py: MAX_ASPECT, CapAspect).

Each prediction runs in its own process; its peak RSS is read with getrusage(RUSAGE_CHILDREN) by a
wrapper process that does nothing else. One tiny run (test_resnet, random weights, 224 px, one
step) serves every input. Target: peak(strip) / peak(normal) <= 1.5.

    python benchmarks/extreme_aspect_memory.py --out benchmarks/results/extreme_aspect_memory
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
_PEAK = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
         "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
         "sys.stderr.write((r.stdout.strip() or r.stderr.strip()).splitlines()[-1] if r.stdout + r.stderr else '')")


def _peak_kb(argv: list[str], env: dict) -> tuple[int, int, str]:
    """(exit code, peak RSS in KiB, last line of output) of the command, in a process of its own."""
    r = subprocess.run([sys.executable, "-c", _PEAK, *argv], capture_output=True, text=True, env=env)
    rc, kb = r.stdout.split()
    return int(rc), int(kb), r.stderr.strip()


def _inputs(d: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    px = rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)
    Image.fromarray(px).save(d / "normal_224x224.png")
    Image.new("RGB", (100_000, 1), (200, 30, 30)).save(d / "strip_100000x1.png", optimize=True)
    # within the 100:1 refusal: predicted, through the 4:1 centre crop before the resize
    Image.fromarray(rng.integers(0, 255, (50, 5000, 3), dtype=np.uint8)).save(d / "strip_5000x50.png")
    return {p.stem: p for p in sorted(d.glob("*.png"))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results/extreme_aspect_memory", help="results prefix (.json, .md)")
    ap.add_argument("--image-size", type=int, default=224)
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    tk = [sys.executable, "-m", "transferkit"]
    with tempfile.TemporaryDirectory(prefix="tk-aspect-") as tmp:
        tmp = Path(tmp)
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import write_image_folder
        data = write_image_folder(tmp / "images", per_class=4)
        run = tmp / "run"
        subprocess.run([*tk, "train", str(data), "--backbone", "timm:test_resnet@random", "--image-size",
                        str(args.image_size), "--steps", "1", "--batch-size", "4", "--out", str(run), "--quiet"],
                       check=True, env=env, capture_output=True)
        rows = []
        for name, path in _inputs(tmp).items():
            rc, kb, tail = _peak_kb([*tk, "predict", str(run), str(path)], env)
            rows.append({"input": name, "bytes": path.stat().st_size, "rc": rc, "peak_rss_mb": round(kb / 1024, 1),
                         "output": tail.replace(str(path), path.name)})
            print(f"{name:>20}  {rows[-1]['bytes']:>8} B  peak {rows[-1]['peak_rss_mb']:8.1f} MB  {rows[-1]['output']}",
                  flush=True)
    base = next(r for r in rows if r["input"].startswith("normal"))["peak_rss_mb"]
    for r in rows:
        r["ratio_to_normal"] = round(r["peak_rss_mb"] / base, 3)
    worst = max(r["ratio_to_normal"] for r in rows)
    print(f"worst peak RSS ratio to the normal image: {worst:.3f} (target <= 1.5)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"image_size": args.image_size, "rows": rows, "worst_ratio": worst, "target": 1.5}
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    md = [f"`python benchmarks/extreme_aspect_memory.py --image-size {args.image_size}`", "",
          "| input | file bytes | exit | peak RSS MB | ratio to normal | predict says |", "|---|---:|---:|---:|---:|---|"]
    md += [f"| {r['input']} | {r['bytes']} | {r['rc']} | {r['peak_rss_mb']} | {r['ratio_to_normal']} | "
           f"{r['output'].replace('|', '/')} |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    return 0 if worst <= 1.5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
