"""`--strategy contrastive` (transferkit/strategies/contrastive.py): the pairs it trains on, length-sorted
batches, a tiny run through the CLI that moves the encoder and then fits the head, an exact resume,
and the refusals (image backbones, --reg, bad options)."""

import json
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

from transferkit.cli import main
from transferkit.strategies import plan_strategy
from transferkit.strategies.contrastive import make_pairs, pair_batches, parse_options

from test_text import _source_weights, _train, texts_csv  # noqa: F401  (the module fixture)

LABELS = [0] * 4 + [1] * 4 + [2] * 3 + [3]  # a class with a single text has no positive pair


def test_pairs_are_capped_balanced_seeded_and_well_formed():
    pairs = make_pairs(LABELS, 30, seed=0)
    assert len(pairs) == 30
    kinds = Counter(t for _, _, t in pairs)
    assert kinds[1.0] > 0 and kinds[0.0] > 0 and abs(kinds[1.0] - kinds[0.0]) <= 3  # text 11 has no positive
    for i, j, t in pairs:
        assert i != j
        assert (LABELS[i] == LABELS[j]) == (t == 1.0)
    assert make_pairs(LABELS, 30, seed=0) == pairs
    assert make_pairs(LABELS, 30, seed=1) != pairs
    assert make_pairs(LABELS, 7, seed=0) == pairs[:7]  # a smaller cap is a prefix: the same draws
    # while unused pairs are easy to find, none repeats: 12 texts have 6+6+3 = 15 positive pairs
    first = make_pairs(LABELS, 12, seed=3)
    assert len({(min(i, j), max(i, j)) for i, j, _ in first}) == 12


def test_pairs_need_two_classes():
    with pytest.raises(ValueError, match="two classes"):
        make_pairs([0, 0, 0], 4, seed=0)


def test_batches_group_pairs_of_similar_length():
    lengths = [5, 500, 6, 480, 7, 490, 8, 470]
    pairs = [(0, 2, 1.0), (1, 3, 1.0), (4, 6, 1.0), (5, 7, 1.0)]
    batches = pair_batches(pairs, lengths, 2, seed=0)
    assert sorted(sorted(b) for b in batches) == [[0, 2], [1, 3]]  # short with short, long with long
    assert pair_batches(pairs, lengths, 2, seed=0) == batches


def test_options_and_plan():
    assert parse_options("") == {"pairs": None, "lr": 2e-5, "wise": 0.75}
    assert parse_options("pairs=64,lr=1e-4,wise=1") == {"pairs": 64, "lr": 1e-4, "wise": 1.0}
    for bad in ("pairs=x", "size=3", "pairs=0", "lr=-1", "wise=0", "wise=1.5", "wise=x"):
        with pytest.raises(ValueError):
            parse_options(bad)
    plan = plan_strategy("contrastive:pairs=64", 7)
    assert [p.name for p in plan.phases] == ["contrastive", "head"]
    assert plan.phases[0].frozen == [] and plan.phases[1].head_only
    assert plan.contrastive == {"pairs": 64, "lr": 2e-5, "wise": 0.75}


def _encoder_moved(run, bert) -> float:
    trained, source = load_file(str(run / "model.safetensors")), _source_weights(bert)
    return max((trained[k].float() - source[k].float()).abs().max().item() for k in source if k in trained)


