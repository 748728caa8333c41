"""`transferkit export` through the real entry point on a tiny timm model and a tiny BERT: every
format is written, reloaded by the tool its users load it with, and matches the run's logits; the
timm and HF folders load in plain timm / transformers here too; a tampered export fails the check."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from transferkit.cli import main
from transferkit.engine.run import load_run

TINY = "timm:test_resnet@random"


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    from conftest import write_image_folder
    root = tmp_path_factory.mktemp("export_img")
    data = write_image_folder(root / "images")
    run = root / "run"
    assert main(["train", str(data), "--backbone", TINY, "--image-size", "32", "--batch-size", "8",
                 "--steps", "3", "--strategy", "full", "--out", str(run), "--quiet"]) == 0
    return run, data


@pytest.fixture(scope="module")
def text_runs(tmp_path_factory, tiny_bert_dir):
    from test_text import _sentences, _train, _write_csv
    root = tmp_path_factory.mktemp("export_txt")
    data = _write_csv(root / "texts.csv", _sentences())
    plain, lora = root / "two_phase", root / "lora"
    assert _train(data, plain, tiny_bert_dir, steps=3) == 0
    assert _train(data, lora, tiny_bert_dir, steps=6, strategy="lora:r=4,alpha=8", lr=3e-2) == 0
    _final_weights_as_best(lora)
    return plain, lora, data


def _final_weights_as_best(run: Path) -> None:
    """With 6 steps the best checkpoint by validation is often the head fit, taken before the adapters
    moved (LoRA's B starts at zero); make the final weights the run's model so that merging has
    something to merge (written as the run writes it, checksum included)."""
    from safetensors import safe_open
    with safe_open(str(run / "model.safetensors"), framework="pt") as f:
        meta = f.metadata()
    final = load_file(str(run / "last" / "model.safetensors"))
    assert max(v.abs().max() for k, v in final.items() if "lora_B" in k) > 1e-3
    from transferkit.store.checkpoint import atomic_save_tensors
    atomic_save_tensors(run / "model.safetensors", final, meta)  # with a fresh checksum


def _export(run, fmt, out, capsys, *extra):
    assert main(["export", str(run), "--format", fmt, "--out", str(out), "--json", *extra]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads(printed[printed.index("{"):])
    assert f"parity {fmt}:" in printed and ": OK" in printed
    assert manifest == json.loads((out / "export.json").read_text())
    par = manifest["parity"]
    assert par["ok"] and par["max_abs_diff"] <= 1e-4 and par["top1_agree"] == par["n_inputs"]
    return manifest


def _test_images(run: Path, data: Path) -> list[Path]:
    rows = [line.split(",") for line in (run / "splits.csv").read_text().splitlines()[1:]]
    return [data / item for split, item, _ in rows if split == "test"]


def _image_batch(run, data):
    from transferkit.engine.predictor import Predictor
    p = Predictor(run)
    from transferkit.data import open_rgb
    return torch.stack([p.transform(open_rgb(str(f))) for f in _test_images(run, data)]), p.model


def test_image_run_exports_to_timm_onnx_torchscript(image_run, tmp_path, capsys):
    import onnxruntime as ort
    import timm
    run, data = image_run
    x, model = _image_batch(run, data)
    with torch.no_grad():
        ref = model.cpu()(x).numpy()
    n_test = len(x)

    m = _export(run, "timm", tmp_path / "timm", capsys)
    assert m["parity"]["n_inputs"] == n_test + 1  # the test split, and its first item alone
    assert m["classes"] == ["blue", "green", "red"] and m["preprocess"]["size"] == 32
    cfg = json.loads((tmp_path / "timm" / "config.json").read_text())
    assert cfg["architecture"] == "test_resnet" and cfg["label_names"] == ["blue", "green", "red"]
    assert cfg["pretrained_cfg"]["input_size"] == [3, 32, 32]
    keys = load_file(str(tmp_path / "timm" / "model.safetensors"))
    assert "fc.weight" in keys and not any(k.startswith(("backbone.", "head.")) for k in keys)
    # plain timm, both ways a timm user loads a folder / a checkpoint
    by_dir = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    by_ckpt = timm.create_model("test_resnet", num_classes=3,
                                checkpoint_path=str(tmp_path / "timm" / "model.safetensors")).eval()
    assert by_dir.pretrained_cfg["label_names"] == ["blue", "green", "red"]
    with torch.no_grad():
        for tm in (by_dir, by_ckpt):
            assert np.abs(tm(x).numpy() - ref).max() <= 1e-5

    m = _export(run, "onnx", tmp_path / "onnx", capsys)
    assert m["inputs"] == ["pixel_values"]
    sess = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (x[:1], x):  # the batch axis is dynamic
        got = sess.run(["logits"], {"pixel_values": batch.numpy()})[0]
        assert got.shape == (len(batch), 3) and np.abs(got - ref[:len(batch)]).max() <= 1e-4

    _export(run, "torchscript", tmp_path / "ts", capsys)
    ts = torch.jit.load(str(tmp_path / "ts" / "model.pt"))
    with torch.no_grad():
        assert np.abs(ts(x).numpy() - ref).max() <= 1e-5


def _onnx_meta(path: Path) -> dict:
    import onnx
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_onnx_export_carries_classes_and_preprocessing_in_its_metadata(image_run, tmp_path, capsys,
                                                                       monkeypatch):
    import onnxruntime as ort

    import transferkit
    from transferkit.ship import graph_formats
    run, _ = image_run
    seen = {}
    real = graph_formats.load_onnx

    def load_and_look(model, out, names):  # what the parity check reloads
        seen.update(_onnx_meta(out / "model.onnx"))
        return real(model, out, names)
    monkeypatch.setattr(graph_formats, "load_onnx", load_and_look)
    m = _export(run, "onnx", tmp_path / "onnx", capsys)
    meta = _onnx_meta(tmp_path / "onnx" / "model.onnx")
    assert seen == meta  # parity ran on the file as shipped, metadata included
    run_model, _ = load_run(run)
    assert json.loads(meta["classes"]) == list(run_model.class_names) == m["classes"] == ["blue", "green", "red"]
    assert meta["task"] == "classify" and meta["modality"] == "image"
    assert json.loads(meta["input_size"]) == 32 and json.loads(meta["channels"]) == 3
    assert json.loads(meta["mean"]) == m["preprocess"]["mean"] and json.loads(meta["std"]) == m["preprocess"]["std"]
    assert json.loads(meta["source"])["id"] == TINY and meta["transferkit_version"] == transferkit.__version__
    sess = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_modelmeta().custom_metadata_map == meta


def _text_reference(run):
    """(three texts, their tokenised batch, the run's logits on them)."""
    model, _ = load_run(run)
    texts = ["cat dog and the bird", "rain and snow", "red green blue black white"]
    enc = model.spec.preprocess.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = model.cpu()(dict(enc)).numpy()
    return texts, enc, ref


def test_text_run_exports_to_hf_onnx_torchscript(text_runs, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import transferkit.ship.hf_model  # noqa: F401 - registers the exported model type
    plain, _, _ = text_runs
    texts, enc, ref = _text_reference(plain)

    _export(plain, "hf", tmp_path / "hf", capsys)
    hf = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "hf")).eval()
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert hf.config.id2label == {0: "animals", 1: "colours", 2: "weather"}
    assert hf.config.label2id == {"animals": 0, "colours": 1, "weather": 2}
    assert hf.config.pooling == "cls"  # the tiny BERT has no sentence-transformers pooling config
    with torch.no_grad():
        got = hf(**tok(texts, padding=True, return_tensors="pt")).logits.numpy()
    assert np.abs(got - ref).max() <= 1e-5

    m = _export(plain, "onnx", tmp_path / "onnx", capsys)
    assert m["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    import onnxruntime as ort
    sess = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {k: v.numpy() for k, v in enc.items()})[0]  # batch 3, a new length
    assert np.abs(got - ref).max() <= 1e-4

    _export(plain, "torchscript", tmp_path / "ts", capsys)


def test_lora_run_exports_merged_and_as_a_separate_adapter(text_runs, tmp_path, capsys, tiny_bert_dir):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    import transferkit.ship.hf_model  # noqa: F401
    _, lora, _ = text_runs
    source = load_file(str(tiny_bert_dir / "model.safetensors"))
    q = "encoder.layer.0.attention.self.query.weight"

    m = _export(lora, "hf", tmp_path / "merged", capsys)
    assert m["lora"] == "merged" and not (tmp_path / "merged" / "adapter").exists()
    merged = load_file(str(tmp_path / "merged" / "model.safetensors"))
    assert not any("lora_" in k for k in merged)
    # the adapters moved the weights, so identical logits are not a trivial result
    assert (merged[f"encoder.model.{q}"] - source[q]).abs().max() > 1e-3

    m = _export(lora, "hf", tmp_path / "apart", capsys, "--no-merge")
    assert m["lora"] == "adapter"
    base = load_file(str(tmp_path / "apart" / "model.safetensors"))
    assert torch.equal(base[f"encoder.model.{q}"], source[q])  # the source weights, untouched
    adapter_cfg = json.loads((tmp_path / "apart" / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 4 and adapter_cfg["lora_alpha"] == 8
    model = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "apart")),
        str(tmp_path / "apart" / "adapter")).eval()
    run_model, _ = load_run(lora)
    enc = run_model.spec.preprocess.tokenizer(["sun and wind", "a fish"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert np.abs(model(**enc).logits.numpy() - run_model.cpu()(dict(enc)).numpy()).max() <= 1e-5


def test_a_tampered_export_fails_the_parity_check(image_run, tmp_path, capsys, monkeypatch):
    from transferkit.ship import timm_format
    real = timm_format.write_timm

    def write_then_tamper(model, out, pre, *rest):
        files = real(model, out, pre, *rest)
        state = load_file(str(out / "model.safetensors"))
        state["fc.bias"] = state["fc.bias"] + torch.tensor([0.0, 0.0, 0.01])
        save_file(state, str(out / "model.safetensors"))
        return files
    monkeypatch.setattr(timm_format, "write_timm", write_then_tamper)
    run, _ = image_run
    assert main(["export", str(run), "--format", "timm", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "max |logit diff| 1.00e-02" in err and "FAILED" in err


def test_export_refuses_bad_requests(image_run, tmp_path, capsys):
    run, _ = image_run
    assert main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "h")]) == 2
    assert "--format hf exports text runs" in capsys.readouterr().err
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    assert main(["export", str(run), "--format", "onnx", "--out", str(theirs)]) == 2
    assert "transferkit did not write" in capsys.readouterr().err
    assert (theirs / "notes.txt").read_text() == "mine" and len(list(theirs.iterdir())) == 1
    assert main(["export", str(tmp_path / "nope"), "--format", "onnx", "--out", str(tmp_path / "o")]) == 2
    assert "not a finished transferkit run" in capsys.readouterr().err


def test_hf_export_loads_in_plain_transformers_without_transferkit(text_runs, tmp_path, capsys):
    # the folder carries its model code (auto_map): a user without transferkit loads it with
    # trust_remote_code=True and gets the run's logits
    import subprocess
    import sys
    plain, _, _ = text_runs
    texts, _, ref = _text_reference(plain)
    _export(plain, "hf", tmp_path / "hf", capsys)
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["auto_map"]["AutoModelForSequenceClassification"].startswith("modeling_transferkit.")
    np.save(tmp_path / "ref.npy", ref)
    script = f"""
import importlib.abc, sys
class NoTransferkit(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "transferkit" or name.startswith("transferkit."):
            raise ImportError("transferkit is not installed here")
sys.meta_path.insert(0, NoTransferkit())
import numpy as np, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
folder = {str(tmp_path / "hf")!r}
model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
tok = AutoTokenizer.from_pretrained(folder)
with torch.no_grad():
    got = model(**tok({texts!r}, padding=True, return_tensors="pt")).logits.numpy()
assert "transferkit" not in sys.modules
diff = float(np.abs(got - np.load({str(tmp_path / "ref.npy")!r})).max())
print("max abs diff", diff)
assert diff <= 1e-5, diff
"""
    env = {**__import__("os").environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "max abs diff" in done.stdout


def test_hf_export_has_a_model_card_and_the_docs_snippet_runs_without_a_prompt(text_runs, tmp_path, capsys):
    """README.md: front matter the Hub reads and the run's metrics, data and source; the loading code
    of docs/how-to/export.md (the card's, verbatim) runs with stdin closed (a trust_remote_code prompt
    would fail it) and gives `transferkit predict`'s label."""
    import os
    import subprocess
    import sys

    import yaml
    from huggingface_hub import ModelCard

    from transferkit.ship.hf_card import LOAD_SNIPPET, _hub_id
    plain, _, _ = text_runs
    out = tmp_path / "exported" / "hf"  # the snippet's own path, run from tmp_path
    m = _export(plain, "hf", out, capsys)
    assert "README.md" in m["files"] and "README.md" in m["written"]
    metrics = json.loads((plain / "metrics.json").read_text())
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["library_name"] == "transformers" and front["pipeline_tag"] == "text-classification"
    assert {"transferkit", "custom_code"} <= set(front["tags"]) and "base_model" not in front  # a local source
    results = {r["type"]: r["value"] for r in front["model-index"][0]["results"][0]["metrics"]}
    assert results == {"accuracy": metrics["accuracy"], "f1": metrics["macro_f1"]}
    hub = ModelCard.load(out / "README.md")  # the Hub's own parser of the front matter
    assert {r.metric_type: r.metric_value for r in hub.data.eval_results} == results
    assert f"| accuracy | {metrics['accuracy']:.4f} |" in card and f"| macro-F1 | {metrics['macro_f1']:.4f} |" in card
    assert (f"{metrics['n_train']} training, {metrics['n_val']} validation and {metrics['n_test']} test examples"
            in card)
    assert all(f"`{c}`" in card for c in m["classes"]) and m["source"]["id"] in card
    assert "```python\n" + LOAD_SNIPPET + "```" in card
    assert "```python\n" + LOAD_SNIPPET + "```" in (Path(__file__).parents[1] / "docs/how-to/export.md").read_text()
    assert _hub_id({"id": "hf:sentence-transformers/all-MiniLM-L6-v2"}) == "sentence-transformers/all-MiniLM-L6-v2"
    assert _hub_id({"id": "hf:bert-base-uncased", "pretrained": False}) is None

    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-c", LOAD_SNIPPET], capture_output=True, text=True, env=env,
                          cwd=str(tmp_path), stdin=subprocess.DEVNULL, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # transformers asks on stdout and, reading EOF, may go on loading: the question itself fails the test
    # (the earlier docs snippet, without trust_remote_code on the tokenizer, asked it)
    assert "custom code" not in done.stdout + done.stderr, done.stdout + done.stderr[-2000:]
    capsys.readouterr()
    assert main(["predict", str(plain), "the text to classify", "--json"]) == 0
    printed = capsys.readouterr().out
    want = json.loads(printed[printed.index("["):])[0]["label"]
    assert done.stdout.strip().splitlines()[-1] == want
