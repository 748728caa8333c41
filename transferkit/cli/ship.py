"""`transferkit export` and `transferkit serve`: argument parsing and output over
`transferkit.ship.export.export_run` and `transferkit.ship.serve`."""

from __future__ import annotations

import argparse
import json

from .options import MAIN, add_fields, add_shared, command_parser, out_help


def _export_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "export",
        "Write a run's model in a format other tools load, then reload it with that tool and check it "
        "against the run on the run's test split (max |logit diff| <= 1e-4, identical top-1); a failed "
        "check exits non-zero. Dense runs (segment, detect, anomaly) export to onnx: the graph, the arrays "
        "it needs (anchors.npy, memory_bank.npy) and a numpy postprocess.py, checked end to end against "
        "what 'transferkit predict' answers.",
        ["transferkit export runs/photos --format onnx --out exported/",
         "transferkit export runs/text --format hf --out hf-model/ --no-merge --json",
         "transferkit export runs/defects --format onnx --out defects-onnx/"])
    p.add_argument("run", help="a finished run directory (config.yaml + model.safetensors)")
    p.add_argument("--format", required=True, choices=["timm", "hf", "onnx", "torchscript"],
                   help="timm: timm folder (images); hf: save_pretrained folder with tokenizer (text); "
                        "onnx: model.onnx, dynamic batch axis (the one format of dense runs); "
                        "torchscript: model.pt (required)")
    add_shared(p, "--out", required=True, help=out_help("output directory: new or empty, or an earlier export "
                                                        "or other files with --overwrite", required=True))
    add_fields(p, ["overwrite"], title=MAIN)
    p.add_argument("--merge", action=argparse.BooleanOptionalAction, default=True,
                   help="LoRA runs, --format hf: merge the adapter into the weights; --no-merge keeps it apart "
                        "in OUT/adapter (PEFT format) (default: on)")
    p.add_argument("--data", default=None,
                   help="where the run's training data lives now, if it moved (the test inputs come from it) "
                        "(default: where the run found it)")
    p.add_argument("--n-check", type=int, default=32, metavar="N",
                   help="test-split inputs the parity check runs on (default: 32)")
    add_shared(p, "--json")
    return p


def _serve_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "serve",
        "Serve a run over HTTP: POST /predict, GET /health, GET /info, and a page at / where you drop an "
        "image or type text and see the top labels (dense runs: the mask, the boxes or the anomaly heat map, "
        "drawn over the image).",
        ["transferkit serve runs/photos", "transferkit serve runs/photos --host 0.0.0.0 --port 8080 "
         "--allowed-hosts myhost.lan --top-k 3"])
    p.add_argument("run", help="a finished run directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    add_shared(p, "--top-k")
    p.add_argument("--max-mb", type=float, default=10.0, help="largest request body in MiB (default: 10)")
    p.add_argument("--max-items", type=int, default=32, help="most inputs in one request (default: 32)")
    p.add_argument("--allowed-hosts", default=None, metavar="NAMES",
                   help="comma-separated names a request's Host header may give, '*' for any; others get a "
                        "400, so a web page cannot reach this server by rebinding its own name to this "
                        "address (default: the --host address and localhost, 127.0.0.1, ::1)")
    return p


def main(argv: list[str]) -> int:
    command, rest = argv[0], argv[1:]
    if command == "export":
        args = _export_parser().parse_args(rest)
        from ..ship.export import export_run
        manifest = export_run(args.run, args.format, args.out, merge=args.merge, data=args.data,
                              limit=args.n_check, overwrite=bool(args.overwrite))
        if args.json:
            print(json.dumps(manifest, indent=2))
        return 0
    args = _serve_parser().parse_args(rest)
    from ..ship.serve import serve
    allowed = [h.strip() for h in args.allowed_hosts.split(",") if h.strip()] if args.allowed_hosts else None
    if args.allowed_hosts is not None and not allowed:
        from ..config import ConfigError
        raise ConfigError("--allowed-hosts is empty: give names (e.g. myhost.lan,192.168.1.5) or '*' for any")
    serve(args.run, host=args.host, port=args.port, top_k=args.top_k,
          max_bytes=int(args.max_mb * 1024 * 1024), max_items=args.max_items, allowed_hosts=allowed)
    return 0


PARSERS = {"export": _export_parser, "serve": _serve_parser}
