"""`transferkit embed`, `knn` and `cluster`: a pretrained model with few or no target labels
(argument parsing and output over `transferkit.embeddings`)."""

from __future__ import annotations

import argparse
import json

from .options import ONE_SOURCE_HELP, add_fields, add_shared, command_parser, out_help

# the options these commands share with `train`: same flags, same help, same checks (make_config)
_SHARED = {"backbone", "image_size", "batch_size", "seed", "text_col", "label_col", "pooling",
           "max_length"}
_SPLITS = {"shots", "val", "test", "val_fraction", "test_fraction"}


def _common(p: argparse.ArgumentParser, keep: set[str] = _SHARED) -> None:
    add_fields(p, keep | {"cache", "cache_dir"}, helps={"backbone": ONE_SOURCE_HELP})


def add_cache_options(p: argparse.ArgumentParser) -> None:
    """--cache/--no-cache and --cache-dir: TrainConfig's fields, so the help is train's."""
    add_fields(p, {"cache", "cache_dir"})


def open_cache_from_args(a: argparse.Namespace):
    """The cache that --cache/--no-cache and --cache-dir ask for (unset flags: the defaults)."""
    from ..data.feature_cache import open_cache
    return open_cache(a.cache is not False, a.cache_dir)


def _config(a: argparse.Namespace, keep: set[str] = _SHARED):
    from ..config import make_config
    from ..config import ConfigError, auto_backbone_sources
    c = make_config(None, data=a.data, **{k: getattr(a, k) for k in keep})
    if auto_backbone_sources(c.backbone) is not None:
        raise ConfigError(f"--backbone {c.backbone}: this command uses one source; 'auto' chooses among "
                          "sources for train (see also 'transferkit rank --pick')")
    return c


def _cache(a: argparse.Namespace):
    return open_cache_from_args(a)


def _embed_parser() -> argparse.ArgumentParser:
    p = command_parser("embed", "Pooled features of every input of DATA from a frozen source model: OUT "
                       "(.npy or .safetensors, [N, D] float32), OUT.index.csv (row, item, label) and "
                       "OUT.meta.json.",
                       ["transferkit embed photos/ --out feats.npy",
                        "transferkit embed texts.csv --backbone bundled:minilm-l6 --out feats.safetensors"])
    ess = p.add_argument_group("essentials")
    ess.add_argument("data", help="images (a folder, class folders optional, or a CSV with 'path'), or text "
                                  "(CSV/TSV/JSONL with a text column, or .txt with one text per line)")
    add_shared(ess, "--out", required=True, metavar="FILE",
               help=out_help("FILE.npy or FILE.safetensors", required=True))
    _common(p)
    return p


def _knn_parser() -> argparse.ArgumentParser:
    p = command_parser("knn", "Nearest class mean and k-NN on frozen, L2-normalised features from DATA's "
                       "training split (N --shots per class), scored on its test split.",
                       ["transferkit knn photos/ --shots 5",
                        "transferkit knn photos/ --shots 10 --k 3 --out knn/ --backbone timm:resnet18"])
    ess = p.add_argument_group("essentials")
    ess.add_argument("data", help="labelled data: folder of class folders, image CSV (path,label), or text "
                                  "CSV/TSV/JSONL")
    ess.add_argument("--k", type=int, default=5, help="neighbours that vote, weighted by similarity (default: 5)")
    add_shared(ess, "--out", help=out_help("directory for knn.json and predictions.csv",
                                           default="none, print only"))
    _common(p, _SHARED | _SPLITS)
    return p


def _cluster_parser() -> argparse.ArgumentParser:
    p = command_parser("cluster", "k-means on frozen features of DATA with no labels: OUT/clusters.csv, a "
                       "contact sheet per cluster in OUT/sheets/, OUT/summary.json (with purity and "
                       "adjusted Rand index when DATA has labels).",
                       ["transferkit cluster photos/ --k 8 --out clusters/",
                        "transferkit cluster texts.txt --k 5 --backbone bundled:minilm-l6 --out text-clusters/"])
    ess = p.add_argument_group("essentials")
    ess.add_argument("data", help="images (a folder, class folders optional, or a CSV with 'path'), or text "
                                  "(CSV/TSV/JSONL with a text column, or .txt with one text per line)")
    ess.add_argument("--k", type=int, required=True, help="number of clusters (required)")
    add_shared(ess, "--out", required=True, help=out_help("output directory", required=True))
    ess.add_argument("--per-sheet", type=int, default=36,
                     help="thumbnails (or texts) per contact sheet, nearest the centre first (default: 36)")
    ess.add_argument("--thumb", type=int, default=96, help="thumbnail size in pixels (default: 96)")
    _common(p)
    return p


