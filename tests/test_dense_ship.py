"""`export --format onnx` and `serve` for dense runs (segment, detect, anomaly) on tiny runs: the export
passes its parity check, its shipped postprocess.py answers what `transferkit predict` answers, the
server's /predict rows agree with `transferkit predict` on the same image, and the page draws a mask
in headless Chromium."""

import base64
import importlib.util
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_dense import TINY, write_mvtec, write_segmentation
from test_detection import coco_set
from transferkit.cli import main


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny finished run per dense task: {task: (run, data, an image to predict)}."""
    root = tmp_path_factory.mktemp("dense_ship")
    seg, mv, coco = write_segmentation(root / "seg", n=6), write_mvtec(root / "mv", size=32, n_train=4, n_test=2), \
        root / "coco"
    coco_set(coco, 4)
    tiny = ["--backbone", TINY, "--quiet"]
    assert main(["train", str(seg), *tiny, "--image-size", "32", "--batch-size", "4", "--steps", "2",
                 "--out", str(root / "segment")]) == 0
    assert main(["train", str(mv), *tiny, "--image-size", "32", "--out", str(root / "anomaly")]) == 0
    assert main(["train", str(coco), "--task", "detect", *tiny, "--image-size", "64", "--batch-size", "2",
                 "--steps", "2", "--out", str(root / "detect")]) == 0
    return {"segment": (root / "segment", seg, seg / "images" / "im04.png"),
            "anomaly": (root / "anomaly", mv, mv / "test" / "patch" / "000.png"),
            "detect": (root / "detect", coco, coco / "images" / "img_02.png")}


def _predict(run, image, out, capsys) -> list[dict]:
    """`transferkit predict RUN IMAGE --output OUT --json` rows."""
    capsys.readouterr()
    assert main(["predict", str(run), str(image), "--out", str(out), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _postprocess(folder: Path):
    """The export's own postprocess.py, imported from the export folder (no transferkit in it)."""
    spec = importlib.util.spec_from_file_location(f"post_{folder.name}", folder / "postprocess.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert "transferkit" not in (folder / "postprocess.py").read_text().split('"""', 2)[2]
    return mod


# ------------------------------------------------------------------------------------ export

@pytest.mark.parametrize("task,files", [("segment", ["model.onnx", "postprocess.py"]),
                                        ("detect", ["model.onnx", "anchors.npy", "postprocess.py"]),
                                        ("anomaly", ["model.onnx", "memory_bank.npy", "postprocess.py"])])
def test_dense_run_exports_to_onnx_with_parity_and_its_postprocess_answers_as_predict(runs, task, files,
                                                                                         tmp_path, capsys):
    run, _, image = runs[task]
    out = tmp_path / "onnx"
    capsys.readouterr()
    assert main(["export", str(run), "--format", "onnx", "--out", str(out), "--json"]) == 0
    printed = capsys.readouterr().out
    m = json.loads(printed[printed.index("{"):])
    assert f"parity onnx ({task})" in printed and ": OK" in printed
    assert m == json.loads((out / "export.json").read_text())
    assert m["task"] == task and m["files"] == files and sorted(m["written"]) == sorted(files)
    par = m["parity"]
    assert par["ok"] and par["max_abs_diff"] <= 1e-4 and par["n_inputs"] >= 1
    assert all(c["ok"] for c in par["checks"].values())
    assert m["preprocess"]["size"] == (64 if task == "detect" else 32) and len(m["preprocess"]["mean"]) == 3
    import onnx
    meta = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert meta["task"] == task and json.loads(meta["classes"]) == m["classes"]
    assert json.loads(meta["input_size"]) == m["preprocess"]["size"] and json.loads(meta["channels"]) == 3
    assert json.loads(meta["mean"]) == m["preprocess"]["mean"] and json.loads(meta["source"])["id"] == TINY

    got = _postprocess(out).predict(out, image)
    rows = _predict(run, image, tmp_path / "pred", capsys)
    if task == "segment":
        assert m["classes"] == ["background", "square"]
        assert np.array_equal(got["mask"], np.asarray(Image.open(rows[0]["mask"])))
    elif task == "anomaly":
        assert m["postprocess"]["threshold"] > 0
        assert got["score"] == pytest.approx(rows[0]["score"], rel=1e-3) and got["label"] == rows[0]["label"]
    else:
        assert m["classes"] == ["red", "blue"] and m["postprocess"]["nms_thresh"] == 0.6
        assert len(got["boxes"]) == len(rows) > 0
        order = np.argsort(-got["scores"], kind="stable")
        assert [got["names"][k] for k in order] == [r["label"] for r in rows]
        want = np.array([[r["x1"], r["y1"], r["x2"], r["y2"]] for r in rows])
        assert np.abs(got["boxes"][order] - want).max() <= 0.01

    # the export folder's rules are classification's: an earlier export is replaced only with --overwrite
    assert main(["export", str(run), "--format", "onnx", "--out", str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err


def test_a_dense_run_refuses_other_formats_and_a_tampered_postprocess_fails_parity(runs, tmp_path, capsys,
                                                                                    monkeypatch):
    run = runs["anomaly"][0]
    assert main(["export", str(run), "--format", "torchscript", "--out", str(tmp_path / "ts")]) == 2
    assert "is a anomaly run; dense runs export to --format onnx only" in capsys.readouterr().err
    from transferkit.ship import dense_post
    real = dense_post.anomaly_map
    monkeypatch.setattr(dense_post, "anomaly_map", lambda *a: real(*a) * 1.01)
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "max |map diff| / threshold" in err and "FAILED" in err


# ------------------------------------------------------------------------------------ serve

def _client(run):
    from fastapi.testclient import TestClient

    from transferkit.ship.dense_serve import load_predictor
    from transferkit.ship.serve import create_app
    return TestClient(create_app(load_predictor(run)), base_url="http://127.0.0.1")


def _png(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


@pytest.mark.parametrize("task", ["segment", "detect", "anomaly"])
def test_serve_predict_of_a_dense_run_agrees_with_transferkit_predict(runs, task, tmp_path, capsys):
    run, _, image = runs[task]
    client = _client(run)
    info = client.get("/info").json()
    assert info["task"] == task and info["modality"] == "image"
    files = [("file", ("a.png", image.read_bytes(), "image/png")), ("file", ("bad.png", b"nope", "image/png"))]
    r = client.post("/predict", files=files)
    assert r.status_code == 200, r.text
    row, bad = r.json()["predictions"]
    assert bad["input"] == "bad.png" and "not an image" in bad["error"]  # one bad file is an error row
    assert row["task"] == task and (row["width"], row["height"]) == Image.open(image).size
    rows = _predict(run, image, tmp_path / "pred", capsys)
    if task == "segment":
        mask = _png(row["mask_png"])
        assert mask.mode == "P" and np.array_equal(np.asarray(mask), np.asarray(Image.open(rows[0]["mask"])))
        assert row["classes"] == rows[0]["classes"] and sum(row["classes"].values()) == pytest.approx(1, abs=1e-3)
        assert info["palette"][0] == [0, 0, 0] and len(info["palette"]) == 2
    elif task == "anomaly":
        assert row["score"] == rows[0]["score"] and row["label"] == rows[0]["label"]
        assert row["is_anomalous"] == (row["score"] >= row["threshold"]) and row["threshold"] == info["threshold"]
        heat = _png(row["heatmap_png"])
        assert heat.mode == "RGB" and heat.size == (row["width"], row["height"])
    else:
        want = [{"label": w["label"], "score": w["score"], "box": [w["x1"], w["y1"], w["x2"], w["y2"]]}
                for w in rows]
        assert row["boxes"] == want and len(want) > 0
    # the same image twice in one request: the same answer twice (serve's determinism); against the
    # answer of a batch of one, an anomaly score may move in its 6th digit (float sums over another batch)
    again = client.post("/predict", files=[("file", ("a.png", image.read_bytes(), "image/png"))] * 2).json()
    first, second = again["predictions"]
    assert first == second
    if task == "anomaly":
        assert first.pop("score") == pytest.approx(row.pop("score"), rel=1e-5)
        first.pop("heatmap_png"), row.pop("heatmap_png")
    assert first == row


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="Debian chromium is not installed")
def test_page_in_headless_chromium_draws_the_mask_of_a_segment_run(runs):
    import uvicorn
    from playwright.sync_api import sync_playwright

    from test_serve import _free_port, _wait_healthy
    from transferkit.ship.dense_serve import load_predictor
    from transferkit.ship.serve import create_app
    run, _, image = runs["segment"]
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(load_predictor(run)), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-proxy-server"]
    try:
        _wait_healthy(base)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=args, headless=True)
            try:
                page = browser.new_page()
                page.goto(base + "/")
                page.wait_for_selector("body[data-ready='1']", timeout=30_000)
                assert "segment image model" in page.inner_text("#meta")
                page.set_input_files("#file", str(image))
                page.wait_for_selector("#results canvas.viz[data-drawn='1']", timeout=30_000)
                # pixels of the drawn canvas that differ from the image alone: the mask overlay
                changed = page.evaluate("""async () => {
                    const c = document.querySelector('#results canvas.viz');
                    const im = new Image(); im.src = document.querySelector('#file').files.length
                        ? URL.createObjectURL(document.querySelector('#file').files[0]) : '';
                    await im.decode();
                    const o = document.createElement('canvas'); o.width = c.width; o.height = c.height;
                    o.getContext('2d').drawImage(im, 0, 0, c.width, c.height);
                    const a = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                    const b = o.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                    let n = 0;
                    for (let i = 0; i < a.length; i += 4)
                        if (a[i] !== b[i] || a[i + 1] !== b[i + 1] || a[i + 2] !== b[i + 2]) n++;
                    return [c.width, c.height, n];
                }""")
                labels = page.locator("#results .pred .lbl").all_inner_texts()
                assert page.inner_text("#status") == ""
            finally:
                browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    served = _client(run).post("/predict", files={"file": ("a.png", image.read_bytes(), "image/png")}).json()
    shares = served["predictions"][0]["classes"]
    w, h, n = changed
    assert (w, h) == Image.open(image).size
    assert labels == list(shares)
    assert n == round(shares.get("square", 0) * w * h)  # exactly the pixels of the non-background class
