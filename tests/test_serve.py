"""`transferkit serve`: the real command in a subprocess on a free loopback port, asked with a real
HTTP client (httpx); a text run's app under uvicorn in a thread; and the page in headless Chromium
(Debian's /usr/bin/chromium driven by Playwright), uploading an image and reading the label."""

import io
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from transferkit.cli import main
from transferkit.engine.run import predict_run

TINY = "timm:test_resnet@random"
REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client(base: str) -> httpx.Client:
    return httpx.Client(base_url=base, trust_env=False, timeout=60)  # loopback only, no proxies


def _wait_healthy(base: str, proc=None, seconds: float = 120) -> None:
    end = time.time() + seconds
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stdout.read()}")
        try:
            if _client(base).get("/health").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("server did not come up")


@pytest.fixture(scope="module")
def image_server(tmp_path_factory):
    """`transferkit serve RUN --port P` on a tiny image run, with a 64 KiB body limit and 3 files."""
    from conftest import write_image_folder
    root = tmp_path_factory.mktemp("serve_img")
    data = write_image_folder(root / "images")
    run = root / "run"
    assert main(["train", str(data), "--backbone", TINY, "--image-size", "32", "--batch-size", "8",
                 "--steps", "3", "--strategy", "full", "--out", str(run), "--quiet"]) == 0
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "transferkit", "serve", str(run), "--host", "127.0.0.1",
                             "--port", str(port), "--max-mb", "0.0625", "--max-items", "3", "--top-k", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, proc)
        yield base, run, data
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _png(path: Path) -> bytes:
    return path.read_bytes()


def test_health_info_and_page(image_server):
    base, _, _ = image_server
    c = _client(base)
    assert c.get("/health").json() == {"status": "ok"}
    info = c.get("/info").json()
    assert info["classes"] == ["blue", "green", "red"] and info["modality"] == "image"
    assert info["source"]["id"] == TINY and info["preprocess"]["size"] == 32
    page = c.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script>" in page.text and "http://" not in page.text and "https://" not in page.text


def test_predict_several_images_as_transferkit_predict_does(image_server):
    base, run, data = image_server
    files = [data / "red" / "red_00.png", data / "blue" / "blue_03.png"]
    r = _client(base).post("/predict", files=[("file", (f.name, _png(f), "image/png")) for f in files])
    assert r.status_code == 200
    preds = r.json()["predictions"]
    assert [p["input"] for p in preds] == [f.name for f in files]
    expected = predict_run(run, [str(f) for f in files], top_k=3)
    for got, want in zip(preds, expected):
        assert got["label"] == want["label"] and len(got["top"]) == 3
        assert [t["label"] for t in got["top"]] == [t["label"] for t in want["top"]]
        assert abs(got["probability"] - want["probability"]) <= 1e-5
        assert abs(sum(t["probability"] for t in got["top"]) - 1.0) <= 1e-4


def test_bad_requests_get_clear_4xx(image_server):
    base, _, data = image_server
    c = _client(base)
    img = _png(data / "red" / "red_00.png")
    cases = [
        (dict(files={"file": ("notes.png", b"not an image at all", "image/png")}), 400, "not an image"),
        (dict(files={"file": ("empty.png", b"", "image/png")}), 400, "is empty"),
        (dict(files={"photo": ("a.png", img, "image/png")}), 400, "field 'file'"),
        (dict(files={"file": ("big.png", b"\0" * 70_000, "image/png")}), 413, "over the limit"),
        (dict(files=[("file", ("a.png", img, "image/png"))] * 4), 400, "Too many files"),
        (dict(json={"text": "a red square"}), 400, "classifies images"),
        (dict(content=b"hello", headers={"content-type": "text/plain"}), 415, "not accepted"),
    ]
    for kwargs, status, words in cases:
        r = c.post("/predict", **kwargs)
        assert r.status_code == status, (kwargs.keys(), r.text)
        assert words in r.json()["detail"], r.text
    assert c.get("/health").status_code == 200  # still serving


