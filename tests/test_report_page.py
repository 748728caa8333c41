"""The report people open: the test score is the headline, held-out numbers say what they estimate,
the choices of auto and WiSE-FT show their tables, settings are folded, and the loss is drawn per
step. And the WiSE-FT weight is chosen by validation accuracy, as auto's cross-validation chooses."""

from transferkit.engine.selection import choose_wise

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
