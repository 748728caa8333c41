"""What a run's report shows beside its test score: the held-out numbers, each labelled for the
model it measures and for how it was obtained (never as a second score of the model tested), how
`auto`, the head fit and WiSE-FT chose (with their tables), and the settings."""

from __future__ import annotations

import dataclasses
import html
import json

e = html.escape


def table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{e(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _num(v, fmt: str = ".3f") -> str:
    return "–" if v is None or v == "" else format(v, fmt)


def _kept_on_validation(metrics: dict, history: list[dict]) -> tuple[float, str] | None:
    """(validation accuracy, what was kept) of the weights the run kept, when a validation split
    chose them: the chosen WiSE-FT weight's row, else the best checkpoint's validation."""
    wise = metrics.get("wise") or {}
    for r in wise.get("table") or []:
        if r.get("wise") == wise.get("weight") and r.get("val_accuracy") is not None:
            return r["val_accuracy"], f"WiSE-FT weight {wise['weight']:g}"
    best = metrics.get("best_step")
    for r in reversed(history):
        if r.get("step") == best and r.get("val_accuracy") is not None and r.get("train_loss", "") != "":
            return r["val_accuracy"], f"the checkpoint of step {best}"
    return None


def held_out_html(metrics: dict, history: list[dict]) -> str:
    """The held-out evidence from before testing, under the test score and apart from it: what
    each number estimates (the chosen candidate, the probe, the probe phase of a fine-tuned run)
    and why it is optimistic (chosen among several compared on the same held-out labels)."""
    est = metrics.get("estimate") or {}
    lines = []
    acc = est.get("accuracy")
    se = f" ± {est['accuracy_se']:.3f}" if est.get("accuracy_se") is not None else ""
    folds = f"{est.get('folds')}-fold CV" if est.get("method") == "cv" else "validation"
    kept = _kept_on_validation(metrics, history)
    best_of = (f"chosen among {est['compared']} compared, so optimistic"
               if est.get("optimistic") else "")
    if acc is not None and est.get("of") != "the probe phase":
        if est.get("method") == "cv" and (metrics.get("choice") or {}).get("best"):
            what = f"CV estimate of the chosen candidate ({e(str(est.get('folds')))}-fold CV on the training labels)"
        elif est.get("method") == "cv":
            what = f"CV estimate of the probe ({e(folds)} on the training labels)"
        else:
            what = "validation accuracy of the probe (the split that chose its C)"
        why = f"{best_of}: expect the test score lower" if best_of else "held out from training"
        lines.append(f"{what}: <b>{acc:.3f}{se}</b> ({why})")
    elif kept:
        lines.append(f"validation accuracy of the kept weights ({e(kept[1])}): <b>{kept[0]:.3f}</b> "
                     "(optimistic: the validation split chose them)")
    if acc is not None and est.get("of") == "the probe phase":
        probe_kept = (metrics.get("wise") or {}).get("weight") == 0  # WiSE-FT weight 0: the probe itself
        lines.append(f"the probe phase alone (the head on frozen features, before the backbone trained) "
                     f"scored {acc:.3f}{se} ({e(folds)}{'; ' + best_of if best_of else ''}): "
                     + ("the weights kept are that probe (WiSE-FT weight 0)" if probe_kept
                        else "an estimate of that probe, not of the model tested"))
        if not kept:
            lines.append("no held-out estimate of the trained weights: without a validation split only "
                         "the test score measures them")
    if not lines:
        return ""
    return ("<div class='evidence'><b>Held-out evidence before testing</b> "
            "<span class='sub'>(labels held out while training or choosing; not comparable to the test score)</span><ul>"
            + "".join(f"<li>{x}</li>" for x in lines) + "</ul></div>")


def _auto_table(choice: dict) -> str:
    """auto's cross-validated candidates on the same folds, the chosen one marked."""
    rows, chosen_strategy, chosen_wise = [], choice.get("strategy"), choice.get("wise")
    for r in (choice.get("finetune_cv") or {}).get("table") or []:
        w = r["wise"]
        name = "linear_probe (the probe)" if w == 0 else f"two_phase, WiSE-FT weight {w:g}"
        chosen = (chosen_strategy == "linear_probe" and w == 0) or (chosen_strategy == "two_phase" and w == chosen_wise)
        rows.append([e(name), _num(r.get("accuracy")), _num(r.get("accuracy_se")), _num(r.get("nll")),
                     "&#10003;" if chosen else ""])
    for name in ("multi_probe", "contrastive"):
        r = choice.get(f"{name}_cv")
        if r:
            rows.append([name, _num(r.get("accuracy")), _num(r.get("accuracy_se")), _num(r.get("nll")),
                         "&#10003;" if chosen_strategy == name else ""])
    if not rows:
        return ""
    return table(["candidate", "CV accuracy", "± s.e.", "CV NLL", "chosen"], rows)


def _wise_html(wise: dict) -> list[str]:
    """The WiSE-FT weight used, how it was chosen, and the validation score of every weight tried."""
    if not wise:
        return []
    w = wise["weight"]
    out = [f"<p class='sub'>WiSE-FT: final weights = {1 - w:g} &times; probe + {w:g} &times; fine-tuned "
           f"({e(wise['chosen'])})</p>"]
    rows = wise.get("table") or []
    if rows:
        out.append("<p class='sub'>every weight on the validation split:</p>" + table(
                       ["WiSE-FT weight (0 = probe)", "val accuracy", "val macro-F1", "val loss (NLL)", "chosen"],
                       [[f"{r['wise']:g}", _num(r.get("val_accuracy")), _num(r.get("val_macro_f1")),
                         _num(r.get("val_loss"), ".4f"), "&#10003;" if r["wise"] == w else ""] for r in rows]))
    return out


def choices_html(metrics: dict) -> list[str]:
    """How the source, the strategy, the head's C and the WiSE-FT weight were chosen, with the evidence."""
    out = []
    choice = metrics.get("choice") or {}
    source = choice.get("backbone")
    if source:
        out.append(f"<h2>Source chosen by auto: {e(source['chosen'])}</h2><p>by {e(source['by'])}"
                   + (f"; not scored within the budget: {e(', '.join(source['unscored']))}" if source["unscored"] else "")
                   + "</p>")
        out.append(table(["source", "CV probe accuracy", "± s.e.", "LogME", "seconds"],
                         [[e(r["source"]), _num(r.get("cv_accuracy")), _num(r.get("cv_accuracy_se")),
                           f"{r['logme']:.3f}", f"{r['seconds']:.1f}"] for r in source["rows"]]))
    if choice.get("strategy"):
        out.append(f"<h2>Strategy chosen by auto: {e(choice['strategy'])}</h2><p>{e(choice['reason'])}</p>")
        out.append(_auto_table(choice))
    head = metrics.get("head_fit") or {}
    if head.get("scale") is not None:  # --strategy prototypes: no C, one scale
        out.append(f"<p class='sub'>prototype head: normalised class means scaled by s = {head['scale']:g} "
                   f"(chosen {'on validation NLL' if head.get('method') == 'val' else 'by default'})</p>")
    elif head.get("method"):
        how = {"val": "on validation", "cv": f"{head.get('folds')}-fold CV"}.get(head["method"], "by default")
        out.append(f"<p class='sub'>head fitted on frozen features with C = {head['C']:g} (chosen {e(how)})"
                   + (f"; {head['blocks']} stage block(s) below the final features" if "blocks" in head else "")
                   + "</p>")
    out += _wise_html(metrics.get("wise") or {})
    out += unlabelled_html(metrics.get("unlabelled") or {})
    if metrics.get("phase_seconds"):
        out.append("<p class='sub'>time per phase: " + ", ".join(
            f"{e(k)} {v:.1f}s" for k, v in metrics["phase_seconds"].items()) + "</p>")
    return [x for x in out if x]


def unlabelled_html(u: dict) -> list[str]:
    """Which inputs were used without their labels, and for what (train --unlabelled)."""
    if not u:
        return []
    where = ("the test split's inputs (transductive: the test images were seen without labels)"
             if u.get("transductive") else e(str(u.get("source"))))
    uses = []
    ada = u.get("adabn") or {}
    if ada.get("held_out_source") is not None:
        uses.append(f"AdaBN {'applied' if ada.get('applied') else 'not applied'} (held-out accuracy "
                    f"{ada['held_out_adabn']:.3f} with re-estimated BatchNorm statistics, "
                    f"{ada['held_out_source']:.3f} with the source's)")
    elif ada:
        uses.append(f"AdaBN not applied ({e(ada.get('reason', ''))})")
    fm = u.get("fixmatch") or {}
    if fm:
        rate = f", {fm['kept'] / fm['seen']:.0%} of pseudo-labels kept" if fm.get("seen") else ""
        uses.append(f"FixMatch with weight {fm['weight']:g}, threshold {fm['threshold']:g}, "
                    f"{fm['ratio']} unlabelled per labelled image{rate}")
    if not u.get("used"):
        uses.append("not used for the final model" + (f" ({e(u['reason'])})" if u.get("reason") else ""))
    count = f"{u['count']} images" if u.get("count") is not None else "images"
    out = [f"<h2>Unlabelled inputs</h2><p>{count} from {where}: " + "; ".join(uses) + "</p>"]
    if u.get("chosen"):
        out.append(f"<p class='sub'>{e(u['chosen'])}</p>")
    return out


def _defaults(cfg) -> dict:
    out = {}
    for f in dataclasses.fields(cfg):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def settings_html(cfg) -> str:
    """The settings that differ from the defaults in a table, every setting (config.yaml) folded."""
    import yaml
    values = cfg.to_dict()
    defaults = _defaults(cfg) if dataclasses.is_dataclass(cfg) else {}
    same = lambda a, b: json.dumps(a, default=str) == json.dumps(b, default=str)  # noqa: E731
    changed = [(k, v) for k, v in values.items() if k not in defaults or not same(v, defaults[k])]
    shown = table(["setting", "value"], [[e(k), e(str(v))] for k, v in changed]) if changed else \
        "<p class='sub'>every setting at its default</p>"
    return ("<h2>Configuration</h2><p class='sub'>settings that differ from the defaults:</p>" + shown
            + f"<details><summary>all {len(values)} settings (as in config.yaml)</summary><pre>"
            + e(yaml.safe_dump(values, sort_keys=False)) + "</pre></details>")
