"""The model card (`README.md`) of an `--format hf` export, so that `huggingface-cli upload` publishes
a complete model: YAML front matter the Hub reads (library_name, pipeline_tag, tags, base_model when
the source is a Hub id, metrics and a `model-index` with the test results) and a body with the run's
test metrics, the source, the number of examples per split and class, and how to load it.

`LOAD_SNIPPET` is the loading code of docs/how-to/export.md, verbatim (a test runs it with stdin
closed, so a `trust_remote_code` prompt would fail it).
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import yaml

CARD = "README.md"

LOAD_SNIPPET = '''\
from transformers import AutoModelForSequenceClassification, AutoTokenizer
path = "exported/hf"  # the export folder, or its Hub id once uploaded
model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True)
tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
logits = model(**tok(["the text to classify"], return_tensors="pt")).logits
print(model.config.id2label[int(logits.argmax(-1)[0])])
'''


def _hub_id(source: dict) -> str | None:
    """The Hub model id of an `hf:` source (not a local folder), else None."""
    sid = str(source.get("id", ""))
    if not sid.startswith("hf:") or not source.get("pretrained", True):
        return None
    name = sid[3:]
    if name.startswith(("/", ".", "~")) or Path(name).exists() or name.count("/") > 1:
        return None
    return name


def _split_counts(run: Path, classes: list[str]) -> dict[str, Counter]:
    counts: dict[str, Counter] = {}
    with open(run / "splits.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            counts.setdefault(row["split"], Counter())[row["label"]] += 1
    return counts


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def model_card(run: Path, classes: list[str], source: dict, cfg, lora: str | None) -> str:
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    name = run.resolve().name
    hub = _hub_id(source)
    scored = metrics.get("accuracy") is not None
    front: dict = {"library_name": "transformers", "pipeline_tag": "text-classification",
                   "tags": ["transferkit", "text-classification", "custom_code"]}
    if hub:
        front["base_model"] = hub
    if scored:
        front["metrics"] = ["accuracy", "f1"]
        data = Path(str(cfg.data)).name or "training data"
        results = [{"type": "accuracy", "name": "test accuracy", "value": float(metrics["accuracy"])}]
        if metrics.get("macro_f1") is not None:
            results.append({"type": "f1", "name": "test macro-F1", "value": float(metrics["macro_f1"]),
                            "args": {"average": "macro"}})
        front["model-index"] = [{"name": name, "results": [{
            "task": {"type": "text-classification", "name": "Text Classification"},
            "dataset": {"name": data, "type": data, "split": "test"}, "metrics": results}]}]

    counts = _split_counts(run, classes) if (run / "splits.csv").is_file() else {}
    splits = [s for s in ("train", "val", "test") if s in counts]
    lines = [f"# {name}", "",
             f"A text classifier trained with [transferkit](https://pypi.org/project/transferkit/) from "
             f"`{source.get('id')}` (architecture `{source.get('arch')}`, weights "
             f"`{source.get('weights_hash')}`), strategy `{cfg.strategy}`"
             + (f", LoRA {'merged into the weights' if lora == 'merged' else 'adapter in adapter/'}" if lora else "")
             + f". {len(classes)} classes: " + ", ".join(f"`{c}`" for c in classes) + ".", "",
             "## Test metrics", ""]
    if scored:
        lines += ["| metric | value |", "|---|---|",
                  f"| accuracy | {_num(metrics.get('accuracy'))} |",
                  f"| macro-F1 | {_num(metrics.get('macro_f1'))} |",
                  f"| NLL | {_num(metrics.get('nll'))} |",
                  f"| ECE | {_num(metrics.get('ece'))} |",
                  f"| test examples | {metrics.get('n', metrics.get('n_test'))} |", ""]
        per = metrics.get("per_class") or {}
        if per:
            lines += ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
            lines += [f"| {c} | {_num(v.get('precision'))} | {_num(v.get('recall'))} | {_num(v.get('f1'))} "
                      f"| {v.get('support')} |" for c, v in per.items()]
            lines.append("")
        if metrics.get("n_test", 0) < 100:
            lines += [f"With {metrics.get('n_test')} test examples these numbers are rough.", ""]
    else:
        lines += ["Not scored: the run kept no test split.", ""]
    lines += ["## Data", "",
              f"Trained on `{Path(str(cfg.data)).name}`: {metrics.get('n_train')} training, "
              f"{metrics.get('n_val')} validation and {metrics.get('n_test')} test examples.", ""]
    if splits:
        lines += ["| class | " + " | ".join(splits) + " |", "|---" * (len(splits) + 1) + "|"]
        lines += [f"| {c} | " + " | ".join(str(counts[s][c]) for s in splits) + " |" for c in classes]
        lines.append("")
    lines += ["## How to load it", "",
              "The model class (`PooledEncoderForSequenceClassification`: the encoder, its pooling and the "
              "trained head) ships in `modeling_transferkit.py` beside the weights, so plain transformers "
              "loads it with `trust_remote_code=True`:", "", "```python", LOAD_SNIPPET.rstrip("\n"), "```", "",
              "With transferkit installed, `import transferkit.ship.hf_model` registers the class and no "
              "remote code runs."]
    if lora == "adapter":
        lines += ["", "The LoRA adapter is apart, in PEFT's format: "
                      "`PeftModel.from_pretrained(model, path + \"/adapter\")`."]
    head = yaml.safe_dump(front, sort_keys=False, allow_unicode=True)
    return f"---\n{head}---\n\n" + "\n".join(lines) + "\n"


def write_card(out: Path, run: Path, classes: list[str], source: dict, cfg, lora: str | None) -> str:
    (out / CARD).write_text(model_card(run, classes, source, cfg, lora), encoding="utf-8")
    return CARD
