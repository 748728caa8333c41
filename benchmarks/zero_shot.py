"""Text to image on Debian icon themes: a linear bridge (ESZSL or DeViSE), zero-shot on held-out classes, name priors.

Data: icons of six Debian icon themes paired with the words of their names (scripts/build_icon_pairs.py;
built on first run into --pairs, needs the apt packages it names). Per seed, --held-out classes are
drawn at random; the bridge (bundled:efficientnet_lite0 features -> bundled:minilm-l6 space) is
trained only on the images of the other classes, each paired with its own icon name ("battery
caution"); with --extra-pairs, a second bridge on those plus the icons of no class (extra_pairs.csv)
whose names share no word with a held-out class. The default bridge is the closed-form ESZSL map
(transferkit.zeroshot.ridge) whose penalties are chosen per seed by 5-fold class-disjoint
cross-validation over the training classes only (transferkit.zeroshot.select); --loss hinge is
DeViSE's map. Then, on the held-out classes only:

- zero-shot: each image gets the nearest class description (classes.csv) among the held-out ones;
- 1-2 labels per class: the plain probe (L2 logistic regression on frozen features, C on validation,
  as `linear_probe`) against the same probe pulled toward the class-name head (transferkit.zeroshot.prior).

    python benchmarks/zero_shot.py --image-size 96 --threads 1 --seeds 3 --extra-pairs

Writes OUT/zero_shot.json and OUT/zero_shot.md (OUT: benchmarks/results; zero_shot_LOSS.* with --loss LOSS).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from transferkit.data import Example, sample_shots, stratified_split
from transferkit.engine.headfit import fit_head
from transferkit.zeroshot import BridgeConfig, fit_bridge, head_prior, read_class_text, text_embedder
from transferkit.zeroshot.pairs import image_features
from transferkit.zeroshot.select import select_bridge
from transferkit.zeroshot.space import JointSpace

ROOT = Path(__file__).resolve().parent.parent


def _ensure_pairs(out: Path) -> None:
    if (out / "pairs.csv").is_file():
        return
    print(f"building the icon pairs into {out} (scripts/build_icon_pairs.py) ...")
    rc = subprocess.call([sys.executable, str(ROOT / "scripts" / "build_icon_pairs.py"), "--out", str(out)])
    if rc != 0:
        raise SystemExit("could not build the icon pairs; install the Debian packages adwaita-icon-theme "
                         "tango-icon-theme gnome-icon-theme mate-icon-theme oxygen-icon-theme "
                         "elementary-xfce-icon-theme")


def _features(pairs: Path, rows: list[dict], image_size: int, cache: Path):
    if cache.is_file():
        saved = torch.load(cache, weights_only=True)
        if saved["paths"] == [r["path"] for r in rows] and saved["image_size"] == image_size:
            return saved["feats"], saved["flipped"], saved["seconds"]
    from transferkit.models import load_backbone
    t0 = time.time()
    bb = load_backbone("bundled:efficientnet_lite0")
    feats, flipped = image_features(bb, [str(pairs / r["path"]) for r in rows], image_size=image_size)
    secs = time.time() - t0
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"paths": [r["path"] for r in rows], "image_size": image_size, "feats": feats, "flipped": flipped,
                "seconds": secs}, cache)
    return feats, flipped, secs


def _acc(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean())


def _probe(feats, flipped, tr, va, y, k, prior=None) -> torch.nn.Linear:
    head = torch.nn.Linear(feats.shape[1], k)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    x = torch.cat([feats[tr], flipped[tr]])
    fit_head(head, x, torch.cat([y[tr], y[tr]]), val=(feats[va], y[va]), prior=prior)
    return head


ALPHAS, BETAS = (10.0, 100.0, 1000.0), (0.1, 1.0, 10.0)


def _choose(texts_of, groups, feats, embed, class_text, args, seed, extra=None):
    """(alpha, beta) of the closed-form bridge by 5-fold class-disjoint CV (2 deals) on the TRAINING
    classes only (`groups`); with `extra` = (texts, feats, allowed(fold)), its allowed pairs also train."""
    if args.loss not in ("ridge", "eszsl") or args.no_cv:
        return BridgeConfig(loss=args.loss, steps=args.bridge_steps, seed=seed), None
    texts = sorted(set(texts_of) | set(extra[0] if extra else []))
    t_index = {t: j for j, t in enumerate(texts)}
    emb = embed(texts)
    names = sorted(set(groups))
    group_emb = dict(zip(names, embed([class_text[c] for c in names])))
    ex = None if extra is None else (extra[1], torch.tensor([t_index[t] for t in extra[0]]), extra[2])
    cands = [BridgeConfig(loss=args.loss, alpha=a, beta=b, seed=seed) for a in ALPHAS
             for b in (BETAS if args.loss == "eszsl" else (1.0,))]
    t0 = time.time()
    best, table = select_bridge(cands, feats, torch.tensor([t_index[t] for t in texts_of]), emb, groups, n_folds=5,
                                repeats=2, seed=seed, group_emb=group_emb, extra=ex)
    return best, {"alpha": best.alpha, "beta": best.beta, "seconds": round(time.time() - t0, 2),
                  "cv": [{"alpha": r["config"].alpha, "beta": r["config"].beta, "mean": round(r["mean"], 4)}
                         for r in table]}


def _bridge(texts_of, feats, embed, cfg):
    # the bridge sees each icon once (mirror images would double its cost for little on icons)
    texts = sorted(set(texts_of))
    t_index = {t: j for j, t in enumerate(texts)}
    targets = torch.tensor([t_index[t] for t in texts_of])
    t0 = time.time()
    bridge, curve = fit_bridge(feats, targets, embed(texts), cfg)
    return JointSpace("bundled:efficientnet_lite0", bridge, embed, "benchmark"), {
        "images": len(texts_of), "texts": len(texts), "loss": curve, "seconds": round(time.time() - t0, 2)}


def _no_shared_word(texts, class_text, classes):
    banned = {w for c in classes for w in (c + " " + class_text[c]).split()}
    return torch.tensor([not banned & set(t.split()) for t in texts], dtype=torch.bool)


def run_seed(seed, rows, feats, flipped, extra, class_text, embed, args) -> dict:
    classes = sorted({r["label"] for r in rows})
    held = sorted(random.Random(seed).sample(classes, args.held_out))
    held_texts = [class_text[c] for c in held]
    seen_idx = [i for i, r in enumerate(rows) if r["label"] not in held]
    seen_texts, groups = [rows[i]["text"] for i in seen_idx], [rows[i]["label"] for i in seen_idx]
    cfg, cv = _choose(seen_texts, groups, feats[seen_idx], embed, class_text, args, seed)
    space, info = _bridge(seen_texts, feats[seen_idx], embed, cfg)
    spaces = {"": space}
    out = {"seed": seed, "held_out": held, "bridge": info | {"cv": cv}}
    if extra is not None:
        # the extra icons whose names share no word with a held-out class (name or description); in the
        # CV, also none with the validation fold's classes
        x_texts = [r["text"] for r in extra["rows"]]
        ok = torch.nonzero(_no_shared_word(x_texts, class_text, held)).flatten().tolist()
        ok_texts = [x_texts[j] for j in ok]
        allowed = lambda fold: _no_shared_word(ok_texts, class_text, fold)  # noqa: E731
        cfg_x, cv_x = _choose(seen_texts, groups, feats[seen_idx], embed, class_text, args, seed,
                              (ok_texts, extra["feats"][ok], allowed))
        spaces["x"], out["bridge_extra"] = _bridge(seen_texts + ok_texts,
                                                   torch.cat([feats[seen_idx], extra["feats"][ok]]), embed, cfg_x)
        out["bridge_extra"]["cv"] = cv_x
    # --- zero-shot on all images of the held-out classes
    h_idx = [i for i, r in enumerate(rows) if r["label"] in held]
    y_all = torch.tensor([held.index(r["label"]) for r in rows if r["label"] in held])
    # --- 1-2 labels per class on the held-out classes: test half, validation from the rest
    items = [Example(str(i), rows[i]["label"], str(i)) for i in h_idx]
    rest, test = stratified_split(items, 0.5, seed)
    pool, val = stratified_split(rest, 0.25, seed + 1)
    te = torch.tensor([int(e.x) for e in test])
    va = torch.tensor([int(e.x) for e in val])
    y = torch.full((len(rows),), -1, dtype=torch.long)
    for i in h_idx:
        y[i] = held.index(rows[i]["label"])
    out.update(n_zero_shot=len(h_idx), n_test=len(te), n_val=len(va))
    for tag, sp in spaces.items():
        out[f"zero_shot{tag}"] = _acc(sp.scores(feats[h_idx], held_texts), y_all)
        out[f"zero_shot_test{tag}"] = _acc(sp.scores(feats[te], held_texts), y[te])
    priors = {tag: head_prior(sp, held_texts) for tag, sp in spaces.items()}
    for k in args.shots:
        tr = torch.tensor([int(e.x) for e in sample_shots(pool, k, seed)])
        out[f"probe_{k}"] = _acc(_probe(feats, flipped, tr, va, y, len(held))(feats[te]), y[te])
        for tag, prior in priors.items():
            named = _probe(feats, flipped, tr, va, y, len(held), prior=prior)
            out[f"prior{tag}_{k}"] = _acc(named(feats[te]), y[te])
    return out


def _fmt(vals: list[float]) -> str:
    return f"{np.mean(vals):.3f} ± {np.std(vals):.3f}"


def _row(results, key, label, chance, base=None) -> str:
    v = [r[key] for r in results]
    cell = f"| {label} | {_fmt(v)} | {np.mean(v) / chance:.1f}x |"
    if base is None:
        return cell + " |"
    d = [r[key] - r[base] for r in results]
    return cell + f" {np.mean(d):+.3f} ({', '.join(f'{x:+.3f}' for x in d)}) |"


def _method(results, args) -> str:
    if args.loss in ("hinge", "softmax"):
        return f"{args.loss} loss, {args.bridge_steps} steps."
    def chosen(key):
        return ", ".join(f"{r[key]['cv']['alpha']:g}/{r[key]['cv']['beta']:g}" if r[key]["cv"] else "fixed"
                         for r in results)
    text = (f"{args.loss} closed form; alpha/beta per seed by class-disjoint CV on the training classes: "
            f"A {chosen('bridge')}")
    return text + (f"; B {chosen('bridge_extra')}." if "bridge_extra" in results[0] else ".")


def report(results: list[dict], args, command: str, feature_s: float, n_images: int, n_classes: int) -> str:
    chance = 1.0 / args.held_out
    b, bx = results[0]["bridge"], results[0].get("bridge_extra")
    extra = bx is not None
    lines = [f"Command: `{command}`", "",
             f"{n_images} icon images in {n_classes} classes; per seed {args.held_out} classes held out of the "
             f"bridge's training. Bridge A: the other classes' images with their icon names (seed 0: "
             f"{b['images']} images, {b['texts']} texts)"
             + (f"; bridge B: those plus extra icons of no class whose names share no word with a held-out "
                f"class (seed 0: {bx['images']} images, {bx['texts']} texts). " if extra else ". ")
             + _method(results, args) + f" {len(results)} seeds, mean ± std over seeds. "
             f"Features: bundled:efficientnet_lite0 at {args.image_size} px ({feature_s:.0f} s once); "
             "text: bundled:minilm-l6.", "",
             "| on the held-out classes | accuracy | vs chance | vs probe (per seed) |", "|---|---:|---:|---:|",
             f"| chance (1/{args.held_out}) | {chance:.3f} | 1.0x | |",
             _row(results, "zero_shot", "zero-shot, bridge A (0 labels), all held-out images", chance),
             _row(results, "zero_shot_test", "zero-shot, bridge A, on the few-label test half", chance)]
    if extra:
        lines += [_row(results, "zero_shotx", "zero-shot, bridge B (0 labels), all held-out images", chance)]
    for k in args.shots:
        lines += [_row(results, f"probe_{k}", f"{k} label(s)/class: probe", chance),
                  _row(results, f"prior_{k}", f"{k} label(s)/class: probe + name prior (bridge A)", chance,
                       f"probe_{k}")]
        if extra:
            lines += [_row(results, f"priorx_{k}", f"{k} label(s)/class: probe + name prior (bridge B)", chance,
                           f"probe_{k}")]
    lines += ["", "Held-out classes per seed: " + "; ".join(", ".join(r["held_out"]) for r in results)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", default="runs/icon_pairs", help="built here by scripts/build_icon_pairs.py if missing")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--held-out", type=int, default=10, help="classes held out of the bridge per seed")
    ap.add_argument("--shots", default="1,2")
    ap.add_argument("--loss", default="eszsl", choices=["eszsl", "ridge", "hinge", "softmax"],
                    help="eszsl/ridge: closed form, alpha (beta) by class-disjoint CV on the training classes; "
                         "hinge: DeViSE's map (the earlier default)")
    ap.add_argument("--no-cv", action="store_true", help="eszsl/ridge with BridgeConfig's alpha, beta (no CV)")
    ap.add_argument("--bridge-steps", type=int, default=300, help="hinge/softmax steps")
    ap.add_argument("--extra-pairs", action="store_true",
                    help="also train bridge B on the extra icons (hinge: about 5x the bridge's cost)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/results",
                    help="folder for zero_shot.{json,md} (zero_shot_LOSS.* for a --loss other than eszsl)")
    args = ap.parse_args(argv)
    args.shots = [int(s) for s in args.shots.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    pairs, out = Path(args.pairs), Path(args.out)
    _ensure_pairs(pairs)
    with open(pairs / "pairs.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    classes = sorted({r["label"] for r in rows})
    class_text = read_class_text(pairs / "classes.csv", classes)
    feats, flipped, feature_s = _features(pairs, rows, args.image_size,
                                          pairs / f"features_{args.image_size}.pt")
    extra = None
    if args.extra_pairs:
        with open(pairs / "extra_pairs.csv", newline="", encoding="utf-8") as f:
            extra_rows = list(csv.DictReader(f))
        ef, _, extra_s = _features(pairs, extra_rows, args.image_size, pairs / f"features_extra_{args.image_size}.pt")
        extra = {"rows": extra_rows, "feats": ef}
        feature_s += extra_s
    embed = text_embedder("bundled:minilm-l6")
    results = [run_seed(s, rows, feats, flipped, extra, class_text, embed, args) for s in range(args.seeds)]
    command = "python benchmarks/zero_shot.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    md = report(results, args, command, feature_s, len(rows), len(classes))
    out.mkdir(parents=True, exist_ok=True)
    name = "zero_shot" if args.loss == "eszsl" else f"zero_shot_{args.loss}"
    (out / f"{name}.json").write_text(json.dumps({"command": command, "args": vars(args),
                                                  "results": results}, indent=2))
    (out / f"{name}.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
