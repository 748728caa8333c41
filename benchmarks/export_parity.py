"""Export parity on the demo runs: a bundled EfficientNet-Lite0 linear probe on the clip-art set and
a bundled MiniLM (all-MiniLM-L6-v2, mean pooling) linear probe on the Debian descriptions, exported
to every format that applies and reloaded by its own tool (timm, transformers, onnxruntime,
torch.jit). Prints max |logit difference| and top-1 agreement on the runs' test splits.

    python benchmarks/export_parity.py --threads 1 --n-check 64 --out benchmarks/results/export_parity
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "transferkit" / "demo_data"
RUNS = {
    "lite0_clipart": (["train", str(DEMO / "clipart"), "--backbone", "bundled:efficientnet_lite0",
                       "--strategy", "linear_probe", "--shots", "5", "--image-size", "96"],
                      ["timm", "onnx", "torchscript"]),
    "minilm_debian": (["train", str(DEMO / "debian_descriptions.csv"), "--backbone", "bundled:minilm-l6",
                       "--strategy", "linear_probe", "--shots", "8", "--max-length", "96"],
                      ["hf", "onnx", "torchscript"]),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="runs/bench/export_parity", help="where runs and exports go")
    ap.add_argument("--out", default="benchmarks/results/export_parity", help="results prefix (.json, .md)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-check", type=int, default=64)
    ap.add_argument("--only", default=None, help="comma-separated run names")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO))
    from transferkit.cli import main as tk
    from transferkit.ship.export import export_run

    work = Path(args.work)
    rows = []
    for name, (train, formats) in RUNS.items():
        if args.only and name not in args.only.split(","):
            continue
        run = work / name
        if not (run / "model.safetensors").is_file():
            shutil.rmtree(run, ignore_errors=True)
            t = time.time()
            assert tk([*train, "--out", str(run), "--quiet", "--seed", "0"]) == 0
            print(f"{name}: trained in {time.time() - t:.0f} s", flush=True)
        for fmt in formats:
            out = work / f"{name}_{fmt}"
            t = time.time()
            m = export_run(run, fmt, out, limit=args.n_check, overwrite=True)  # its own earlier export
            p = m["parity"]
            rows.append({"run": name, "format": fmt, "n_inputs": p["n_inputs"],
                         "max_abs_diff": p["max_abs_diff"], "top1_agree": p["top1_agree"],
                         "ok": p["ok"], "seconds": round(time.time() - t, 1)})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=2))
    lines = ["| run | format | inputs | max abs logit diff | top-1 identical | export + check s |",
             "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['run']} | {r['format']} | {r['n_inputs']} | {r['max_abs_diff']:.2e} | "
              f"{r['top1_agree']}/{r['n_inputs']} | {r['seconds']} |" for r in rows]
    Path(args.out + ".md").write_text(f"`python {' '.join(sys.argv)}`\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
