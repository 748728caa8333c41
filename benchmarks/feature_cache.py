"""Linear probe through the feature cache vs the same probe trained epoch by epoch through the
frozen backbone, side by side in one run.

Both paths train the same linear head (same initialisation, Adam, same learning rate, batch size,
epochs and batch order) on the same training split of the demo clip-art set, without augmentation,
and are scored on the same test split:

- `through backbone`: every epoch forwards the training images through the frozen backbone again
  (what a training loop without a cache does);
- `cache, cold`: an empty cache; the features are extracted once (through `FeatureCache`, written to
  disk) and the epochs run on them;
- `cache, warm`: the same again with the cache filled: the features are read memory-mapped.

Times are wall clock for the whole path (extraction, epochs and test scoring); loading the backbone
is excluded from all three. Run:

    python benchmarks/feature_cache.py --image-size 112 --epochs 40 --threads 1
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from transferkit.data import load_task  # noqa: E402
from transferkit.data.feature_cache import FeatureCache  # noqa: E402
from transferkit.infer.loaders import eval_loader, make_dataset  # noqa: E402
from transferkit.infer.features import frozen_features  # noqa: E402
from transferkit.models import attach_head, load_backbone  # noqa: E402

DATA = REPO / "transferkit" / "demo_data" / "clipart"


def _batches(n: int, batch: int, seed: int, epoch: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    return list(torch.randperm(n, generator=g).split(batch))


def _new_head(dim: int, classes: int, seed: int) -> tuple[nn.Linear, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    head = nn.Linear(dim, classes)
    return head, torch.optim.Adam(head.parameters(), lr=1e-3)


def through_backbone(bb, task, args) -> dict:
    """Epoch by epoch: the frozen backbone runs on every training batch of every epoch."""
    t0 = time.perf_counter()
    model = attach_head(bb, task.classes)
    ds = make_dataset(model, task.train, train=False, augment=False, image_size=args.image_size, seed=0)
    labels = torch.tensor([task.class_to_idx[e.label] for e in task.train])
    head, opt = _new_head(bb.feature_dim, len(task.classes), args.seed)
    bb.module.eval()
    for epoch in range(args.epochs):
        for idx in _batches(len(ds), args.batch_size, args.seed, epoch):
            x = torch.stack([ds[int(i)][0] for i in idx])
            with torch.no_grad():
                f = bb.module(x)
            loss = nn.functional.cross_entropy(head(f), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    test = make_dataset(model, task.test, train=False, augment=False, image_size=args.image_size, seed=0)
    correct = 0
    with torch.no_grad():
        for x, y in eval_loader(model, test, 64):
            correct += int((head(bb.module(x)).argmax(1) == y).sum())
    return {"accuracy": correct / len(test), "seconds": time.perf_counter() - t0}


def through_cache(bb, task, args, cache: FeatureCache) -> dict:
    """The same head and epochs on features from the cache (extracted once when it is empty)."""
    t0 = time.perf_counter()
    tr, ytr, _ = frozen_features(bb, task.train, task.classes, image_size=args.image_size,
                                 batch_size=64, cache=cache)
    te, yte, _ = frozen_features(bb, task.test, task.classes, image_size=args.image_size,
                                 batch_size=64, cache=cache)
    t_feats = time.perf_counter() - t0
    head, opt = _new_head(bb.feature_dim, len(task.classes), args.seed)
    for epoch in range(args.epochs):
        for idx in _batches(len(tr), args.batch_size, args.seed, epoch):
            loss = nn.functional.cross_entropy(head(tr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = (head(te).argmax(1) == yte).float().mean().item()
    return {"accuracy": acc, "seconds": time.perf_counter() - t0, "feature_seconds": t_feats,
            "hits": cache.stats.hits, "misses": cache.stats.misses}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="bundled:efficientnet_lite0")
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "feature_cache"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    task = load_task(DATA, seed=args.seed)
    bb = load_backbone(args.backbone)
    print(f"{args.backbone} at {args.image_size}px, {len(task.train)} train / {len(task.test)} test images, "
          f"{len(task.classes)} classes; linear head, Adam lr 1e-3, batch {args.batch_size}, "
          f"{args.epochs} epochs; {args.threads} thread(s)")
    rows = {}
    with tempfile.TemporaryDirectory(prefix="tk-bench-cache-") as tmp:
        rows["cache, cold (extract once + epochs)"] = through_cache(bb, task, args, FeatureCache(tmp))
        rows["cache, warm (read memory-mapped + epochs)"] = through_cache(bb, task, args, FeatureCache(tmp))
    rows["through backbone every epoch"] = through_backbone(bb, task, args)
    base = rows["through backbone every epoch"]
    lines = ["| path | test accuracy | seconds | speed-up vs through backbone |", "|---|---:|---:|---:|"]
    for name, r in rows.items():
        r["speedup"] = base["seconds"] / r["seconds"]
        lines.append(f"| {name} | {r['accuracy']:.3f} | {r['seconds']:.1f} | {r['speedup']:.1f}x |")
    table = "\n".join(lines)
    print(table)
    cold = rows["cache, cold (extract once + epochs)"]
    diff = abs(cold["accuracy"] - base["accuracy"]) * 100
    print(f"\ncached (cold, extraction included) is {cold['speedup']:.1f}x faster; accuracy differs by "
          f"{diff:.1f} points")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": "python benchmarks/feature_cache.py " + " ".join(sys.argv[1:]), "args": vars(args),
            "n_train": len(task.train), "n_test": len(task.test), "machine": platform.platform(),
            "torch": torch.__version__, "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    out.with_suffix(".md").write_text(f"```bash\n{meta['command']}\n```\n\n{table}\n\n"
                                      f"cold cache {cold['speedup']:.1f}x faster, accuracy difference "
                                      f"{diff:.1f} points\n")


if __name__ == "__main__":
    main()
