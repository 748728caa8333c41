"""Rank source models before training (transferkit rank), next to what each one's frozen features
actually give: the plain linear probe's test accuracy on the same split.

Defaults: the bundled clip-art set with ImageNet EfficientNet-Lite0 against the same architecture
from random initialisation, at 128 px. A good ranking puts the sources in the order of the probe.

    python benchmarks/rank_sources.py
    python benchmarks/rank_sources.py --shots 10 --backbones bundled:efficientnet_lite0,timm:resnet18
    python benchmarks/rank_sources.py --backbones timm:test_resnet@random,timm:test_efficientnet@random \\
        --image-size 32 --out /tmp/smoke/rank                # smoke test

Writes OUT.json and OUT.md (OUT: benchmarks/results/rank_sources).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from transferkit.data import load_task
from transferkit.demo import IMAGE_DEMO
from transferkit.models import load_backbone
from transferkit.choose.rank import format_ranking, frozen_features, rank_sources


def probe_accuracy(source: str, data: str, *, shots: int | None, seed: int, image_size: int | None) -> float:
    """Test accuracy of scikit-learn's LogisticRegression(max_iter=2000) on frozen features."""
    from sklearn.linear_model import LogisticRegression
    task = load_task(data, shots=shots, seed=seed)
    torch.manual_seed(seed)
    bb = load_backbone(source)
    (tr, ytr, _), (te, yte, _) = (frozen_features(bb, part, task.classes, image_size=image_size)
                                  for part in (task.train, task.test))
    clf = LogisticRegression(max_iter=2000).fit(tr.numpy(), ytr.numpy())
    return float((clf.predict(te.numpy()) == yte.numpy()).mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(IMAGE_DEMO))
    ap.add_argument("--backbones", default="bundled:efficientnet_lite0,timm:tf_efficientnet_lite0@random")
    ap.add_argument("--shots", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--no-probe", action="store_true", help="skip the linear-probe check")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--out", default="benchmarks/results/rank_sources", help="results prefix (.json, .md)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sources = [s.strip() for s in args.backbones.split(",") if s.strip()]
    rows = rank_sources(args.data, sources, shots=args.shots, seed=args.seed, image_size=args.image_size)
    table = format_ranking(rows)
    if not args.no_probe:
        for r in rows:
            t0 = time.time()
            r["probe_accuracy"] = probe_accuracy(r["source"], args.data, shots=args.shots, seed=args.seed,
                                                 image_size=args.image_size)
            r["probe_seconds"] = round(time.time() - t0, 1)
        table += "\n\n| source | LogME rank | probe test accuracy | probe seconds |\n|---|---:|---:|---:|\n"
        table += "\n".join(f"| {r['source']} | {r['rank']} | {r['probe_accuracy']:.3f} | {r['probe_seconds']:.1f} |"
                           for r in rows)
        by_probe = sorted(rows, key=lambda r: -r["probe_accuracy"])
        agree = [r["source"] for r in by_probe] == [r["source"] for r in rows]
        table += f"\n\nLogME order {'matches' if agree else 'does NOT match'} the probe's order."
    command = "python benchmarks/rank_sources.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps({"command": command, "data": args.data, "shots": args.shots,
                                               "seed": args.seed, "image_size": args.image_size,
                                               "rows": rows}, indent=2) + "\n")
    Path(f"{out}.md").write_text(f"```\n{command}\n```\n\n{table}\n")
    print()
    print(table)
    print(f"\nwrote {out}.json, {out}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
