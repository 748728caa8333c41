"""Closed-form bridges (ridge, ESZSL) on hand-computed tensors, and the class-disjoint cross-validation
that chooses a bridge's settings without the classes it will be asked about."""

import pytest
import torch

from transferkit.zeroshot import BridgeConfig, fit_bridge
from transferkit.zeroshot import select as sel
from transferkit.zeroshot.ridge import fit_closed_form, ridge_weight, text_side_factor


def test_ridge_weight_by_hand():
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    # s = mean |z|^2 = (1 + 4) / 2 = 2.5; alpha 0.4 -> penalty 1; primal (Z^T Z + I)^-1 Z^T T = diag(1/2, 2/5)
    m = ridge_weight(z, t, alpha=0.4)
    assert torch.allclose(m, torch.tensor([[0.5, 0.0], [0.0, 0.4]], dtype=torch.float64), atol=1e-12)
    # a huge penalty shrinks toward (Z^T T) / penalty: the direction of the cross-covariance
    big = ridge_weight(z, t, alpha=1e6)
    assert torch.allclose(big / big.abs().max(), torch.tensor([[0.5, 0.0], [0.0, 1.0]], dtype=torch.float64),
                          atol=1e-5)


def test_eszsl_text_side_factor_by_hand():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    # S^T S = diag(2, 1); beta K / E = (2/3) * 3 / 2 = 1 -> inverse of diag(3, 2)
    f = text_side_factor(s, beta=2 / 3)
    assert torch.allclose(f, torch.diag(torch.tensor([1 / 3, 1 / 2], dtype=torch.float64)), atol=1e-12)


