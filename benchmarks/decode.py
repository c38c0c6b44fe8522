"""Embedding a folder of camera-sized JPEGs end to end: decoding on the main thread between batches
(serial) against decoding ahead in worker threads (preprocess.decode_ahead, what iter_embed does),
same model, same files, interleaved in one run.

    python benchmarks/decode.py --out benchmarks/results/decode_cpu.jsonl
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, median  # noqa: E402

ROOT = Path(__file__).parent.parent


def serial(preprocess, items, workers=0):
    for item in items:
        try:
            yield item, preprocess(item)
        except Exception as e:
            yield item, e


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--n", type=int, default=32, help="JPEGs")
    ap.add_argument("--size", default="2000x1500", help="their size (a camera photo is ~4000x3000)")
    ap.add_argument("--model", default="demo")
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    from PIL import Image
    import mlx_aimv2
    import mlx_aimv2.api as api

    w, h = map(int, a.size.split("x"))
    folder = Path(tempfile.mkdtemp())
    photo = Image.open(ROOT / "examples" / "grace_hopper.jpg").convert("RGB").resize((w, h), Image.BICUBIC)
    files = []
    for i in range(a.n):
        f = folder / f"{i:03d}.jpg"
        photo.save(f, quality=90)
        files.append(f)
    m = mlx_aimv2.load(a.model)
    ahead = api.decode_ahead
    times = {"serial decode": [], "decode ahead in threads": []}
    for _ in range(a.reps):
        for label, fn in (("serial decode", serial), ("decode ahead in threads", ahead)):
            api.decode_ahead = fn
            t = time.perf_counter()
            rows = list(m.iter_embed(files, batch_size=8))
            times[label].append(time.perf_counter() - t)
            assert len(rows) == a.n
    api.decode_ahead = ahead
    base = median(times["serial decode"])
    for label, ts in times.items():
        emit({"what": "embed_folder", "model": a.model, "images": a.n, "size": a.size, "variant": label,
              "img_per_s": round(a.n / median(ts), 1), "vs_serial": round(base / median(ts), 2),
              "times": [round(t, 2) for t in ts]}, a.out)


if __name__ == "__main__":
    main()
