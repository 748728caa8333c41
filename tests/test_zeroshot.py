"""Text to image: the DeViSE loss, zero-shot on held-out classes, class-name priors, bridge/predict/
train from the CLI, and clip: sources (a tiny random CLIPModel; the hub is never reached)."""

import csv
import json

import pytest
import timm
import torch
from safetensors.torch import save_file

from transferkit.cli.main import main
from transferkit.engine.headfit import fit_head
from transferkit.zeroshot import (BridgeConfig, LinearBridge, fit_bridge, fit_prior_scale, hinge_rank_loss,
                                  read_class_text, softmax_loss)
from transferkit.zeroshot.space import JointSpace

from conftest import write_image_folder


def test_hinge_rank_loss_matches_devise_eq1_by_hand():
    scores = torch.tensor([[0.5, 0.3, 0.45],    # label 0: j=1 -> max(0, .1-.5+.3)=0, j=2 -> .05
                           [0.2, 0.1, 0.0]])    # label 1: j=0 -> .1-.1+.2=.2, j=2 -> .1-.1+0=0
    labels = torch.tensor([0, 1])
    assert hinge_rank_loss(scores, labels, margin=0.1).item() == pytest.approx((0.05 + 0.2) / 2, abs=1e-6)
    assert hinge_rank_loss(scores, labels, margin=0.0).item() == pytest.approx(0.1 / 2, abs=1e-6)


def test_softmax_loss_by_hand():
    img = torch.tensor([[3.0, 4.0]])             # normalised: (0.6, 0.8)
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # cosines 0.6, 0.8 at temperature 0.5 -> logits 1.2, 1.6; label 0
    expected = -1.2 + torch.logsumexp(torch.tensor([1.2, 1.6]), 0).item()
    assert softmax_loss(img, text, torch.tensor([0]), temperature=0.5).item() == pytest.approx(expected, abs=1e-6)


def test_bridge_as_head_gives_the_same_scores():
    torch.manual_seed(0)
    b = LinearBridge(6, 4)
    b.mu.copy_(torch.randn(6))
    b.sigma.copy_(torch.rand(6) + 0.5)
    feats, text = torch.randn(5, 6), torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    w, bias = b.as_head(text)
    assert torch.allclose(feats @ w.T + bias, b(feats) @ text.T, atol=1e-5)


def _toy(seed=0, n_texts=40, d_text=8, d_img=24, per=6, noise=0.05):
    """Texts are random unit vectors; an image of text t is A t + noise for one fixed A: the map from
    images back to texts is linear and the same for every text, so it carries over to unseen ones."""
    g = torch.Generator().manual_seed(seed)
    text = torch.nn.functional.normalize(torch.randn(n_texts, d_text, generator=g), dim=-1)
    a = torch.randn(d_img, d_text, generator=g)
    y = torch.arange(n_texts).repeat_interleave(per)
    x = text[y] @ a.T + noise * torch.randn(len(y), d_img, generator=g)
    return x, y, text


@pytest.mark.parametrize("loss", ["hinge", "softmax", "ridge", "eszsl"])
def test_zero_shot_on_held_out_texts_beats_chance_clearly(loss):
    x, y, text = _toy()
    seen = y < 32                                # 32 texts train the bridge, 8 are never seen
    bridge, curve = fit_bridge(x[seen], y[seen], text[:32], BridgeConfig(loss=loss, steps=300, lr=1e-2))
    assert (curve[-1] < curve[0]) if loss in ("hinge", "softmax") else curve == []
    space = JointSpace("toy", bridge, lambda t: text[[int(s) for s in t]], "toy")
    held = ~seen
    scores = space.scores(x[held], [str(i) for i in range(32, 40)])
    acc = (scores.argmax(1) == (y[held] - 32)).float().mean().item()
    assert acc > 0.6, acc                        # chance is 1/8 = 0.125


