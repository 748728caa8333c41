"""Few labels and none on the demo clip-art set: nearest class mean and k-NN at 5 and 10 labels per
class (3 seeds, the same splits as `train`/`compare` with those seeds), and k-means with zero labels
scored against the true classes. All of it reads the frozen features from one feature cache, so the
backbone runs once over the 613 images.

    python benchmarks/label_free.py --image-size 112 --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from transferkit.data.feature_cache import FeatureCache  # noqa: E402
from transferkit.embeddings import compute_embeddings  # noqa: E402
from transferkit.embeddings.cluster import agreement, kmeans  # noqa: E402
from transferkit.embeddings.knn import knn_classify  # noqa: E402
from transferkit.models import load_backbone  # noqa: E402

DATA = REPO / "transferkit" / "demo_data" / "clipart"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="bundled:efficientnet_lite0")
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--shots", default="5,10")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "label_free"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bb = load_backbone(args.backbone)
    result: dict = {"command": "python benchmarks/label_free.py " + " ".join(sys.argv[1:]), "knn": {}}
    with tempfile.TemporaryDirectory(prefix="tk-bench-lf-") as tmp:
        cache = FeatureCache(tmp)
        t0 = time.perf_counter()
        emb = compute_embeddings(DATA, bb, image_size=args.image_size, cache=cache)
        result["extract_seconds"] = round(time.perf_counter() - t0, 1)
        labels = [e.label for e in emb.items]
        clusters = {}
        for seed in range(args.seeds):
            c, _ = kmeans(emb.feats, len(set(labels)), seed)
            clusters[seed] = {k: v for k, v in agreement(labels, c).items() if k != "majority_label"}
        result["cluster"] = clusters
        for shots in [int(s) for s in args.shots.split(",")]:
            rows = [knn_classify(DATA, bb, shots=shots, k=args.k, seed=seed, image_size=args.image_size,
                                 cache=cache) for seed in range(args.seeds)]
            result["knn"][shots] = {m: [r["methods"][m]["accuracy"] for r in rows] for m in rows[0]["methods"]}
        result["cache_hits"], result["cache_misses"] = cache.stats.hits, cache.stats.misses
    lines = [f"| method | {' | '.join(f'{s} shots' for s in result['knn'])} |",
             "|---|" + "---:|" * len(result["knn"])]
    methods = list(next(iter(result["knn"].values())))
    for m in methods:
        cells = [f"{np.mean(v[m]):.3f} ± {np.std(v[m]):.3f}" for v in result["knn"].values()]
        lines.append(f"| {m.replace('_', ' ')} | {' | '.join(cells)} |")
    c = result["cluster"]
    summary = (f"k-means, k = 10, zero labels (over {args.seeds} k-means seeds): purity "
               f"{np.mean([v['purity'] for v in c.values()]):.3f}, adjusted Rand "
               f"{np.mean([v['adjusted_rand'] for v in c.values()]):.3f}, NMI "
               f"{np.mean([v['nmi'] for v in c.values()]):.3f}")
    text = "\n".join(lines) + "\n\n" + summary + (f"\n\nfeatures of {len(emb.items)} images once: "
                                                  f"{result['extract_seconds']}s; then {result['cache_hits']} "
                                                  f"rows read from the cache, {result['cache_misses']} computed")
    print(text)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(f"```bash\n{result['command']}\n```\n\n{text}\n")


if __name__ == "__main__":
    main()
