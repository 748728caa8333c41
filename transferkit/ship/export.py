"""`transferkit export RUN --format timm|hf|onnx|torchscript --out DIR`: the run's model in a format
other tools load, checked against the run before it is declared written.

Every export is reloaded the way its users load it (timm, transformers, onnxruntime, torch.jit)
and run on the run's test split next to the PyTorch model; a max |logit difference| above 1e-4 or a
different top-1 class is a `ParityError`. `OUT/export.json` records the format, classes,
preprocessing, inputs and the parity numbers. Test-time augmentation (the flip average that
`predict` applies when the run has `tta`) is not part of any exported graph.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..engine.predictor import preprocess_of
from ..engine.run import load_run
from ..models.lora import lora_parameters
from .parity import ParityError, ParityReport, check_parity, split_batches, split_examples

FORMATS = ("timm", "hf", "onnx", "torchscript")
MANIFEST = "export.json"


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; give a directory for the export")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise FileExistsError(f"--out {out} is a non-empty directory that transferkit did not write "
                              f"(no {MANIFEST}); choose a new or empty directory")
    out.mkdir(parents=True, exist_ok=True)


def _check_format(fmt: str, model) -> None:
    if fmt not in FORMATS:
        import difflib
        near = difflib.get_close_matches(fmt, FORMATS, n=1)
        raise ValueError(f"unknown --format {fmt!r}" + (f"; did you mean {near[0]!r}?" if near else "")
                         + f" Formats: {', '.join(FORMATS)}")
    if fmt in ("timm", "hf") and hasattr(model.head, "fit_prototypes"):
        raise ValueError(f"--format {fmt} has a plain Linear classifier, but a 'prototypes' run's head "
                         "L2-normalises the features first; use --format onnx or torchscript for it")
    if fmt == "timm":
        from .timm_format import head_linear, timm_arch
        timm_arch(model)
        head_linear(model.head)
    if fmt == "hf" and model.spec.modality != "text":
        raise ValueError("--format hf exports text runs; for an image run use --format timm, onnx or "
                         "torchscript")


def export_run(run_dir: str | Path, fmt: str, out: str | Path, *, merge: bool = True,
               data: str | None = None, limit: int = 32, log=print) -> dict:
    """Write the run's model to `out` in `fmt`, verify parity on the test split, return the manifest.

    `merge` (text LoRA runs): fold the adapters into the weights (default) or keep them apart (hf).
    `data`: where the training data lives now, if it moved since training (for the test inputs).
    """
    run, out = Path(run_dir), Path(out)
    model, cfg = load_run(run)
    model = model.float().cpu().eval()
    _check_format(fmt, model)
    batches = split_batches(model, run, cfg, data=data, limit=limit)
    lora = bool(lora_parameters(model))
    _prepare_out(out)
    src = model
    if lora and merge and fmt != "hf":
        from .hf_format import merged_copy
        src = merged_copy(model)
    kind = _input_kind(run, cfg, model, data)
    runner, files, extra = _write(fmt, src, model, cfg, out, batches, merge, kind)
    if fmt == "hf":
        from .hf_format import check_tokenizer
        texts = [e.x for e in split_examples(run, cfg, "text", data=data, limit=limit)]
        check_tokenizer(model, out, texts)
    report = check_parity(fmt, model, batches, runner)
    manifest = {"format": fmt, "run": str(run.resolve()), "files": files,
                "classes": list(model.class_names), "source": model.spec.source.to_dict(),
                "modality": model.spec.modality, "input_kind": kind, "preprocess": preprocess_of(model, cfg),
                "lora": ("merged" if merge else "adapter") if lora else None,
                "tta_in_graph": False, **extra, "parity": report.to_dict()}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    log(f"wrote {fmt} export to {out}: {', '.join(files)}")
    log(report.line())
    if not report.ok:
        raise ParityError(f"{report.line()}; the export in {out} does not compute what the run does")
    return manifest


def _input_kind(run: Path, cfg, model, data: str | None) -> str:
    """"text", or what an image run reads: "image", "array" or "signal" (its first test item's kind)."""
    if model.spec.modality != "image":
        return model.spec.modality
    from ..data.arrays import input_kind
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
    from .graph_formats import input_names, load_onnx, load_torchscript, write_onnx, write_torchscript
    names = input_names(model, batches[0])
    if fmt == "onnx":
        files = write_onnx(src, out, batches[0])
        return load_onnx(model, out, names), files, {"inputs": names, "outputs": ["logits"]}
    files = write_torchscript(src, out, batches[0])
    return load_torchscript(model, out, names), files, {"inputs": names, "outputs": ["logits"]}


__all__ = ["FORMATS", "ParityError", "ParityReport", "export_run"]
