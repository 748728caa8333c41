"""`transferkit serve RUN`: the run behind an HTTP API (FastAPI on uvicorn) and a page.

    POST /predict   multipart images in field `file` (repeat it for several), or JSON
                    {"text": "..."} / {"texts": ["...", ...]}; ?top_k=N. -> {"predictions": [...]}
    GET  /health    {"status": "ok"}
    GET  /info      classes, modality, source, preprocessing, limits
    GET  /          a self-contained page: drop/choose an image or type text, see the top labels

Bad input is a 4xx with a JSON `detail` that says what was wrong: 400 (not an image, empty file,
invalid JSON, wrong modality), 413 (body or image too large, too many inputs), 415 (neither
multipart nor JSON), 422 (JSON of the wrong shape). Inference goes through `engine.Predictor`, the
same transforms and probabilities as `transferkit predict`.
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


def create_app(predictor, *, top_k: int = 5, limits: Limits | None = None):
    """The FastAPI app for a loaded `engine.predictor.Predictor`."""
    limits = limits or Limits()
    app = FastAPI(title="transferkit", description=f"predictions of {predictor.run_dir}")
    page = resources.files("transferkit.ship").joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return page

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
            names, images = await _read_images(request, predictor, limits)
            rows = await run_in_threadpool(predictor.predict_images, images, names, k)
        elif kind == "application/json":
            texts = await _read_texts(request, predictor, limits)
            rows = await run_in_threadpool(predictor.predict_texts, texts, k)
        else:
            raise _error(415, f"content type {kind or 'none'!r} is not accepted: send images as "
                              "multipart/form-data in field 'file', or JSON {\"text\": ...}")
        return {"predictions": rows}

    return _BodyLimit(app, limits.max_bytes)


async def _read_images(request, predictor, limits: Limits):
    from PIL import Image, UnidentifiedImageError

    from ..data import open_rgb
    if predictor.modality != "image":
        raise _error(400, "this run classifies text: send JSON {\"text\": \"...\"} or {\"texts\": [...]}")
    form = await request.form(max_files=limits.max_items, max_fields=8, max_part_size=limits.max_bytes)
    files = [f for f in form.getlist("file") if hasattr(f, "read")]
    if not files:
        fields = ", ".join(sorted(set(form.keys()))) or "none"
        raise _error(400, f"no image in multipart field 'file' (fields sent: {fields})")
    names, images = [], []
    for f in files:
        data = await f.read()
        name = f.filename or "upload"
        if not data:
            raise _error(400, f"file {name!r} is empty")
        try:
            with Image.open(io.BytesIO(data)) as probe:
                if probe.width * probe.height > MAX_PIXELS:
                    raise _error(413, f"image {name!r} is {probe.width}x{probe.height} pixels, over the "
                                      f"limit of {MAX_PIXELS}")
            images.append(open_rgb(io.BytesIO(data)))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise _error(400, f"file {name!r} is not an image PIL can read ({type(e).__name__})") from None
        names.append(name)
    return names, images


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
          max_bytes: int = 10 * 1024 * 1024, max_items: int = 32) -> None:
    """Load the run and serve it until interrupted."""
    import uvicorn

    from ..engine.predictor import Predictor
    predictor = Predictor(run_dir)
    app = create_app(predictor, top_k=top_k, limits=Limits(max_bytes=max_bytes, max_items=max_items))
    print(f"serving {run_dir} ({predictor.modality}, {len(predictor.classes)} classes) on "
          f"http://{host}:{port}/", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
