"""Text transfer through the real entry point (`transferkit.cli.main`) on CPU with a tiny random BERT:
train -> evaluate -> predict, LoRA (what trains, and a reloaded run predicting exactly as the trained
model did), partial fine-tuning, L2-SP, and bad input files."""

import copy
import csv
import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from transferkit.cli import main

# Three classes told apart by disjoint word sets (all in the tiny BERT's vocabulary).
CLASSES = {
    "animals": "cat dog bird fish".split(),
    "weather": "rain snow wind sun sky".split(),
    "colours": "red green blue black white".split(),
}
PER_CLASS = 10
N_TEXTS = len(CLASSES) * PER_CLASS


def _sentences(seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for label, words in CLASSES.items():
        for _ in range(PER_CLASS):
            text = [rng.choice(words) for _ in range(rng.randint(3, 6))]
            text.insert(rng.randrange(len(text)), rng.choice(["the", "a", "and"]))
            rows.append((" ".join(text), label))
    return rows


def _write_csv(path: Path, rows, header=("text", "label"), delimiter=",") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def texts_csv(tmp_path_factory) -> Path:
    return _write_csv(tmp_path_factory.mktemp("texts") / "texts.csv", _sentences())


def _train(data, out, bert, *extra, steps=4, strategy="two_phase", lr=3e-3):
    return main(["train", str(data), "--backbone", f"hf:{bert}", "--max-length", "32",
                 "--batch-size", "8", "--lr", str(lr), "--steps", str(steps), "--strategy", strategy,
                 "--out", str(out), "--quiet", "--val-fraction", "0.2", *extra])


def _rows(path: Path) -> list[dict]:
    return list(csv.DictReader(path.read_text(encoding="utf-8").splitlines()))


def _json_out(capsys):
    return json.loads(capsys.readouterr().out)


def _source_weights(bert: Path) -> dict[str, torch.Tensor]:
    return {f"backbone.model.{k}": v for k, v in load_file(str(bert / "model.safetensors")).items()}


# ---------------------------------------------------------------------------------- end to end

def test_two_phase_train_evaluate_predict(texts_csv, tiny_bert_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(texts_csv, run, tiny_bert_dir) == 0
    capsys.readouterr()
    for name in ("config.yaml", "model.safetensors", "metrics.json", "report.html", "splits.csv"):
        assert (run / name).is_file(), name
    m = json.loads((run / "metrics.json").read_text())
    assert m["n_train"] + m["n_val"] + m["n_test"] == N_TEXTS
    assert (m["n_val"], m["n_test"]) == (6, 6)  # stratified: 2 per class each
    assert m["skipped"] == []
    splits = _rows(run / "splits.csv")
    assert {r["split"] for r in splits} == {"train", "val", "test"}
    assert all(r["item"].startswith("texts.csv:") for r in splits)  # text items are file:line

    assert main(["evaluate", str(run), str(texts_csv), "--json"]) == 0
    ev = _json_out(capsys)
    assert ev["n"] == N_TEXTS and sum(map(sum, ev["confusion_matrix"])) == N_TEXTS

    # a file of texts: every row labelled once, and the labels agree with evaluate's accuracy
    assert main(["predict", str(run), str(texts_csv), "--json"]) == 0
    rows = _json_out(capsys)
    gold = [label for _, label in _sentences()]
    assert len(rows) == N_TEXTS
    assert sum(r["label"] == g for r, g in zip(rows, gold)) / N_TEXTS == pytest.approx(ev["accuracy"], abs=1e-12)

    # strings are texts, even one longer than a file name may be
    long_text = " ".join(["rain snow"] * 200)
    assert main(["predict", str(run), "cat dog bird", long_text, "--json", "--top-k", "3"]) == 0
    out = _json_out(capsys)
    assert [r["input"] for r in out] == ["cat dog bird", long_text]
    for r in out:
        assert r["label"] in CLASSES and len(r["top"]) == 3
        assert sum(t["probability"] for t in r["top"]) == pytest.approx(1.0, abs=1e-5)


# ----------------------------------------------------------------------------------------- LoRA

def _lora_expected_trainable(bert: Path, r: int, num_classes: int) -> int:
    """r*in + out*r for every query/key/value Linear of the source model, plus the linear head."""
    from transformers import AutoModel
    hf = AutoModel.from_pretrained(str(bert), local_files_only=True)
    lora = sum(r * m.in_features + m.out_features * r for n, m in hf.named_modules()
               if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in ("query", "key", "value"))
    assert lora == 2 * 3 * (r * 32 + 32 * r)  # 2 layers x (q, k, v) of 32 -> 32
    return lora + hf.config.hidden_size * num_classes + num_classes


def test_lora_trains_only_adapters_and_head(tiny_bert_dir):
    from transferkit.config import make_config
    from transferkit.engine.build import build_model
    from transferkit.strategies import freeze_stages, param_groups, plan_strategy
    cfg = make_config(backbone=f"hf:{tiny_bert_dir}", strategy="lora:r=4", max_length=32)
    model, _ = build_model(cfg, list(CLASSES))
    plan = plan_strategy(cfg.strategy, model.spec.num_stages)
    assert plan.phases[0].frozen == list(range(model.spec.num_stages))
    freeze_stages(model, plan.phases[0].frozen)  # freezes every stage; must not touch the adapters
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == _lora_expected_trainable(tiny_bert_dir, 4, len(CLASSES))
    assert all("lora_" in n or n.startswith("head.") for n in trainable)

    # the frozen, wrapped base weights are still in their stages; the adapters are in none
    staged = {f"backbone.{p}" for s in model.spec.stages for p in s.params}
    assert "backbone.model.encoder.layer.0.attention.self.query.base_layer.weight" in staged
    assert not any("lora_" in n for n in staged)
    groups = param_groups(model, plan.phases[0], lr=1e-3, weight_decay=0.01)
    by_group = {g["name"]: sum(p.numel() for p in g["params"]) for g in groups}
    assert set(by_group) == {"adapters.decay", "head.decay", "head.no_decay"}
    assert sum(by_group.values()) == sum(trainable.values())
    # the summary printed in metrics.json/report.html shows the adapters as trainable too
    from transferkit.strategies import parameter_summary
    rows = {r["stage"]: r for r in parameter_summary(model)}
    assert rows["adapters"]["trainable"] == by_group["adapters.decay"]
    assert sum(r["trainable"] for r in rows.values()) == sum(trainable.values())


def test_lora_on_an_image_backbone_is_an_error(tmp_path, capsys):
    from conftest import write_image_folder
    data = write_image_folder(tmp_path / "images", per_class=3)
    assert main(["train", str(data), "--backbone", "timm:test_resnet@random", "--image-size", "32",
                 "--steps", "1", "--strategy", "lora:r=4", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "LoRA" in err and "text encoder" in err


def test_lora_run_reloads_to_the_same_predictions(texts_csv, tiny_bert_dir, tmp_path, monkeypatch):
    import importlib

    from transferkit.data import read_items
    from transferkit.infer.loaders import eval_loader, make_dataset
    from transferkit.infer.predict import predict_probs
    from transferkit.engine.run import load_run

    sel_mod = importlib.import_module("transferkit.engine.selection")
    saved = {}
    real_save = sel_mod.save_model

    def keep_copy(path, model):  # the in-memory model, exactly as the run writes model.safetensors
        real_save(path, model)
        saved["model"] = copy.deepcopy(model).cpu()

    monkeypatch.setattr(sel_mod, "save_model", keep_copy)
    run = tmp_path / "run"
    assert _train(texts_csv, run, tiny_bert_dir, steps=6, strategy="lora:r=4,alpha=8", lr=3e-2) == 0

    items, _ = read_items(texts_csv, "text")

    def probs(model):
        loader = eval_loader(model, make_dataset(model, items, train=False, augment=False,
                                                 image_size=None, seed=0), 16)
        return torch.from_numpy(predict_probs(model, loader, "cpu")[0])

    reloaded, _ = load_run(run)
    before, after = probs(saved["model"]), probs(reloaded)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)

    # what trained (the final weights: the best checkpoint may be the head fit, before the adapters
    # moved): adapters and head moved, every source weight stayed where it was
    state, source = load_file(str(run / "last" / "model.safetensors")), _source_weights(tiny_bert_dir)
    lora_b = [k for k in state if "lora_B" in k]
    assert len(lora_b) == 6 and any(state[k].abs().max() > 0 for k in lora_b)  # B starts at zero
    for k, v in source.items():
        if k.startswith("backbone.model.pooler."):
            continue  # the pooler is removed: mean/cls pooling never uses it
        k2 = k.replace(".query.", ".query.base_layer.").replace(".key.", ".key.base_layer.") \
              .replace(".value.", ".value.base_layer.")
        assert torch.equal(state[k2], v), k2
    m = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= m["accuracy"] <= 1.0


def test_lora_with_l2sp_remaps_the_anchor(tiny_bert_dir):
    from transferkit.config import make_config
    from transferkit.engine.build import build_model, build_regularizers_for
    cfg = make_config(backbone=f"hf:{tiny_bert_dir}", strategy="lora:r=2", reg="l2sp:0.01,0.01")
    model, anchor = build_model(cfg, list(CLASSES))
    assert set(anchor) <= {n for n, _ in model.named_parameters()}
    assert "backbone.model.encoder.layer.1.attention.self.value.base_layer.weight" in anchor
    (reg,) = build_regularizers_for(cfg, model, anchor, "cpu")
    # the base weights are at their source values and B starts at zero: only the head term remains
    # (tests/test_l2sp_lora.py checks the adapters' part once B has moved)
    head_sq = sum((p ** 2).sum() for p in model.head.parameters())
    assert reg.penalty(model).item() == pytest.approx(0.5 * 0.01 * head_sq.item(), rel=1e-6)


def test_lora_l2sp_exact_resume(texts_csv, tiny_bert_dir, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    args = ("--reg", "l2sp:0.01,0.01")
    assert _train(texts_csv, whole, tiny_bert_dir, *args, steps=6, strategy="lora:r=4") == 0
    assert _train(texts_csv, parts, tiny_bert_dir, *args, "--stop-after", "3", steps=6, strategy="lora:r=4") == 0
    st = json.loads((parts / "last" / "state.json").read_text())
    assert st["param_groups"] == ["adapters.decay", "head.no_decay"]  # beta > 0: no decay on the head
    assert main(["train", "--resume", str(parts), "--quiet"]) == 0
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(parts / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


# ----------------------------------------------------------------------- partial and L2-SP

def test_partial_1_trains_the_last_layer_and_head(tiny_bert_dir, tmp_path):
    # TSV with other column names: --text-col / --label-col
    data = _write_csv(tmp_path / "texts.tsv", _sentences(), header=("sentence", "topic"), delimiter="\t")
    run = tmp_path / "run"
    assert _train(data, run, tiny_bert_dir, "--text-col", "sentence", "--label-col", "topic",
                  "--backbone-lr-mult", "1", strategy="partial:1") == 0
    m = json.loads((run / "metrics.json").read_text())
    rows = {r["stage"]: r for r in m["parameters"]}
    assert list(rows) == ["embeddings", "layer0", "layer1", "head"]
    assert rows["embeddings"]["trainable"] == rows["layer0"]["trainable"] == 0
    assert rows["layer1"]["trainable"] == rows["layer1"]["params"] > 0
    assert rows["head"]["trainable"] == rows["head"]["params"] == 32 * 3 + 3

    state, source = load_file(str(run / "model.safetensors")), _source_weights(tiny_bert_dir)
    moved = {k for k, v in source.items() if k in state and not torch.equal(state[k], v)}
    assert moved and all(".encoder.layer.1." in k for k in moved)


def test_l2sp_full_on_text(texts_csv, tiny_bert_dir, tmp_path):
    run = tmp_path / "run"
    assert _train(texts_csv, run, tiny_bert_dir, "--reg", "l2sp:0.01", steps=3, strategy="full") == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["n_test"] == 6 and all(r["trainable"] == r["params"] for r in m["parameters"])


# ------------------------------------------------------------------------------ data and shots

def test_jsonl_empty_texts_are_skipped_and_shots(tiny_bert_dir, tmp_path):
    data = tmp_path / "texts.jsonl"
    lines = [json.dumps({"text": t, "label": y}) for t, y in _sentences()]
    lines.insert(3, json.dumps({"text": "   ", "label": "animals"}))   # line 4
    lines.insert(7, json.dumps({"text": "", "label": "weather"}))      # line 8
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = tmp_path / "run"
    assert _train(data, run, tiny_bert_dir, "--shots", "3", strategy="linear_probe") == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["skipped"] == [f"{data}:4: empty text", f"{data}:8: empty text"]
    assert m["n_train"] == 3 * len(CLASSES) and (m["n_val"], m["n_test"]) == (6, 6)
    train = [r["label"] for r in _rows(run / "splits.csv") if r["split"] == "train"]
    assert sorted(train) == sorted(list(CLASSES) * 3)


def test_csv_keeps_newlines_inside_quoted_fields(tmp_path):
    from transferkit.data import read_items
    data = tmp_path / "t.csv"
    data.write_text('text,label\n"two\nlines",a\nplain,b\n', encoding="utf-8")
    items, skipped = read_items(data, "text")
    # a record is named by the line it starts on (where an editor should jump)
    assert [(e.x, e.label, e.ref) for e in items] == [("two\nlines", "a", "t.csv:2"), ("plain", "b", "t.csv:4")]
    assert skipped == []


@pytest.mark.parametrize("name,content,needles", [
    ("no_text.tsv", "sentence\tlabel\ncat dog\tanimals\nrain\tweather\n", ["no 'text' column", "--text-col"]),
    ("no_label.csv", "text,class\ncat dog,animals\nrain,weather\n", ["no 'label' column", "--label-col"]),
    ("latin1.csv", "text,label\ncat dog,animals\nrain,weather\ncaf\xe9 sun,weather\n".encode("latin-1"),
     ["latin1.csv:4:", "line 4", "UTF-8"]),
    ("broken.jsonl", '{"text": "cat", "label": "animals"}\n{"text": "rain", "label": \n',
     ["broken.jsonl:2:", "line 2"]),
    ("list.jsonl", '{"text": "cat", "label": "animals"}\n["rain", "weather"]\n', ["list.jsonl:2:", "not an object"]),
])
def test_bad_text_files(tiny_bert_dir, tmp_path, capsys, name, content, needles):
    data = tmp_path / name
    data.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    assert _train(data, tmp_path / "run", tiny_bert_dir, steps=1) == 2
    err = capsys.readouterr().err
    assert err.startswith("transferkit: error:")
    for needle in needles:
        assert needle in err, (needle, err)
