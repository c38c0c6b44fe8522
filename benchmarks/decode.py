"""Decoding camera-sized JPEGs for the encoder, and what it does to embedding throughput.

1. decode + preprocess alone (no model): images per second with 1, 2 and 4 worker threads
   (preprocess.decode_ahead), exact and --fast-decode (PIL's reduced-size JPEG decode first);
2. end to end, the demo and an AIMv2-L-shaped encoder: decoding on the main thread between batches
   (serial) against decoding ahead in threads (what iter_embed does), exact and fast;
3. the fast path's fidelity: pooled cosine of its embeddings against the exact path's, per photo,
   and the largest pixel difference of the model input.

The JPEGs are real photos (grace_hopper plus scikit-image's samples, pip install scikit-image)
upscaled to 4000x3000 and saved at quality 90, the size of a 12-megapixel camera's files.

    python benchmarks/decode.py --out benchmarks/results/decode_cpu.jsonl
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import L14, emit, median  # noqa: E402
from quantization import photos  # noqa: E402

ROOT = Path(__file__).parent.parent


def serial(preprocess, items, workers=0):
    for item in items:
        try:
            yield item, preprocess(item)
        except Exception as e:
            yield item, e


def camera_jpegs(folder: Path, n: int, size: tuple) -> list[Path]:
    from PIL import Image

    srcs = photos()
    out = []
    for i in range(n):
        f = folder / f"{i:03d}.jpg"
        Image.open(srcs[i % len(srcs)]).convert("RGB").resize(size, Image.BICUBIC).save(f, quality=90)
        out.append(f)
    return out


def decode_only(files, reps: int, out) -> None:
    from mlx_aimv2.preprocess import Preprocessor, decode_ahead

    for fast in (False, True):
        p = Preprocessor(fast_decode=fast)
        for workers in (1, 2, 4):
            ts = []
            for _ in range(reps):
                t = time.perf_counter()
                got = list(decode_ahead(p, files, workers))
                ts.append(time.perf_counter() - t)
                assert not any(isinstance(x, Exception) for _, x in got)
            emit(
                {
                    "what": "decode_preprocess",
                    "decode": "fast" if fast else "exact",
                    "threads": workers,
                    "images": len(files),
                    "img_per_s": round(len(files) / median(ts), 1),
                },
                out,
            )


def end_to_end(name: str, m, files, reps: int, out) -> None:
    import mlx_aimv2.inference as api

    ahead = api.decode_ahead
    variants = [
        ("serial decode, exact", serial, False),
        ("decode ahead in threads, exact", ahead, False),
        ("decode ahead in threads, fast", ahead, True),
    ]
    times = {v[0]: [] for v in variants}
    m.iter_embed(files[:1]).__next__()  # warm-up: compile and allocate outside the timings
    for _ in range(reps):
        for label, fn, fast in variants:  # interleaved: a slow spell of the machine hits all alike
            api.decode_ahead = fn
            t = time.perf_counter()
            rows = list(m.iter_embed(files, batch_size=8, fast_decode=fast))
            times[label].append(time.perf_counter() - t)
            assert len(rows) == len(files)
    api.decode_ahead = ahead
    base = median(times[variants[0][0]])
    for label, ts in times.items():
        emit(
            {
                "what": "embed_folder",
                "model": name,
                "images": len(files),
                "variant": label,
                "img_per_s": round(len(files) / median(ts), 2),
                "vs_serial": round(base / median(ts), 2),
                "times": [round(t, 2) for t in ts],
            },
            out,
        )


def fidelity(name: str, m, files, out) -> None:
    from mlx_aimv2.preprocess import Preprocessor

    exact = m.embed([str(f) for f in files])
    fast = m.embed([str(f) for f in files], fast_decode=True)
    cos = (exact * fast).sum(1) / np.linalg.norm(exact, axis=1) / np.linalg.norm(fast, axis=1)
    a, b = Preprocessor(), Preprocessor(fast_decode=True)
    px = [np.abs(a(f) - b(f)) * np.asarray(a.std, np.float32) * 255 for f in files]  # in 0-255 intensity
    emit(
        {
            "what": "fast_decode_fidelity",
            "model": name,
            "photos": len(files),
            "pooled_cosine_min": round(float(cos.min()), 5),
            "pooled_cosine_mean": round(float(cos.mean()), 5),
            "input_abs_diff_max_255": round(float(max(p.max() for p in px)), 1),
            "input_abs_diff_mean_255": round(float(np.mean([p.mean() for p in px])), 2),
        },
        out,
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--n", type=int, default=24, help="JPEGs for the decode and demo runs")
    ap.add_argument("--n-large", type=int, default=8, help="JPEGs for the AIMv2-L-shaped runs")
    ap.add_argument("--size", default="4000x3000")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--skip-large", action="store_true")
    a = ap.parse_args()
    import mlx_aimv2

    size = tuple(map(int, a.size.split("x")))
    tmp = Path(tempfile.mkdtemp())
    files = camera_jpegs(tmp, a.n, size)
    emit(
        {
            "what": "setup",
            "jpegs": len(files),
            "size": a.size,
            "mean_mib": round(float(np.mean([f.stat().st_size for f in files])) / 2**20, 2),
            "photos": [p.name for p in photos()],
        },
        a.out,
    )
    decode_only(files, a.reps, a.out)
    demo = mlx_aimv2.load("demo")
    end_to_end("demo", demo, files, a.reps, a.out)
    fidelity("demo", demo, files, a.out)
    if not a.skip_large:
        import torch
        from transformers import Aimv2VisionConfig, Aimv2VisionModel

        torch.manual_seed(0)
        Aimv2VisionModel(Aimv2VisionConfig(**L14)).save_pretrained(tmp / "l14-hf")
        large = mlx_aimv2.load(str(mlx_aimv2.convert(str(tmp / "l14-hf"), tmp / "l14")))
        end_to_end("AIMv2-L/14-224 shape, random weights", large, files[: a.n_large], 1, a.out)
        fidelity("AIMv2-L/14-224 shape, random weights", large, files, a.out)


if __name__ == "__main__":
    main()
