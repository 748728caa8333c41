"""`transferkit serve RUN`: the run behind an HTTP API (FastAPI on uvicorn) and a page.

    POST /predict   multipart images in field `file` (repeat it for several), or JSON
                    {"text": "..."} / {"texts": ["...", ...]}; ?top_k=N. -> {"predictions": [...]}
    GET  /health    {"status": "ok"}
    GET  /info      classes, modality, source, preprocessing, limits
    GET  /          a self-contained page: drop/choose an image or type text, see the top labels
    GET  /docs      the endpoints, from /openapi.json, on a plain page with no outside assets

Bad input is a 4xx with a JSON `detail` that says what was wrong: 400 (not an image, empty file,
invalid JSON, wrong modality, a Host header not in --allowed-hosts), 413 (body or image too large,
too many inputs), 415 (neither multipart nor JSON), 422 (JSON of the wrong shape). In a request of
several images, a bad one gets a row with `error` and the others are predicted, as `transferkit
predict` does with files; only a request with no usable image is a 4xx. Inference goes through
`engine.Predictor`, the same transforms and probabilities as `transferkit predict`.

Dense runs (segment, detect, anomaly) are served the same way (ship/dense_serve.py): a row per image
with a mask (base64 index PNG) and class shares, boxes (xyxy, label, score), or an anomaly score, the
decision at the run's threshold and a heat map (base64 PNG); /info names the `task`, and the page
draws the mask, the boxes or the heat map over the image.

The Host header is checked against an allow-list (`--allowed-hosts`; by default the bound address
and the loopback names): a page on another site that rebinds its own name to 127.0.0.1 (DNS
rebinding) would otherwise reach a server that listens on this machine only.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

MAX_PIXELS = 40_000_000  # a decoded image larger than this is refused (decompression bombs)


@dataclass
class Limits:
    max_bytes: int = 10 * 1024 * 1024   # whole request body
    max_items: int = 32                 # images or texts per request
    max_text_chars: int = 20_000        # per text


def _error(status: int, detail: str) -> HTTPException:
    return HTTPException(status_code=status, detail=detail)


class _BodyLimit:
    """ASGI middleware: a body over `max_bytes` is a 413, by Content-Length up front or by counting
    the bytes as they arrive (chunked uploads)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            from starlette.responses import JSONResponse
            resp = JSONResponse({"detail": self._message(int(length))}, status_code=413)
            return await resp(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _error(413, self._message(seen))
            return message
        return await self.app(scope, counted, send)

    def _message(self, n: int) -> str:
        return (f"request body of {n} bytes is over the limit of {self.max_bytes} bytes "
                "(transferkit serve --max-mb)")


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def default_allowed_hosts(host: str) -> list[str]:
    """The bound address (unless a wildcard: 0.0.0.0, ::) and the loopback names."""
    bound = [] if host in ("0.0.0.0", "::", "") else [host.strip("[]").lower()]
    return list(dict.fromkeys([*bound, *LOOPBACK_NAMES]))


def _host_name(header: str) -> str:
    """The name in a Host header, without the port ("[::1]:8000" -> "::1")."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class _HostAllowList:
    """ASGI middleware: a request whose Host header names no allowed host is a 400 (`*`: any)."""

    def __init__(self, app, allowed: list[str]):
        self.app = app
        self.any = "*" in allowed
        self.allowed = {h.strip("[]").lower() for h in allowed}

    async def __call__(self, scope, receive, send):
        if self.any or scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        if _host_name(header) in self.allowed:
            return await self.app(scope, receive, send)
        from starlette.responses import JSONResponse
        detail = (f"Host {header!r} is not served here (allowed: {', '.join(sorted(self.allowed))}); "
                  "start the server with transferkit serve --allowed-hosts NAME,... to add a name, or '*' for any")
        return await JSONResponse({"detail": detail}, status_code=400)(scope, receive, send)


def _docs_page(schema: dict) -> str:
    """The endpoints of the OpenAPI schema as plain HTML: no script, no outside asset (the default
    Swagger UI and ReDoc pages load theirs from a CDN, so they are blank offline)."""
    from html import escape as e
    rows = []
    for path, ops in schema.get("paths", {}).items():
        for method, op in ops.items():
            params = ", ".join(f"{q['name']} ({q.get('in', '')})" for q in op.get("parameters", []))
            rows.append(f"<tr><td><code>{e(method.upper())} {e(path)}</code></td><td>{e(op.get('summary', ''))}"
                        f"</td><td>{e(params)}</td></tr>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>transferkit API</title></head><body>"
            f"<h1>{e(schema.get('info', {}).get('title', 'API'))}</h1><p>{e(schema.get('info', {}).get('description', ''))}"
            "</p><p>The full schema: <a href='/openapi.json'>/openapi.json</a>. POST /predict takes images as "
            "multipart/form-data in field <code>file</code> (repeat it for several), or JSON "
            "<code>{\"text\": \"...\"}</code> / <code>{\"texts\": [...]}</code>.</p>"
            "<table border='1' cellpadding='4'><tr><th>endpoint</th><th>summary</th><th>parameters</th></tr>"
            + "".join(rows) + "</table></body></html>")


def create_app(predictor, *, top_k: int = 5, limits: Limits | None = None,
               allowed_hosts: list[str] | None = None):
    """The FastAPI app for a loaded `engine.predictor.Predictor`; `allowed_hosts`: the names a
    request's Host header may give (default: the loopback names; ["*"]: any)."""
    limits = limits or Limits()
    app = FastAPI(title="transferkit", description=f"predictions of {predictor.run_dir}",
                  docs_url=None, redoc_url=None)
    page = resources.files("transferkit.ship").joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return page

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs():
        return _docs_page(app.openapi())

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/info")
    async def info():
        return {**predictor.info(), "top_k": top_k, "limits": vars(limits)}

    @app.post("/predict")
    async def predict(request: Request, top_k: int = top_k):
        k = max(1, min(int(top_k), len(predictor.classes)))
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            names, images, errors = await _read_images(request, predictor, limits)
            good = [i for i in range(len(names)) if i not in errors]
            done = iter(await run_in_threadpool(predictor.predict_images, [images[i] for i in good],
                                                [names[i] for i in good], k))
            rows = [_error_row(names[i], errors[i]) if i in errors else next(done) for i in range(len(names))]
        elif kind == "application/json":
            texts = await _read_texts(request, predictor, limits)
            rows = await run_in_threadpool(predictor.predict_texts, texts, k)
        else:
            raise _error(415, f"content type {kind or 'none'!r} is not accepted: send images as "
                              "multipart/form-data in field 'file', or JSON {\"text\": ...}")
        return {"predictions": rows}

    return _HostAllowList(_BodyLimit(app, limits.max_bytes), list(allowed_hosts or LOOPBACK_NAMES))


def _error_row(name: str, reason: str) -> dict:
    return {"input": name, "label": None, "probability": None, "top": [], "error": reason}


async def _read_images(request, predictor, limits: Limits):
    """(names, images, {index: reason}) of the uploaded files; when none is usable, the first
    one's problem is the request's 4xx."""
    if predictor.modality != "image":
        raise _error(400, "this run classifies text: send JSON {\"text\": \"...\"} or {\"texts\": [...]}")
    form = await request.form(max_files=limits.max_items, max_fields=8, max_part_size=limits.max_bytes)
    files = [f for f in form.getlist("file") if hasattr(f, "read")]
    if not files:
        fields = ", ".join(sorted(set(form.keys()))) or "none"
        raise _error(400, f"no image in multipart field 'file' (fields sent: {fields})")
    names, images, errors = [], [], {}
    for f in files:
        name = f.filename or "upload"
        try:
            images.append(_decode(await f.read(), name))
        except HTTPException as e:
            images.append(None)
            errors[len(names)] = e
        names.append(name)
    if len(errors) == len(names):
        raise errors[0]
    return names, images, {i: e.detail for i, e in errors.items()}


def _decode(data: bytes, name: str):
    """The upload as an RGB image, or the HTTPException that says why it is not one."""
    from PIL import Image, UnidentifiedImageError

    from ..data import DataError, open_rgb
    from ..data.images import image_problem
    if not data:
        raise _error(400, f"file {name!r} is empty")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            if probe.width * probe.height > MAX_PIXELS:
                raise _error(413, f"image {name!r} is {probe.width}x{probe.height} pixels, over the "
                                  f"limit of {MAX_PIXELS}")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise _error(400, f"file {name!r} is not an image PIL can read ({type(e).__name__})") from None
    problem = image_problem(io.BytesIO(data))  # truncated, a bomb, a strip over 100:1 (data/images.py)
    if problem:
        raise _error(400, f"file {name!r}: {problem}")
    try:
        return open_rgb(io.BytesIO(data))
    except DataError as e:
        raise _error(400, f"file {name!r} is not an image PIL can read ({str(e).split(': ', 1)[-1]})") from None


async def _read_texts(request, predictor, limits: Limits) -> list[str]:
    if predictor.modality != "text":
        raise _error(400, "this run classifies images: send them as multipart/form-data in field 'file'")
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _error(400, f"the body is not valid JSON ({e})") from None
    if not isinstance(body, dict) or ("text" in body) == ("texts" in body):
        raise _error(422, "send a JSON object with exactly one of \"text\": \"...\" or \"texts\": [\"...\"]")
    texts = [body["text"]] if "text" in body else body["texts"]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise _error(422, "\"text\" must be a string and \"texts\" a list of strings")
    if not texts or any(not t.strip() for t in texts):
        raise _error(422, "empty text: give at least one non-blank string")
    if len(texts) > limits.max_items:
        raise _error(413, f"{len(texts)} texts in one request, over the limit of {limits.max_items}")
    if any(len(t) > limits.max_text_chars for t in texts):
        raise _error(413, f"a text is longer than {limits.max_text_chars} characters")
    return texts


def serve(run_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8000, top_k: int = 5,
          max_bytes: int = 10 * 1024 * 1024, max_items: int = 32, allowed_hosts: list[str] | None = None) -> None:
    """Load the run and serve it until interrupted."""
    import uvicorn

    from .dense_serve import load_predictor
    predictor = load_predictor(run_dir)
    allowed = allowed_hosts or default_allowed_hosts(host)
    app = create_app(predictor, top_k=top_k, limits=Limits(max_bytes=max_bytes, max_items=max_items),
                     allowed_hosts=allowed)
    print(f"serving {run_dir} ({predictor.modality}, {len(predictor.classes)} classes) on "
          f"http://{host}:{port}/ (Host names accepted: {', '.join(allowed)}; --allowed-hosts)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