def test_cli_trains_encoder_then_head(texts_csv, tiny_bert_dir, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "run"
    assert _train(texts_csv, run, tiny_bert_dir, strategy="contrastive:pairs=24,lr=1e-3") == 0
    capsys.readouterr()
    assert _encoder_moved(run, tiny_bert_dir) > 0
    m = json.loads((run / "metrics.json").read_text())
    assert 0 <= m["macro_f1"] <= 1
    state = json.loads((run / "last" / "state.json").read_text())["run_state"]
    assert state["done"] and state["global_step"] == 3  # 24 pairs / batch 8
    assert state["head_fit"]["C"] is not None  # the logistic head, fitted after the encoder moved


def test_kept_encoder_lies_between_the_source_and_the_trained_one(texts_csv, tiny_bert_dir, tmp_path, capsys):  # noqa: F811
    # the same pairs and steps (same seed); wise=1 keeps the trained encoder, wise=0.5 the midpoint
    trained, half = tmp_path / "w1", tmp_path / "w05"
    assert _train(texts_csv, trained, tiny_bert_dir, strategy="contrastive:pairs=24,lr=1e-3,wise=1") == 0
    assert _train(texts_csv, half, tiny_bert_dir, strategy="contrastive:pairs=24,lr=1e-3,wise=0.5") == 0
    capsys.readouterr()
    a, b, source = load_file(str(trained / "model.safetensors")), load_file(str(half / "model.safetensors")), \
        _source_weights(tiny_bert_dir)
    mixed = [k for k in source if k in a and a[k].is_floating_point()]
    assert mixed and max((a[k].float() - source[k].float()).abs().max().item() for k in mixed) > 1e-4
    for k in mixed:
        torch.testing.assert_close(b[k].float(), 0.5 * (a[k].float() + source[k].float()), atol=1e-6, rtol=1e-5)


def test_a_run_resumed_without_the_source_copy_keeps_the_trained_encoder(texts_csv, tiny_bert_dir,  # noqa: F811
                                                                        tmp_path, capsys):
    # a run begun before contrastive kept a copy of the source encoder ends as it would have then
    strategy = "contrastive:pairs=32,lr=1e-3"
    whole, part = tmp_path / "w1", tmp_path / "part"
    assert _train(texts_csv, whole, tiny_bert_dir, strategy=strategy + ",wise=1") == 0
    assert _train(texts_csv, part, tiny_bert_dir, "--stop-after", "2", strategy=strategy) == 0
    (part / "contrastive_start.safetensors").unlink()
    capsys.readouterr()
    assert main(["train", "--resume", str(part)]) == 0
    assert "no copy of the source encoder" in capsys.readouterr().out
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_is_exact(texts_csv, tiny_bert_dir, tmp_path, capsys):  # noqa: F811
    whole, part = tmp_path / "whole", tmp_path / "part"
    strategy = "contrastive:pairs=32,lr=1e-3"
    assert _train(texts_csv, whole, tiny_bert_dir, strategy=strategy) == 0
    assert _train(texts_csv, part, tiny_bert_dir, "--stop-after", "2", strategy=strategy) == 0
    assert main(["train", "--resume", str(part), "--quiet"]) == 0
    capsys.readouterr()
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_refuses_image_backbones_and_regularizers(texts_csv, tiny_bert_dir, image_folder, tmp_path, capsys):  # noqa: F811
    assert main(["train", str(image_folder), "--backbone", "bundled:efficientnet_lite0", "--strategy",
                 "contrastive", "--out", str(tmp_path / "img"), "--quiet"]) != 0
    assert "text encoders" in capsys.readouterr().err
    assert not (tmp_path / "img").exists()
    assert _train(texts_csv, tmp_path / "reg", tiny_bert_dir, "--reg", "l2sp:0.01", strategy="contrastive") != 0
    assert "takes no --reg" in capsys.readouterr().err


def test_auto_cross_validates_contrastive_for_text_and_trains_it_when_it_wins(texts_csv, tiny_bert_dir,  # noqa: F811
                                                                              tmp_path, monkeypatch, capsys):
    from transferkit.choose import cv
    real = cv.cv_finetune
    seen = []

    def contrastive_best(cfg, task, root, *, strategy="two_phase", **kw):  # the real folds, then a verdict
        out = real(cfg, task, root, strategy=strategy, **kw)
        seen.append((strategy, len(out["table"])))
        for r in out["table"]:
            r["accuracy"], r["accuracy_se"] = (0.9, 0.05) if strategy == "contrastive" else (0.5, 0.05)
        return out
    monkeypatch.setattr(cv, "cv_finetune", contrastive_best)
    run = tmp_path / "auto"
    assert main(["train", str(texts_csv), "--backbone", f"hf:{tiny_bert_dir}", "--max-length", "32",
                 "--batch-size", "8", "--steps", "3", "--shots", "5", "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    # LP-FT at every WiSE weight, then contrastive fine-tuning (one row: its endpoint), on the same folds
    assert seen == [("two_phase", 5), ("contrastive", 1)]
    choice = json.loads((run / "auto" / "choice.json").read_text())
    assert choice["strategy"] == "contrastive" and choice["contrastive_cv"]["accuracy"] == 0.9
    assert choice["compared"] == 6
    # the folds keep their weights but not contrastive's copy of the source encoder (tens of MB each)
    assert sorted(p.name for p in (run / "auto" / "cv_contrastive").glob("fold*/*.safetensors")) == ["model.safetensors"] * 3
    m = json.loads((run / "metrics.json").read_text())
    assert m["choice"]["strategy"] == "contrastive"
    assert _encoder_moved(run, tiny_bert_dir) > 0  # the final run trained the encoder on pairs
    # the report's table of auto's candidates has its row, marked as chosen
    assert "<td>contrastive</td><td>0.900</td>" in (run / "report.html").read_text()
