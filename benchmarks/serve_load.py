"""Load on `transferkit serve`: N concurrent clients (asyncio + httpx) posting one image each, as
fast as answers come back, for a bounded time, against the real command on 127.0.0.1. Reports
requests/s, p50/p99 latency and errors (which must be zero) per client count, side by side, with
throughput as a ratio to one client.

    python benchmarks/serve_load.py --run RUN --clients 1,4,16 --seconds 20 --threads 1

Without --run, a demo run is trained first (bundled EfficientNet-Lite0, linear probe, 5 shots per
class on the clip-art set, 96 px) into runs/bench/serve_lite0.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # loopback only


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _train_demo(run: Path) -> None:
    subprocess.run([sys.executable, "-m", "transferkit", "train", str(REPO / "transferkit/demo_data/clipart"),
                    "--backbone", "bundled:efficientnet_lite0", "--strategy", "linear_probe", "--shots", "5",
                    "--image-size", "96", "--out", str(run), "--quiet"], check=True, cwd=REPO)


def _test_images(run: Path, limit: int = 16) -> list[tuple[str, bytes]]:
    import yaml
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    with open(run / "splits.csv", newline="") as f:
        items = [r["item"] for r in csv.DictReader(f) if r["split"] == "test"][:limit]
    root = Path(cfg["data"])
    return [(Path(i).name, (root / i).read_bytes()) for i in items]


async def _client(base: str, images, deadline: float, lat: list, errors: list, offset: int) -> None:
    import httpx
    async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=60) as c:
        i = offset
        while time.perf_counter() < deadline:
            name, data = images[i % len(images)]
            i += 1
            t = time.perf_counter()
            try:
                r = await c.post("/predict", files={"file": (name, data, "image/png")})
                ok = r.status_code == 200 and len(r.json()["predictions"]) == 1
            except Exception as e:  # noqa: BLE001 - every failure counts as an error
                ok, r = False, e
            if ok:
                lat.append(time.perf_counter() - t)
            else:
                errors.append(str(getattr(r, "status_code", r)))


async def _level(base: str, images, clients: int, seconds: float) -> dict:
    lat: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(*(_client(base, images, deadline, lat, errors, k) for k in range(clients)))
    wall = time.perf_counter() - start
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [lat[0]] * 99
    return {"clients": clients, "requests": len(lat), "errors": len(errors), "seconds": round(wall, 2),
            "rps": round(len(lat) / wall, 2), "p50_ms": round(q[49] * 1000, 1), "p99_ms": round(q[98] * 1000, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default=None, help="a finished image run (default: train the demo run)")
    ap.add_argument("--clients", default="1,4,16", help="comma-separated concurrent client counts")
    ap.add_argument("--seconds", type=float, default=20.0, help="duration of each client level")
    ap.add_argument("--threads", type=int, default=1, help="OMP threads of the server")
    ap.add_argument("--out", default="benchmarks/results/serve_load", help="results prefix (.json, .md)")
    args = ap.parse_args()
    run = Path(args.run) if args.run else REPO / "runs/bench/serve_lite0"
    if not (run / "model.safetensors").is_file():
        _train_demo(run)
    images = _test_images(run)
    load_before = round(os.getloadavg()[0], 1)  # other work on the machine shares its cores
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(REPO)}
    server = subprocess.Popen([sys.executable, "-m", "transferkit", "serve", str(run), "--host", HOST,
                               "--port", str(port)], env=env, cwd=REPO)
    base = f"http://{HOST}:{port}"
    try:
        import httpx
        for _ in range(600):
            try:
                if httpx.get(base + "/health", trust_env=False).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        asyncio.run(_level(base, images, 1, 2.0))  # warm-up
        levels = [asyncio.run(_level(base, images, int(c), args.seconds)) for c in args.clients.split(",")]
    finally:
        server.terminate()
        server.wait(timeout=30)
    one = levels[0]["rps"] or 1.0
    for lv in levels:
        lv["rps_vs_first"] = round(lv["rps"] / one, 2)
    command = "python benchmarks/serve_load.py " + " ".join(sys.argv[1:])
    result = {"command": command, "run": str(run), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "load_average_1min_before_after": [load_before, round(os.getloadavg()[0], 1)],
              "server_threads": args.threads, "levels": levels}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(result, indent=2))
    lines = ["| clients | requests | errors | requests/s | vs 1st level | p50 ms | p99 ms |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {lv['clients']} | {lv['requests']} | {lv['errors']} | {lv['rps']} | {lv['rps_vs_first']}x | "
              f"{lv['p50_ms']} | {lv['p99_ms']} |" for lv in levels]
    note = (f"\n\n{result['machine']}; 1-minute load average {load_before} before, "
            f"{result['load_average_1min_before_after'][1]} after; server OMP threads {args.threads}")
    Path(args.out + ".md").write_text(f"`{command}`\n\n" + "\n".join(lines) + note + "\n")
    print("\n".join(lines))
    return 1 if any(lv["errors"] for lv in levels) else 0


if __name__ == "__main__":
    raise SystemExit(main())