def test_name_prior_pulls_a_one_shot_head_toward_the_text_head():
    x, y, text = _toy(per=4)
    bridge, _ = fit_bridge(x[y < 32], y[y < 32], text[:32], BridgeConfig(steps=300, lr=1e-2))
    held = [32, 33, 34, 35]
    w, b = bridge.as_head(text[held])
    prior = {"weight": w, "bias": b}
    idx = torch.cat([torch.nonzero(y == c)[0] for c in held])       # one label per class
    xs, ys = x[idx], torch.arange(4)
    scaled = fit_prior_scale(prior, xs, ys)
    assert scaled["scale"] > 0.01 and torch.allclose(scaled["weight"], w * scaled["scale"])
    head = torch.nn.Linear(x.shape[1], 4)
    info = fit_head(head, xs, ys, prior=prior, cs=(1e-4,))           # a very strong pull: stays at the prior
    assert info["prior_scale"] == scaled["scale"]
    assert torch.allclose(head.weight, scaled["weight"], atol=0.05 * scaled["weight"].abs().max().item())
    test = torch.cat([torch.nonzero(y == c)[1:] for c in held]).flatten()
    yt = torch.tensor([held.index(int(c)) for c in y[test]])
    assert (head(x[test]).argmax(1) == yt).float().mean().item() > 0.6


def test_class_text_reader_names_the_file_and_the_missing_class(tmp_path):
    f = tmp_path / "classes.csv"
    f.write_text("class,text\nred,a red thing\nblue,a blue thing\n")
    assert read_class_text(f, ["red", "blue"]) == {"red": "a red thing", "blue": "a blue thing"}
    with pytest.raises(ValueError, match=r"classes\.csv: no description for class 'green'"):
        read_class_text(f, ["red", "green", "blue"])
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"red": "red", "blue": ""}))
    with pytest.raises(ValueError, match="class 'blue' has an empty description"):
        read_class_text(j)


# ------------------------------------------------------------------------------------ CLI end to end

@pytest.fixture
def tiny_source(tmp_path):
    weights = tmp_path / "src.safetensors"
    torch.manual_seed(0)
    src = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(weights),
              metadata={"arch": "test_resnet"})
    return f"file:{weights}"


def _pairs_csv(root, images):
    path = root / "pairs.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "text"])
        for d in sorted(images.iterdir()):
            for img in sorted(d.iterdir()):
                w.writerow([str(img), f"{d.name} sky"])
    return path


