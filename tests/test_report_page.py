"""The report people open: the test score is the headline, held-out numbers say what they estimate,
the choices of auto and WiSE-FT show their tables, settings are folded, and the loss is drawn per
step. And the WiSE-FT weight is chosen by validation accuracy, as auto's cross-validation chooses."""

import re
from types import SimpleNamespace

import pytest

from transferkit.config import TrainConfig
from transferkit.engine.run_state import MAX_STEP_LOSSES, RunState
from transferkit.engine.selection import choose_wise
from transferkit.report import write_report

WISE_ROWS = [  # the case: weight 1 has the lowest loss, 0.5 the best accuracy
    {"wise": 0.0, "val_accuracy": 0.60, "val_macro_f1": 0.58, "val_loss": 1.30},
    {"wise": 0.25, "val_accuracy": 0.66, "val_macro_f1": 0.64, "val_loss": 1.10},
    {"wise": 0.5, "val_accuracy": 0.71, "val_macro_f1": 0.66, "val_loss": 0.95},
    {"wise": 0.75, "val_accuracy": 0.69, "val_macro_f1": 0.68, "val_loss": 0.90},
    {"wise": 1.0, "val_accuracy": 0.68, "val_macro_f1": 0.67, "val_loss": 0.88},
]


def test_wise_weight_is_chosen_by_validation_accuracy_ties_to_lower_loss():
    assert choose_wise(WISE_ROWS)[0] == 0.5
    assert choose_wise(WISE_ROWS, "accuracy")[0] == 0.5
    assert choose_wise(WISE_ROWS, "macro_f1")[0] == 0.75
    tied = [dict(r, val_accuracy=0.7) for r in WISE_ROWS]
    assert choose_wise(tied) == (1.0, "on validation accuracy, ties to the lower loss")
    same = [dict(r, val_accuracy=0.7, val_loss=1.0) for r in WISE_ROWS]
    assert choose_wise(same)[0] == 0.0  # nothing to tell them apart: the probe


def _model(classes=("a", "b")):
    src = SimpleNamespace(id="timm:x", arch="x", weights_hash="h")
    return SimpleNamespace(class_names=list(classes), spec=SimpleNamespace(modality="text", source=src))


def _page(tmp_path, metrics, history=(), step_losses=(), cfg=None):
    cfg = cfg or TrainConfig(backbone="timm:x", strategy="two_phase", steps=7)
    return write_report(tmp_path, cfg, _model(), metrics, list(history), step_losses=step_losses).read_text()


def _cards(page):
    return page.split("<div class='cards'>", 1)[1].split("</div></div>", 1)[0]


