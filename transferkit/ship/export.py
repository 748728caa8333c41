"""`transferkit export RUN --format timm|hf|onnx|torchscript --out DIR`: the run's model in a format
other tools load, checked against the run before it is declared written.

Every export is reloaded the way its users load it (timm, transformers, onnxruntime, torch.jit)
and run on the run's test split next to the PyTorch model; a max |logit difference| above 1e-4 or a
different top-1 class is a `ParityError`. `OUT/export.json` records the format, classes,
preprocessing, inputs, the parity numbers and the entries it `written` into OUT (what a later
`--overwrite` may replace; store/outfolder.py has the rule for OUT). The files are written into a
staging folder inside OUT and moved into place once checked. An hf export also gets a model card,
README.md (ship/hf_card.py); an onnx export carries its classes and preprocessing in the graph's
metadata (ship/graph_formats.py). Test-time augmentation (the flip average that
`predict` applies when the run has `tta`) is not part of any exported graph. Dense runs (segment,
detect, anomaly) export to ONNX through ship/dense_export.py, into the same kind of folder.
"""

from __future__ import annotations

from pathlib import Path

from ..config import DENSE_TASKS
from ..engine.headfit import linear_of
from ..engine.predictor import preprocess_of
from ..engine.run import load_run
from ..models.lora import lora_parameters
from ..store.runfolder import run_task
from .parity import ParityError, ParityReport, check_parity, split_batches, split_examples
from .staging import FORMATS, MANIFEST, check_export_out, is_export, write_export  # noqa: F401 (public names)


def _check_format(fmt: str, model) -> None:
    if fmt not in FORMATS:
        import difflib
        near = difflib.get_close_matches(fmt, FORMATS, n=1)
        raise ValueError(f"unknown --format {fmt!r}" + (f"; did you mean {near[0]!r}?" if near else "")
                         + f" Formats: {', '.join(FORMATS)}")
    if fmt in ("timm", "hf") and hasattr(model.head, "fit_prototypes"):
        raise ValueError(f"--format {fmt} has a plain Linear classifier, but a 'prototypes' run's head "
                         "L2-normalises the features first; use --format onnx or torchscript for it")
    if fmt == "timm" and hasattr(linear_of(model.head), "radius"):
        raise ValueError("--format timm has a plain Linear classifier, but this run's head rescales the features "
                         "to one length first (--feature-norm on, the default of a probe at <= 20 labels per "
                         "class); use --format onnx or torchscript, or train with --feature-norm off")
    if fmt == "timm":
        from .timm_format import head_linear, timm_arch
        timm_arch(model)
        head_linear(model.head)
    if fmt == "hf" and model.spec.modality != "text":
        raise ValueError("--format hf exports text runs; for an image run use --format timm, onnx or "
                         "torchscript")


def export_run(run_dir: str | Path, fmt: str, out: str | Path, *, merge: bool = True,
               data: str | None = None, limit: int = 32, overwrite: bool = False, log=print) -> dict:
    """Write the run's model to `out` in `fmt`, verify parity on the test split, return the manifest.

    `merge` (text LoRA runs): fold the adapters into the weights (default) or keep them apart (hf).
    `data`: where the training data lives now, if it moved since training (for the test inputs).
    `overwrite`: write into an earlier export (its files are replaced) or beside someone else's files
    (theirs of the same name are kept as NAME.orig).
    """
    run, out = Path(run_dir), Path(out)
    folder = check_export_out(out, overwrite)
    if run_task(run) in DENSE_TASKS:  # segment, detect, anomaly: ship/dense_export.py
        from .dense_export import export_dense
        return export_dense(run, fmt, folder, data=data, limit=limit, log=log)
    model, cfg = load_run(run)
    model = model.float().cpu().eval()
    _check_format(fmt, model)
    batches = split_batches(model, run, cfg, data=data, limit=limit)
    lora = bool(lora_parameters(model))
    src = model
    if lora and merge and fmt != "hf":
        from .hf_format import merged_copy
        src = merged_copy(model)
    kind = _input_kind(run, cfg, model, data)

    def write(stage: Path):
        runner, files, extra = _write(fmt, src, model, cfg, stage, batches, merge, kind)
        if fmt == "hf":  # and a model card, so that `huggingface-cli upload` publishes a complete model
            from .hf_card import write_card
            from .hf_format import check_tokenizer
            texts = [e.x for e in split_examples(run, cfg, "text", data=data, limit=limit)]
            check_tokenizer(model, stage, texts)
            files = [*files, write_card(stage, run, list(model.class_names), model.spec.source.to_dict(), cfg,
                                        ("merged" if merge else "adapter") if lora else None)]
        report = check_parity(fmt, model, batches, runner)
        return {"format": fmt, "run": str(run.resolve()), "files": files,
                "classes": list(model.class_names), "source": model.spec.source.to_dict(),
                "modality": model.spec.modality, "input_kind": kind, "preprocess": preprocess_of(model, cfg),
                "lora": ("merged" if merge else "adapter") if lora else None,
                "tta_in_graph": False, **extra}, report
    return write_export(folder, write, log)


def _input_kind(run: Path, cfg, model, data: str | None) -> str:
    """"text", or what an image run reads: "image", "array" or "signal" (its first test item's kind)."""
    if model.spec.modality != "image":
        return model.spec.modality
    from ..data.kinds import input_kind
    return input_kind(split_examples(run, cfg, "image", data=data, limit=1)[0].x)


def _write(fmt: str, src, model, cfg, out: Path, batches: list, merge: bool, kind: str = "image"):
    """Write `src` in `fmt`; return (logits function of the reloaded export, files, manifest extras)."""
    if fmt == "timm":
        from .timm_format import load_timm, write_timm
        files = write_timm(src, out, preprocess_of(model, cfg), kind)
        return load_timm(out), files, {"load": "timm.create_model('local-dir:OUT') or "
                                               "timm.create_model(arch, num_classes=K, checkpoint_path='OUT/model.safetensors')"}
    if fmt == "hf":
        from .hf_format import load_hf_export, write_hf
        files = write_hf(src, cfg, out, merge=merge)
        return load_hf_export(out), files, {"load": "import transferkit.ship.hf_model; "
                                                    "AutoModelForSequenceClassification.from_pretrained('OUT')"}
    from .graph_formats import (classifier_metadata, input_names, load_onnx, load_torchscript, write_onnx,
                                write_torchscript)
    names = input_names(model, batches[0])
    if fmt == "onnx":  # metadata written first: the parity check below reloads the shipped file
        files = write_onnx(src, out, batches[0], classifier_metadata(model, cfg))
        return load_onnx(model, out, names), files, {"inputs": names, "outputs": ["logits"]}
    files = write_torchscript(src, out, batches[0])
    return load_torchscript(model, out, names), files, {"inputs": names, "outputs": ["logits"]}


__all__ = ["FORMATS", "ParityError", "ParityReport", "export_run"]