def test_cli_bridge_zero_shot_predict_and_train_with_class_text(tmp_path, tiny_source, tiny_bert_dir, capsys):
    images = write_image_folder(tmp_path / "images", per_class=6)
    pairs = _pairs_csv(tmp_path, images)
    out = tmp_path / "bridge"
    capsys.readouterr()
    assert main(["bridge", str(pairs), "--out", str(out), "--backbone", tiny_source, "--text-encoder",
                 f"hf:{tiny_bert_dir}", "--alpha", "-1", "--quiet"]) == 2   # refused before any work
    assert "--alpha) must be a finite number >= 0" in capsys.readouterr().err and not out.exists()
    assert main(["bridge", str(pairs), "--out", str(out), "--backbone", tiny_source, "--text-encoder",
                 f"hf:{tiny_bert_dir}", "--beta", "2", "--image-size", "32", "--quiet"]) == 0
    meta = json.loads((out / "bridge.json").read_text())
    assert meta["pairs"] == 18 and meta["texts"] == 3 and meta["feature_dim"] > 0 and meta["text_dim"] == 32
    assert meta["config"]["loss"] == "eszsl" and meta["config"]["alpha"] == 100.0 and meta["config"]["beta"] == 2.0
    assert meta["loss_curve"] == []
    assert (out / "bridge.safetensors").is_file()
    hinge = tmp_path / "bridge_hinge"                                  # DeViSE's map stays one flag away
    assert main(["bridge", str(pairs), "--out", str(hinge), "--backbone", tiny_source, "--text-encoder",
                 f"hf:{tiny_bert_dir}", "--loss", "hinge", "--steps", "50", "--image-size", "32", "--quiet"]) == 0
    hmeta = json.loads((hinge / "bridge.json").read_text())
    assert hmeta["config"]["loss"] == "hinge" and hmeta["loss_curve"][-1] <= hmeta["loss_curve"][0]

    capsys.readouterr()
    assert main(["predict", "--zero-shot", str(out), "--classes", "red,green,blue", "--top-k", "3",
                 "--json", str(images / "red")]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 6 and all(r["label"] in ("red", "green", "blue") for r in rows)
    assert all(abs(sum(t["probability"] for t in r["top"]) - 1.0) < 1e-3 for r in rows)

    ct = tmp_path / "classes.csv"
    ct.write_text("class,text\nred,red sky\ngreen,green tree\nblue,blue sea\n")
    run = tmp_path / "run"
    assert main(["train", str(images), "--backbone", tiny_source, "--class-text", str(ct), "--bridge", str(out),
                 "--strategy", "linear_probe", "--image-size", "32", "--shots", "2", "--out", str(run),
                 "--quiet"]) == 0
    state = json.loads((run / "last" / "state.json").read_text())
    assert state["run_state"]["head_fit"]["prior_scale"] > 0
    assert json.loads((run / "metrics.json").read_text())["n_train"] == 6
    capsys.readouterr()
    assert main(["predict", str(run), str(images / "blue")]) == 0      # the run predicts without the bridge
    assert len(capsys.readouterr().out.strip().splitlines()) == 6

    bad = tmp_path / "bad.csv"
    bad.write_text("class,text\nred,red sky\nblue,blue sea\n")
    capsys.readouterr()
    assert main(["train", str(images), "--backbone", tiny_source, "--class-text", str(bad), "--bridge", str(out),
                 "--out", str(tmp_path / "run2"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "bad.csv" in err and "'green'" in err and not (tmp_path / "run2").exists()


def test_class_text_without_a_bridge_says_what_is_needed(tmp_path, tiny_source, capsys):
    images = write_image_folder(tmp_path / "images", per_class=4)
    ct = tmp_path / "c.json"
    ct.write_text(json.dumps({"red": "red", "green": "green", "blue": "blue"}))
    assert main(["train", str(images), "--backbone", tiny_source, "--class-text", str(ct),
                 "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "--bridge DIR" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ clip:

@pytest.fixture
def tiny_clip_dir(tmp_path, tiny_bert_dir):
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel
    tok = AutoTokenizer.from_pretrained(str(tiny_bert_dir))
    cfg = CLIPConfig(text_config=dict(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32,
                                      eos_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id,
                                      pad_token_id=tok.pad_token_id),
                     vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, image_size=32, patch_size=8),
                     projection_dim=8)
    torch.manual_seed(0)
    d = tmp_path / "tiny_clip"
    CLIPModel(cfg).save_pretrained(str(d))
    tok.save_pretrained(str(d))
    return d


def test_clip_source_zero_shot_and_name_prior(tmp_path, tiny_clip_dir, capsys):
    from transferkit.models import load_backbone
    bb = load_backbone(f"clip:{tiny_clip_dir}")
    assert bb.modality == "image" and bb.feature_dim == 16 and bb.joint is not None and bb.num_stages == 3
    emb = bb.joint.embed_texts(["red sky", "blue sea"])
    assert emb.shape == (2, 8) and torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    images = write_image_folder(tmp_path / "images", per_class=4)
    capsys.readouterr()
    assert main(["predict", "--zero-shot", f"clip:{tiny_clip_dir}", "--classes", "red,green,blue", "--json",
                 str(images / "green")]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 4
    ct = tmp_path / "c.json"
    ct.write_text(json.dumps({"red": "red", "green": "green", "blue": "blue"}))
    run = tmp_path / "run"
    assert main(["train", str(images), "--backbone", f"clip:{tiny_clip_dir}", "--class-text", str(ct),
                 "--strategy", "linear_probe", "--out", str(run), "--quiet"]) == 0
    assert json.loads((run / "last" / "state.json").read_text())["run_state"]["head_fit"]["prior_scale"] > 0


def test_clip_hub_id_offline_is_one_clear_error(capsys):
    assert main(["predict", "--zero-shot", "clip:openai/clip-vit-base-patch32", "--classes", "a,b",
                 "x.png"]) == 2
    err = capsys.readouterr().err
    assert "clip:openai/clip-vit-base-patch32" in err and "bundled:" in err
