"""`mlx-aimv2 serve` under load: N concurrent clients for a fixed time against a real server on
localhost, each sending one image per request (a data URI, as an app would). Requests/s, p50 / p99
latency, errors, the server's resident memory at the start and the end, and the served images/s
against the offline batch throughput of the same model in the same run (encode_image on batches).

    python benchmarks/serve.py --clients 16 --seconds 30 --out benchmarks/results/serve_demo_lit.jsonl
"""

from __future__ import annotations

import argparse
import base64
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from common import emit, rss_mib  # noqa: E402

import mlx_aimv2  # noqa: E402

ROOT = Path(__file__).parent.parent


def offline_images_per_s(model: str, images: list, seconds: float, batch: int) -> float:
    m = mlx_aimv2.load(model)
    from PIL import Image

    pil = [Image.open(p).convert("RGB") for p in images]
    m.encode_image(pil[:batch])  # warm
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        m.encode_image([pil[(done + i) % len(pil)] for i in range(batch)])
        done += batch
    return done / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="demo-lit")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    files = sorted((ROOT / "examples" / "scenes" / "images").glob("*.jpg"))
    uris = ["data:image/jpeg;base64," + base64.b64encode(f.read_bytes()).decode() for f in files]
    offline = offline_images_per_s(a.model, files, min(a.seconds, 15), 32)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "mlx_aimv2", "serve", "--model", a.model, "--port", str(port)],
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        httpx.post(url + "/v1/embeddings", json={"input": uris[0]}, timeout=60)  # warm
        rss_start = rss_mib(server.pid)
        latencies, errors, stop = [], [], time.perf_counter() + a.seconds
        lock = threading.Lock()

        def client(i: int):
            with httpx.Client(timeout=120) as c:
                j = i
                while time.perf_counter() < stop:
                    t = time.perf_counter()
                    try:
                        r = c.post(url + "/v1/embeddings", json={"input": uris[j % len(uris)]})
                        ok = r.status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    with lock:
                        (latencies if ok else errors).append(time.perf_counter() - t)
                    j += a.clients

        rss = []  # the server's memory every 5 s: flat, or growing with the run

        def sample():
            while time.perf_counter() < stop:
                rss.append(round(rss_mib(server.pid)))
                time.sleep(5)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
        threads.append(threading.Thread(target=sample))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.perf_counter() - t0
        rss_end = rss_mib(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    lat = np.array(latencies) * 1000
    served = len(latencies) / took
    emit(
        {
            "bench": "serve",
            "model": a.model,
            "clients": a.clients,
            "seconds": round(took, 1),
            "requests": len(latencies),
            "errors": len(errors),
            "requests_per_s": round(served, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "offline_images_per_s": round(offline, 1),
            "served_vs_offline": round(served / offline, 3),
            "server_rss_mib_start": round(rss_start),
            "server_rss_mib_end": round(rss_end),
            "server_rss_mib_every_5s": rss,
        },
        a.out,
    )


if __name__ == "__main__":
    main()