@pytest.fixture(scope="module")
def text_server(tmp_path_factory, tiny_bert_dir):
    import uvicorn

    from test_text import _sentences, _train, _write_csv
    from transferkit.engine.predictor import Predictor
    from transferkit.ship.serve import create_app
    root = tmp_path_factory.mktemp("serve_txt")
    data = _write_csv(root / "texts.csv", _sentences())
    run = root / "run"
    assert _train(data, run, tiny_bert_dir, steps=3) == 0
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(Predictor(run), top_k=2), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    _wait_healthy(base)
    yield base, run
    server.should_exit = True
    thread.join(timeout=30)


def test_text_predictions_and_bad_json(text_server):
    base, run = text_server
    c = _client(base)
    one = c.post("/predict", json={"text": "cat dog bird"}).json()["predictions"]
    many = c.post("/predict?top_k=3", json={"texts": ["rain and snow", "red blue"]}).json()["predictions"]
    assert len(one) == 1 and len(one[0]["top"]) == 2 and len(many) == 2 and len(many[0]["top"]) == 3
    expected = predict_run(run, ["cat dog bird", "rain and snow", "red blue"], top_k=3)
    for got, want in zip(one + many, expected):
        assert got["label"] == want["label"] and abs(got["probability"] - want["probability"]) <= 1e-5
    cases = [
        (dict(content=b"{not json", headers={"content-type": "application/json"}), 400, "not valid JSON"),
        (dict(json={"sentence": "x"}), 422, "exactly one of"),
        (dict(json={"texts": []}), 422, "empty text"),
        (dict(json={"texts": ["ok", 3]}), 422, "list of strings"),
        (dict(json={"texts": ["a"] * 33}), 413, "over the limit"),
        (dict(files={"file": ("a.png", b"x", "image/png")}), 400, "classifies text"),
    ]
    for kwargs, status, words in cases:
        r = c.post("/predict", **kwargs)
        assert r.status_code == status and words in r.json()["detail"], r.text


@pytest.mark.skipif(not Path(CHROMIUM).exists(),
                    reason=f"Debian chromium is not installed at {CHROMIUM} (apt-get install chromium; "
                           ".ci/run installs it)")
def test_page_in_headless_chromium_shows_the_label_of_an_uploaded_image(image_server):
    """Upload an image: while /predict is held the status says "classifying…"; once answered the
    status is cleared and the top label's row alone has the highlight (class and computed style)."""
    from playwright.sync_api import sync_playwright
    base, _, data = image_server
    image = data / "green" / "green_05.png"
    want = _client(base).post("/predict", files={"file": (image.name, _png(image), "image/png")}).json()
    want_label = want["predictions"][0]["label"]
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-proxy-server"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=args, headless=True)
        try:
            page = browser.new_page()
            page.goto(base + "/")
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            assert "3 classes" in page.inner_text("#meta")
            held = []  # the /predict request, held until the status has been read
            page.route("**/predict", lambda route: held.append(route))
            page.set_input_files("#file", str(image))
            for _ in range(300):
                if held:
                    break
                page.wait_for_timeout(100)
            assert held, "the page sent no /predict request"
            page.wait_for_timeout(200)  # the message must stay while the answer is awaited
            in_flight = page.inner_text("#status")
            results_in_flight = page.locator("#results .pred").count()
            held[0].continue_()  # let it through (unroute first would pass it on itself)
            page.wait_for_selector("#results .pred", timeout=30_000)
            shown = page.get_attribute("#results .pred", "data-label")
            labels = page.locator("#results .pred .lbl").all_inner_texts()
            widths = page.locator("#results .pred .bar").evaluate_all("bs => bs.map(b => b.style.width)")
            rows = page.locator("#results .pred .row").evaluate_all(
                "rs => rs.map(r => [r.className, getComputedStyle(r.querySelector('.bar')).backgroundColor,"
                " getComputedStyle(r.querySelector('.lbl')).fontWeight])")
            assert page.inner_text("#status") == ""  # cleared once the answer is shown
        finally:
            browser.close()
    assert in_flight == "classifying…" and results_in_flight == 0
    assert shown == want_label and labels[0] == want_label and len(labels) == 3
    # the top label's row, and it alone, is highlighted: green bar, bold label
    assert [r[0] for r in rows] == ["row top", "row", "row"]
    assert rows[0][1] == "rgb(31, 157, 85)" and {r[1] for r in rows[1:]} == {"rgb(59, 111, 212)"}
    assert int(rows[0][2]) >= 600 and all(int(r[2]) < 600 for r in rows[1:])
    top = want["predictions"][0]["top"][0]["probability"]
    assert widths[0] == f"{100 * top:.1f}%"