def test_closed_form_bridge_is_the_ridge_map_on_standardised_features():
    feats = torch.tensor([[1.0, 10.0], [3.0, 14.0], [2.0, 9.0]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([0, 1, 1])
    b = fit_closed_form(feats, targets, text, "ridge", alpha=0.5)
    assert torch.allclose(b.mu, torch.tensor([2.0, 11.0]))
    assert torch.allclose(b.sigma, torch.tensor([1.0, 7.0 ** 0.5]))
    z = (feats.double() - b.mu.double()) / b.sigma.double()
    m = ridge_weight(z, text.double()[targets], 0.5)
    assert torch.allclose(b(feats).double(), z @ m.T, atol=1e-5)
    e = fit_closed_form(feats, targets, text, "eszsl", alpha=0.5, beta=3.0)
    assert torch.allclose(e.proj.weight.double(), text_side_factor(text, 3.0) @ m, atol=1e-5)
    bridge, curve = fit_bridge(feats, targets, text, BridgeConfig(loss="ridge", alpha=0.5))
    assert curve == [] and torch.allclose(bridge.proj.weight, b.proj.weight)
    with pytest.raises(ValueError, match="ridge or eszsl"):
        fit_closed_form(feats, targets, text, "lasso")
    with pytest.raises(ValueError, match=r"alpha \(--alpha\) must be a finite number >= 0, got -1"):
        fit_closed_form(feats, targets, text, "ridge", alpha=-1.0)
    with pytest.raises(ValueError, match=r"beta \(--beta\) must be a finite number >= 0, got nan"):
        BridgeConfig(beta=float("nan"))


def test_class_folds_are_disjoint_and_cover_every_class():
    groups = [f"c{i % 11}" for i in range(50)]
    folds = sel.class_folds(groups, 5, seed=3)
    flat = [g for f in folds for g in f]
    assert sorted(flat) == sorted(set(groups)) and len(flat) == len(set(flat)) == 11
    assert [len(f) for f in folds] == [3, 2, 2, 2, 2]
    with pytest.raises(ValueError, match="at least 2 classes per fold"):
        sel.class_folds(groups[:5], 5)


def test_cross_validation_never_fits_on_the_fold_it_scores(monkeypatch):
    """Every fit inside the CV sees neither an image nor a text of the classes it is scored on."""
    g = torch.Generator().manual_seed(0)
    groups = [f"c{i // 4}" for i in range(40)]                  # 10 classes, 4 images each
    text_emb = torch.nn.functional.normalize(torch.randn(20, 6, generator=g), dim=-1)
    targets = torch.tensor([2 * (i // 4) + i % 2 for i in range(40)])   # 2 texts per class
    feats = torch.randn(40, 8, generator=g)
    feats[:, 0] = torch.arange(40.0)                             # column 0 names the image
    seen = []
    real_fit = sel.fit_bridge

    def spy(f, t, e, cfg):
        seen.append(({int(v) for v in f[:, 0]}, {tuple(r.tolist()) for r in e}))
        return real_fit(f, t, e, cfg)

    monkeypatch.setattr(sel, "fit_bridge", spy)
    cands = [BridgeConfig(loss="ridge", alpha=a) for a in (0.1, 10.0)]
    best, table = sel.select_bridge(cands, feats, targets, text_emb, groups, n_folds=2, seed=1)
    folds = sel.class_folds(groups, 2, seed=1)
    assert len(seen) == 4 and [len(r["folds"]) for r in table] == [2, 2]
    for (imgs, texts), fold in zip(seen, folds * 2):
        fold_imgs = {i for i, c in enumerate(groups) if c in fold}
        fold_texts = {tuple(text_emb[int(targets[i])].tolist()) for i in fold_imgs}
        assert imgs == set(range(40)) - fold_imgs and not texts & fold_texts
    assert best.alpha == max(table, key=lambda r: r["mean"])["config"].alpha


def test_cross_validation_picks_the_penalty_that_generalises_across_classes():
    """Images are a fixed linear function of their text plus strong noise in many extra dimensions:
    a weak penalty fits the noise of the training classes, the CV must prefer a stronger one."""
    g = torch.Generator().manual_seed(0)
    n_cls, per = 30, 4
    text = torch.nn.functional.normalize(torch.randn(n_cls, 8, generator=g), dim=-1)
    a = torch.randn(40, 8, generator=g)
    y = torch.arange(n_cls).repeat_interleave(per)
    x = text[y] @ a.T + 2.0 * torch.randn(len(y), 40, generator=g)
    groups = [str(int(c)) for c in y]
    cands = [BridgeConfig(loss="ridge", alpha=a) for a in (1e-6, 1.0)]
    best, table = sel.select_bridge(cands, x, y, text, groups, n_folds=5, group_emb=dict(zip(map(str, range(n_cls)),
                                                                                             text)))
    assert table[1]["mean"] > table[0]["mean"] + 0.05 and best.alpha == 1.0


def test_zero_shot_benchmark_chooses_without_the_held_out_classes(monkeypatch):
    """benchmarks/zero_shot.py: the CV that picks the bridge's penalties gets no image, group or extra
    text of a held-out class (bridge A and bridge B), and its choice is the bridge that is used."""
    import importlib.util
    import zlib
    from pathlib import Path
    from types import SimpleNamespace
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "zero_shot.py"
    spec = importlib.util.spec_from_file_location("zero_shot_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def embed(texts):
        rows = [torch.randn(6, generator=torch.Generator().manual_seed(zlib.crc32(t.encode()))) for t in texts]
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1)

    classes = [f"c{i:02d}" for i in range(12)]
    class_text = {c: f"thing{c}" for c in classes}
    rows = [{"label": c, "text": f"{c} icon{k % 3}", "path": ""} for c in classes for k in range(8)]
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(len(rows), 10, generator=g)
    extra_rows = [{"text": f"{c} extra"} for c in classes] + [{"text": "plain extra"}]
    extra = {"rows": extra_rows, "feats": torch.randn(len(extra_rows), 10, generator=g)}
    calls, fits = [], []
    real_select, real_fit = bench.select_bridge, bench.fit_bridge

    def spy_select(cands, f, t, emb, groups, **kw):
        ex = kw.get("extra")
        calls.append((set(groups), len(f), None if ex is None else len(ex[0])))
        best, table = real_select(cands, f, t, emb, groups, **kw)
        calls[-1] += (best, len(fits))                                  # the next fit is the bridge used
        return best, table

    monkeypatch.setattr(bench, "select_bridge", spy_select)
    monkeypatch.setattr(bench, "fit_bridge", lambda f, t, e, cfg: (fits.append(cfg), real_fit(f, t, e, cfg))[1])
    args = SimpleNamespace(held_out=2, loss="eszsl", no_cv=False, bridge_steps=10, shots=[1])
    out = bench.run_seed(0, rows, feats, feats.clone(), extra, class_text, embed, args)
    held = set(out["held_out"])
    assert len(held) == 2 and len(calls) == 2
    for groups, n, n_extra in [c[:3] for c in calls]:
        assert not groups & held and groups == set(classes) - held and n == 80
    assert calls[0][2] is None and calls[1][2] == len(extra_rows) - 2   # the held classes' extra icons left out
    assert all(fits[c[4]] == c[3] for c in calls) and fits[-1] == calls[1][3]   # the CV's choices are used
    assert out["bridge"]["cv"]["alpha"] == calls[0][3].alpha and 0.0 <= out["zero_shot"] <= 1.0
