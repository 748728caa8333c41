"""Does `--backbone auto` pick the source whose probe is best on the test split, and what does the
choice cost?

For each image set and seed, at N labels per class: `rank_sources(..., cv=True)` scores the bundled
EfficientNet-Lite0/1/2 by 5-fold cross-validated probe accuracy on the training labels (the choice
`train --backbone auto` makes, timed), then each source's probe is fitted on all training labels
(mirrored copies in, averaged at test: the same probe as the choice) and scored on the test split,
which the choice never sees.

    python benchmarks/pick_source.py              # clipart + digits + textures, 5 labels, seeds 3-5
    python benchmarks/pick_source.py --datasets digits --seeds 3 --shots 5 --max-test 100   # smoke

The sets are those of benchmarks/datasets.py: clip art, handwritten digits, and OpenArena material
textures (the one far from ImageNet's photos; skipped, with a message, without its Debian package).

Writes benchmarks/results/pick_source.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets import IMAGE_SETS, image_datasets  # noqa: E402

from transferkit.choose.rank import rank_sources  # noqa: E402
from transferkit.choose.source import AUTO_IMAGE, best_row  # noqa: E402
from transferkit.data import load_task  # noqa: E402
from transferkit.infer.features import frozen_features  # noqa: E402
from transferkit.models import load_backbone  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def test_accuracy(source: str, task, test_items, image_size) -> float:
    """The choice's probe (standardised features, C = 1, mirrored copies) fitted on every training
    label, scored on the test split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    bb = load_backbone(source)
    tr, ytr, trf = frozen_features(bb, task.train, task.classes, image_size=image_size, flip=True)
    te, yte, tef = frozen_features(bb, test_items, task.classes, image_size=image_size, flip=True)
    x = np.concatenate([tr.double().numpy(), trf.double().numpy()])
    y = np.concatenate([ytr.numpy(), ytr.numpy()])
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(C=1.0, max_iter=2000).fit(scaler.transform(x), y)
    p = (clf.predict_proba(scaler.transform(te.double().numpy()))
         + clf.predict_proba(scaler.transform(tef.double().numpy()))) / 2
    return float((clf.classes_[p.argmax(1)] == yte.numpy()).mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="clipart,digits,textures")
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--seeds", default="3,4,5", help="report seeds (no default was tuned on them)")
    ap.add_argument("--image-size", type=int, default=None, help="default: each source's own")
    ap.add_argument("--max-test", type=int, default=300, help="test items scored per set and seed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "pick_source"))
    ap.add_argument("--table", metavar="RESULTS_JSON", help="only write RESULTS.md again from its JSON")
    args = ap.parse_args(argv)
    if args.table:
        saved = json.loads(Path(args.table).read_text())
        text = format_table(saved["rows"], saved["command"])
        Path(args.table).with_suffix(".md").write_text(text)
        print(text)
        return 0
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        names = args.datasets.split(",")
        unknown = [n for n in names if n not in IMAGE_SETS]
        if unknown:
            ap.error(f"--datasets: unknown {', '.join(unknown)} (known: {', '.join(IMAGE_SETS)})")
        sets = image_datasets(tmp, names)
        for name in names:
            if name not in sets:
                print(f"{name}: not built here; skipped", flush=True)
                continue
            for seed in seeds:
                task = load_task(str(sets[name]), shots=args.shots, seed=seed)
                rng = np.random.default_rng(seed)
                test = [task.test[i] for i in sorted(rng.permutation(len(task.test))[:args.max_test])]
                t0 = time.time()
                ranked = rank_sources(str(sets[name]), list(AUTO_IMAGE), task=task, cv=True, seed=seed,
                                      image_size=args.image_size, log=lambda *a: None)
                cost = time.time() - t0
                picked = best_row(ranked)["source"]
                accs = {r["source"]: test_accuracy(r["source"], task, test, args.image_size) for r in ranked}
                best = max(accs.values())
                row = {"dataset": name, "seed": seed, "shots": args.shots, "n_train": len(task.train),
                       "n_test": len(test), "picked": picked, "choice_seconds": round(cost, 1),
                       "cv": {r["source"]: r["cv_accuracy"] for r in ranked}, "test": accs,
                       "picked_is_best": accs[picked] == best, "regret": round(best - accs[picked], 4)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/pick_source.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    out.with_suffix(".json").write_text(json.dumps({"command": command, "rows": rows}, indent=2) + "\n")
    out.with_suffix(".md").write_text(format_table(rows, command))
    print(format_table(rows, command))
    return 0


def format_table(rows: list[dict], command: str) -> str:
    short = {s: s.split("_")[-1] for s in AUTO_IMAGE}
    lines = [f"Command: `{command}`", "",
             "| set | seed | CV probe: " + " / ".join(short.values()) + " | test probe: "
             + " / ".join(short.values()) + " | picked | best on test? | regret | choice seconds |",
             "|---|---:|---|---|---|---|---:|---:|"]
    for r in rows:
        cv = " / ".join("–" if r["cv"].get(s) is None else f"{r['cv'][s]:.3f}" for s in AUTO_IMAGE)
        te = " / ".join(f"{r['test'][s]:.3f}" for s in AUTO_IMAGE)
        lines.append(f"| {r['dataset']} | {r['seed']} | {cv} | {te} | {short[r['picked']]} | "
                     f"{'yes' if r['picked_is_best'] else 'no'} | {r['regret']:.3f} | {r['choice_seconds']:.1f} |")
    by_set: dict[str, list[dict]] = {}
    for r in rows:
        by_set.setdefault(r["dataset"], []).append(r)
    lines.append("")
    for name, rs in by_set.items():
        mean = {s: np.mean([r["test"][s] for r in rs]) for s in AUTO_IMAGE}
        best = max(mean, key=mean.get)
        picks = [r["picked"] for r in rs]
        auto = np.mean([r["test"][r["picked"]] for r in rs])
        lines.append(f"- {name}: mean test probe " + ", ".join(f"{short[s]} {mean[s]:.3f}" for s in AUTO_IMAGE)
                     + f", auto's pick {auto:.3f}"
                     + f"; best on average {short[best]}; auto picked it on {picks.count(best)}/{len(rs)} seeds, "
                     f"the per-seed best on {sum(r['picked_is_best'] for r in rs)}/{len(rs)}; mean regret "
                     f"{np.mean([r['regret'] for r in rs]):.3f}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