def test_one_image_posted_from_20_threads_gets_one_answer(image_server):
    """The views' random crops are seeded through torch's global generator; 200 concurrent posts of
    one image gave up to 11 different probabilities before the transforms ran under the lock."""
    from concurrent.futures import ThreadPoolExecutor
    base, _, data = image_server
    assert _client(base).get("/info").json()["tta_views"] > 0  # random views are what is seeded
    img = _png(data / "green" / "green_01.png")

    def ask(_):
        with _client(base) as c:
            r = c.post("/predict", files={"file": ("g.png", img, "image/png")})
            assert r.status_code == 200, r.text
            return tuple((t["label"], t["probability"]) for t in r.json()["predictions"][0]["top"])
    with ThreadPoolExecutor(20) as pool:
        answers = set(pool.map(ask, range(200)))
    assert len(answers) == 1, answers


def test_one_bad_file_among_several_is_an_error_row(image_server):
    from PIL import Image
    base, run, data = image_server
    good = data / "red" / "red_02.png"
    strip = io.BytesIO()
    Image.new("RGB", (100_000, 1), (200, 30, 30)).save(strip, "PNG")
    files = [("file", ("good.png", _png(good), "image/png")), ("file", ("notes.png", b"not an image", "image/png")),
             ("file", ("strip.png", strip.getvalue(), "image/png"))]
    r = _client(base).post("/predict", files=files)
    assert r.status_code == 200, r.text
    rows = r.json()["predictions"]
    assert [p["input"] for p in rows] == ["good.png", "notes.png", "strip.png"]
    assert rows[0]["label"] == predict_run(run, [str(good)], top_k=3)[0]["label"] and "error" not in rows[0]
    assert rows[1]["label"] is None and "not an image PIL can read" in rows[1]["error"]
    assert rows[2]["label"] is None and "100000x1 pixels" in rows[2]["error"] and rows[2]["top"] == []


def test_host_header_allow_list_and_offline_docs(image_server):
    base, _, _ = image_server
    port = base.rsplit(":", 1)[1]
    c = _client(base)
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.2"):
        r = c.get("/health", headers={"host": host})
        assert r.status_code == 400 and "--allowed-hosts" in r.json()["detail"], host
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST"):
        assert c.get("/health", headers={"host": host}).status_code == 200, host
    docs = c.get("/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text and "POST /predict" in docs.text
    assert "http://" not in docs.text and "https://" not in docs.text
    assert c.get("/redoc").status_code == 404  # ReDoc's page loads its script from a CDN too
    assert c.get("/openapi.json").json()["paths"]["/predict"]


def test_allowed_hosts_defaults_and_star():
    from transferkit.ship.serve import _host_name, default_allowed_hosts
    assert default_allowed_hosts("127.0.0.1") == ["127.0.0.1", "localhost", "::1"]
    assert default_allowed_hosts("0.0.0.0") == ["localhost", "127.0.0.1", "::1"]
    assert default_allowed_hosts("192.168.1.5")[0] == "192.168.1.5"
    assert [_host_name(h) for h in ("a.b:80", "[::1]:8000", "::1", "A.B")] == ["a.b", "::1", "::1", "a.b"]


def test_an_empty_allowed_hosts_is_refused_before_the_run_loads(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "no_run"), "--allowed-hosts", " , "]) == 2
    err = capsys.readouterr().err
    assert "transferkit: error: --allowed-hosts is empty" in err and "Traceback" not in err
