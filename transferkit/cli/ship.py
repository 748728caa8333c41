"""`transferkit export` and `transferkit serve`: argument parsing and output over
`transferkit.ship.export.export_run` and `transferkit.ship.serve`."""

from __future__ import annotations

import argparse
import json


def _export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="transferkit export", allow_abbrev=False,
        description="Write a run's model in a format other tools load, then reload it with that tool "
                    "and check it against the run on the run's test split (max |logit diff| <= 1e-4, "
                    "identical top-1); a failed check exits non-zero.")
    p.add_argument("run", help="a finished run directory (config.yaml + model.safetensors)")
    p.add_argument("--format", required=True, choices=["timm", "hf", "onnx", "torchscript"],
                   help="timm: timm folder (images); hf: save_pretrained folder with tokenizer (text); "
                        "onnx: model.onnx, dynamic batch axis; torchscript: model.pt")
    p.add_argument("--out", required=True, help="output directory: new or empty; an earlier export or a "
                                                "folder with other files only with --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier export in --out, or write beside other files there (yours of "
                        "the same name are kept as NAME.orig, nothing is deleted) (default: off)")
    p.add_argument("--no-merge", dest="merge", action="store_false",
                   help="LoRA runs, --format hf: keep the adapter apart in OUT/adapter (PEFT format) "
                        "instead of merging it into the weights (default: merged)")
    p.add_argument("--data", default=None,
                   help="where the run's training data lives now, if it moved (the test inputs come from it)")
    p.add_argument("--n-check", type=int, default=32, metavar="N",
                   help="test-split inputs the parity check runs on (default: 32)")
    p.add_argument("--json", action="store_true", help="print export.json")
    return p


def _serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="transferkit serve", allow_abbrev=False,
        description="Serve a run over HTTP: POST /predict, GET /health, GET /info, and a page at / "
                    "where you drop an image or type text and see the top labels.")
    p.add_argument("run", help="a finished run directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--top-k", type=int, default=5, help="labels returned per input (default: 5)")
    p.add_argument("--max-mb", type=float, default=10.0, help="largest request body in MiB (default: 10)")
    p.add_argument("--max-items", type=int, default=32, help="most inputs in one request (default: 32)")
    p.add_argument("--allowed-hosts", default=None, metavar="NAMES",
                   help="comma-separated names a request's Host header may give, '*' for any (default: the "
                        "--host address and localhost, 127.0.0.1, ::1); others get a 400, so a web page "
                        "cannot reach this server by rebinding its own name to this address")
    return p


def main(argv: list[str]) -> int:
    command, rest = argv[0], argv[1:]
    if command == "export":
        args = _export_parser().parse_args(rest)
        from ..ship.export import export_run
        manifest = export_run(args.run, args.format, args.out, merge=args.merge, data=args.data,
                              limit=args.n_check, overwrite=args.overwrite)
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