def test_the_headline_is_the_test_score_and_the_probe_phase_is_not_its_estimate(tmp_path):
    """A fine-tuned run with a validation split: the head fit's validation score is the probe's, and
    the report says so apart from the test score; the kept weights' validation is shown as such."""
    history = [{"phase": 0, "step": 0, "train_loss": "", "val_accuracy": 0.691, "val_loss": 1.0},
               {"phase": 1, "step": 7, "train_loss": 0.5, "val_accuracy": 0.55, "val_loss": 1.2}]
    m = {"accuracy": 0.476, "macro_f1": 0.45, "ece": 0.1, "n_train": 50, "n_val": 20, "n_test": 30,
         "best_step": 7, "estimate": {"accuracy": 0.691, "accuracy_se": None, "method": "val", "folds": None,
                                      "of": "the probe phase", "compared": 7, "optimistic": True},
         "wise": {"weight": 0.5, "chosen": "on validation accuracy, ties to the lower loss", "table": WISE_ROWS}}
    page = _page(tmp_path, m, history)
    cards = _cards(page)
    assert "<div class='card main'>test accuracy<b>0.476</b>" in cards
    assert "0.691" not in cards and "estimate" not in cards  # never beside the test score
    evidence = page.split("<div class='evidence'>", 1)[1].split("</div>", 1)[0]
    assert "validation accuracy of the kept weights (WiSE-FT weight 0.5): <b>0.710</b>" in evidence
    assert "the probe phase alone" in evidence and "not of the model tested" in evidence
    # the WiSE-FT table: every weight, both columns, the chosen one marked
    wise = page.split("every weight on the validation split", 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr><td>([\d.]+)</td><td>([\d.]+)</td><td>[\d.]+</td><td>([\d.]+)</td><td>([^<]*)</td>", wise)
    assert [(w, a, c != "") for w, a, _, c in rows] == [("0", "0.600", False), ("0.25", "0.660", False),
                                                         ("0.5", "0.710", True), ("0.75", "0.690", False),
                                                         ("1", "0.680", False)]


def test_auto_cv_estimate_is_of_the_chosen_candidate_and_its_table_is_shown(tmp_path):
    table = [{"wise": w, "accuracy": a, "accuracy_se": 0.02, "nll": 1.0}
             for w, a in zip((0.0, 0.25, 0.5, 0.75, 1.0), (0.30, 0.36, 0.35, 0.33, 0.31))]
    choice = {"strategy": "two_phase", "wise": 0.25, "reason": "best held out", "finetune_cv": {"folds": 3, "table": table},
              "multi_probe_cv": {"wise": 1.0, "accuracy": 0.34, "accuracy_se": 0.02, "nll": 1.1},
              "best": {"strategy": "two_phase", **table[1]}, "compared": 6}
    m = {"accuracy": 0.363, "macro_f1": 0.3, "ece": 0.1, "n_train": 50, "n_val": 0, "n_test": 30, "choice": choice,
         "estimate": {"accuracy": 0.36, "accuracy_se": 0.02, "method": "cv", "folds": 3, "of": "the chosen model",
                      "compared": 6, "optimistic": True}}
    page = _page(tmp_path, m)
    assert "CV estimate of the chosen candidate (3-fold CV on the training labels): <b>0.360 ± 0.020</b>" in page
    assert "chosen among 6 compared, so optimistic" in page
    chosen = re.findall(r"<tr><td>([^<]+)</td>(?:<td>[^<]*</td>){3}<td>&#10003;</td></tr>", page)
    assert chosen == ["two_phase, WiSE-FT weight 0.25"]
    assert "multi_probe" in page and "linear_probe (the probe)" in page


def test_settings_are_folded_and_the_changed_ones_shown(tmp_path):
    page = _page(tmp_path, {"accuracy": 0.5})
    section = page.split("<h2>Configuration</h2>", 1)[1]
    shown, folded = section.split("<details>", 1)
    assert "<td>steps</td><td>7</td>" in shown and "<td>lr</td>" not in shown  # lr is at its default
    assert folded.startswith("<summary>all ") and "lr:" in folded


def test_the_loss_curve_has_every_step(tmp_path, monkeypatch):
    import transferkit.report as report
    figs = []
    monkeypatch.setattr(report, "png_data_uri", lambda fig: (figs.append(fig), "data:image/png;base64,")[1])
    losses = [[s, 2.0 / s] for s in range(1, 301)]
    history = [{"phase": 0, "step": 300, "train_loss": 0.01, "val_loss": 0.5, "val_accuracy": 0.9}]
    page = _page(tmp_path, {"accuracy": 0.5}, history, step_losses=losses)
    assert "Learning curves" in page  # one validation row: a curve only because of the per-step losses
    lines = {ln.get_label(): ln for ln in figs[0].axes[0].lines}
    assert len(lines["train loss (per step)"].get_xdata()) == 300
    assert "train loss (trend)" in lines


def test_step_losses_stay_bounded_and_keep_their_steps():
    st = RunState()
    for step in range(1, MAX_STEP_LOSSES + 2):
        st.global_step = step
        st.record_loss(1.0 / step)
    assert len(st.step_losses) <= MAX_STEP_LOSSES // 2 + 1
    assert st.step_losses[0] == [1.5, pytest.approx(0.75)]
    assert st.step_losses[-1][0] == MAX_STEP_LOSSES + 1