def cmd_embed(argv: list[str]) -> int:
    a = _embed_parser().parse_args(argv)
    from ..embeddings import compute_embeddings, write_embeddings
    c = _config(a)
    emb = compute_embeddings(a.data, c.backbone, image_size=c.image_size, batch_size=2 * c.batch_size,
                             cache=_cache(a), text_col=c.text_col, label_col=c.label_col,
                             pooling=c.pooling, max_length=c.max_length, seed=c.seed)
    for s in emb.skipped:
        print(f"skipped: {s}")
    paths = write_embeddings(emb, a.out, data=a.data)
    print(f"{emb.feats.shape[0]} x {emb.feats.shape[1]} features from {emb.source['id']} "
          f"({emb.seconds:.1f}s) -> {', '.join(map(str, paths))}")
    return 0


def cmd_knn(argv: list[str]) -> int:
    a = _knn_parser().parse_args(argv)
    from ..embeddings.knn import knn_classify
    c = _config(a, _SHARED | _SPLITS)
    r = knn_classify(a.data, c.backbone, shots=c.shots, k=a.k, seed=c.seed, val=c.val, test=c.test,
                     val_fraction=c.val_fraction, test_fraction=c.test_fraction, image_size=c.image_size,
                     batch_size=2 * c.batch_size, cache=_cache(a), text_col=c.text_col, label_col=c.label_col,
                     pooling=c.pooling, max_length=c.max_length)
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

    from ..store.checkpoint import atomic_write_json, atomic_write_text
    from ..report.outputs import spreadsheet_cell
    d = Path(out)
    for name in ("knn.json", "predictions.csv"):
        if (d / name).exists() and not (d / "knn.json").exists():
            raise FileExistsError(f"{d / name} exists and was not written by transferkit knn")
    atomic_write_json(d / "knn.json", {k: v for k, v in r.items() if k != "predictions"})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(r["predictions"][0]))
    w.writeheader()
    w.writerows({k: spreadsheet_cell(v) for k, v in row.items()} for row in r["predictions"])
    atomic_write_text(d / "predictions.csv", buf.getvalue())


def cmd_cluster(argv: list[str]) -> int:
    a = _cluster_parser().parse_args(argv)
    from ..embeddings.cluster import cluster_data
    c = _config(a)
    if a.per_sheet < 1 or a.thumb < 8:
        raise ValueError("--per-sheet must be at least 1 and --thumb at least 8 pixels")
    s = cluster_data(a.data, c.backbone, a.k, a.out, seed=c.seed, image_size=c.image_size,
                     batch_size=2 * c.batch_size, cache=_cache(a), per_sheet=a.per_sheet, thumb=a.thumb,
                     text_col=c.text_col, label_col=c.label_col, pooling=c.pooling, max_length=c.max_length)
    print("cluster sizes: " + ", ".join(f"{c}: {n}" for c, n in s["sizes"].items()))
    if "purity" in s:
        print(f"against the labels: purity {s['purity']:.3f}, adjusted Rand {s['adjusted_rand']:.3f}, "
              f"NMI {s['nmi']:.3f}")
    print(f"wrote {a.out}/clusters.csv, {a.out}/sheets/, {a.out}/summary.json")
    return 0


def main(argv: list[str]) -> int:
    """`argv` starts with the command name (`embed`, `knn` or `cluster`)."""
    return {"embed": cmd_embed, "knn": cmd_knn, "cluster": cmd_cluster}[argv[0]](argv[1:])


PARSERS = {"embed": _embed_parser, "knn": _knn_parser, "cluster": _cluster_parser}
