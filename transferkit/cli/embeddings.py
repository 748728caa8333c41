"""`transferkit embed`, `knn` and `cluster`: a pretrained model with few or no target labels
(argument parsing and output over `transferkit.embeddings`)."""

from __future__ import annotations

import argparse
import json

from ..data.feature_cache import open_cache


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default="bundled:efficientnet_lite0",
                   help="source model id (see `transferkit models`), e.g. bundled:minilm-l6 or hf:DIR for text")
    p.add_argument("--image-size", type=int, default=None, help="default: the backbone's own input size")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--text-col", default="text")
    p.add_argument("--label-col", default="label")
    p.add_argument("--pooling", default=None, help="text pooling: mean | cls (default from the model)")
    p.add_argument("--max-length", type=int, default=None, help="tokens (default from the tokenizer)")
    p.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True,
                   help="read/write features in the feature cache (--no-cache: compute afresh)")
    p.add_argument("--cache-dir", default=None,
                   help="feature cache root (default $TRANSFERKIT_CACHE or ~/.cache/transferkit)")


def _embed_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="transferkit embed", allow_abbrev=False,
                                description="Pooled features of every input of DATA from a frozen source "
                                            "model: OUT (.npy or .safetensors, [N, D] float32), "
                                            "OUT.index.csv (row, item, label) and OUT.meta.json.")
    p.add_argument("data", help="images (a folder, class folders optional, or a CSV with 'path'), or text "
                                "(CSV/TSV/JSONL with a text column, or .txt with one text per line)")
    p.add_argument("--out", required=True, help="FILE.npy or FILE.safetensors")
    p.add_argument("--seed", type=int, default=0, help="seeds a random-init source (SRC@random)")
    _common(p)
    return p


def _knn_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="transferkit knn", allow_abbrev=False,
                                description="Nearest class mean and k-NN on frozen, L2-normalised features "
                                            "from DATA's training split (N --shots per class), scored "
                                            "on its test split.")
    p.add_argument("data")
    p.add_argument("--shots", type=int, default=None, help="labelled examples per class (default: all)")
    p.add_argument("--k", type=int, default=5, help="neighbours that vote (weighted by similarity)")
    p.add_argument("--seed", type=int, default=0, help="the split/shot seed (as for train)")
    p.add_argument("--val", default=None)
    p.add_argument("--test", default=None)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--out", default=None, help="directory for knn.json and predictions.csv")
    _common(p)
    return p


def _cluster_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="transferkit cluster", allow_abbrev=False,
                                description="k-means on frozen features of DATA with no labels: OUT/clusters.csv, "
                                            "a contact sheet per cluster in OUT/sheets/, OUT/summary.json "
                                            "(with purity and adjusted Rand index when DATA has labels).")
    p.add_argument("data")
    p.add_argument("--k", type=int, required=True, help="number of clusters")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-sheet", type=int, default=36, help="thumbnails (or texts) per contact sheet")
    p.add_argument("--thumb", type=int, default=96, help="thumbnail size in pixels")
    _common(p)
    return p


def cmd_embed(argv: list[str]) -> int:
    from ..embeddings import compute_embeddings, write_embeddings
    a = _embed_parser().parse_args(argv)
    emb = compute_embeddings(a.data, a.backbone, image_size=a.image_size, batch_size=a.batch_size,
                             cache=open_cache(a.cache, a.cache_dir), text_col=a.text_col,
                             label_col=a.label_col, pooling=a.pooling, max_length=a.max_length, seed=a.seed)
    for s in emb.skipped:
        print(f"skipped: {s}")
    paths = write_embeddings(emb, a.out, data=a.data)
    print(f"{emb.feats.shape[0]} x {emb.feats.shape[1]} features from {emb.source['id']} "
          f"({emb.seconds:.1f}s) -> {', '.join(map(str, paths))}")
    return 0


def cmd_knn(argv: list[str]) -> int:
    from ..embeddings.knn import knn_classify
    a = _knn_parser().parse_args(argv)
    r = knn_classify(a.data, a.backbone, shots=a.shots, k=a.k, seed=a.seed, val=a.val, test=a.test,
                     val_fraction=a.val_fraction, test_fraction=a.test_fraction, image_size=a.image_size,
                     batch_size=a.batch_size, cache=open_cache(a.cache, a.cache_dir), text_col=a.text_col,
                     label_col=a.label_col, pooling=a.pooling, max_length=a.max_length)
    if a.out:
        _write_knn(a.out, r)
    print(json.dumps({"source": r["source"], "n_train": r["n_train"], "n_test": r["n_test"],
                      **{name: {"accuracy": round(m["accuracy"], 4), "macro_f1": round(m["macro_f1"], 4)}
                         for name, m in r["methods"].items()}}))
    return 0


def _write_knn(out: str, r: dict) -> None:
    import csv
    import io
    from pathlib import Path

    from ..engine.checkpoint import atomic_write_json, atomic_write_text
    d = Path(out)
    for name in ("knn.json", "predictions.csv"):
        if (d / name).exists() and not (d / "knn.json").exists():
            raise FileExistsError(f"{d / name} exists and was not written by transferkit knn")
    atomic_write_json(d / "knn.json", {k: v for k, v in r.items() if k != "predictions"})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(r["predictions"][0]))
    w.writeheader()
    w.writerows(r["predictions"])
    atomic_write_text(d / "predictions.csv", buf.getvalue())


def cmd_cluster(argv: list[str]) -> int:
    from ..embeddings.cluster import cluster_data
    a = _cluster_parser().parse_args(argv)
    s = cluster_data(a.data, a.backbone, a.k, a.out, seed=a.seed, image_size=a.image_size,
                     batch_size=a.batch_size, cache=open_cache(a.cache, a.cache_dir), per_sheet=a.per_sheet,
                     thumb=a.thumb, text_col=a.text_col, label_col=a.label_col, pooling=a.pooling,
                     max_length=a.max_length)
    print("cluster sizes: " + ", ".join(f"{c}: {n}" for c, n in s["sizes"].items()))
    if "purity" in s:
        print(f"against the labels: purity {s['purity']:.3f}, adjusted Rand {s['adjusted_rand']:.3f}, "
              f"NMI {s['nmi']:.3f}")
    print(f"wrote {a.out}/clusters.csv, {a.out}/sheets/, {a.out}/summary.json")
    return 0


def main(argv: list[str]) -> int:
    """`argv` starts with the command name (`embed`, `knn` or `cluster`)."""
    return {"embed": cmd_embed, "knn": cmd_knn, "cluster": cmd_cluster}[argv[0]](argv[1:])
