"""Loader throughput: the training stream (tar shards -> decode -> random resized crop + flip ->
tokenise, in mlx-data threads) on web-sized JPEGs (500x375, as a typical image of a web caption
set), for 1..N threads, against what one training step of each preset consumes.

The step's need on a Mac Studio is an estimate, said so: the preset's training FLOPs per image
(benchmarks/common.py: train_flops_per_image, encoder + decoder, x3 for the backward pass) against
half of the M2 Ultra GPU's stated fp32 peak (27.2 TFLOPS). Threads needed = that rate / the rate one
loader thread reaches here (Apple's cores are faster than this VM's, so it errs high).

    python benchmarks/loader.py --out benchmarks/results/loader_cpu.jsonl
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from common import emit
from PIL import Image, ImageEnhance

PHOTO = Path(__file__).parent.parent / "examples" / "grace_hopper.jpg"
MAC_STUDIO_FP32 = 27.2e12  # M2 Ultra, 76-core GPU: Apple's stated fp32 peak
UTILISATION = 0.5  # assumed share of it a training step reaches


def web_jpegs(folder: Path, n: int) -> list[str]:
    """n photos of 500x375 (random crops, flips and colour of a real photo), in 4 webdataset shards."""
    rng = np.random.default_rng(0)
    src = Image.open(PHOTO).convert("RGB")
    w, h = src.size
    shards = []
    for s in range(4):
        path = folder / f"{s:05d}.tar"
        with tarfile.open(path, "w") as tf:
            for i in range(n // 4):
                cw = int(rng.uniform(0.5, 1.0) * w)
                ch = min(h, int(cw * 0.75))
                x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
                img = src.crop((x, y, x + cw, y + ch)).resize((500, 375), Image.BICUBIC)
                img = ImageEnhance.Color(img).enhance(rng.uniform(0.5, 1.5))
                if rng.random() < 0.5:
                    img = img.transpose(Image.FLIP_LEFT_RIGHT)
                b = io.BytesIO()
                img.save(b, format="JPEG", quality=90)
                caption = f"a photo of a woman in uniform, crop {s}-{i}"
                for suffix, data in (("jpg", b.getvalue()), ("txt", caption.encode())):
                    info = tarfile.TarInfo(f"{s}{i:05d}.{suffix}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
        shards.append(str(path))
    return shards


def step_need(encoder: str, image_size: int = 224) -> tuple[float, float]:
    """(train GFLOP per image, images per second a Mac Studio step would consume) for a preset."""
    from common import train_flops_per_image

    from mlx_aimv2.config import TrainConfig
    from mlx_aimv2.train.objectives import AIMv2Objective as AIMv2

    cfg = TrainConfig(encoder=encoder, image_size=image_size)
    model = AIMv2(cfg, out=".").build(SimpleNamespace(vocab_size=1024, pad_id=0))  # lazy: never evaluated
    flops = train_flops_per_image(model, image_size, 77)
    return flops / 1e9, MAC_STUDIO_FP32 * UTILISATION / flops


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--threads", type=int, nargs="+", default=None)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    from mlx_aimv2.data import TrainStream, find_sources
    from mlx_aimv2.tokenizer import train_bpe

    threads = a.threads or sorted({1, 2, os.cpu_count() or 2})
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        web_jpegs(Path(tmp), a.images)
        sources = find_sources(str(Path(tmp) / "*.tar"))
        tok = train_bpe(["a photo of a woman in uniform, crop 1-2"] * 10, 300, Path(tmp) / "tok.json")
        for t in threads:
            it = iter(TrainStream(sources, tok, 224, a.batch, threads=t, shuffle=256))
            next(it)  # warm: shard headers read, threads started
            k = max(2, a.images // a.batch)
            t0 = time.perf_counter()
            for _ in range(k):
                next(it)
            rates[t] = k * a.batch / (time.perf_counter() - t0)
            emit({"what": "loader", "threads": t, "img_per_s": round(rates[t], 1), "jpeg": "500x375"}, a.out)
    per_thread = rates[min(rates)] / min(rates)
    for enc in ("vit-b", "large", "huge", "1B"):
        gflop, need = step_need(enc)
        emit(
            {
                "what": "step need (estimate)",
                "encoder": enc,
                "train_gflop_per_image": round(gflop, 1),
                "mac_studio_img_per_s": round(need, 1),
                "loader_threads_needed": int(np.ceil(need / per_thread)),
                "assumes": f"{UTILISATION:.0%} of {MAC_STUDIO_FP32 / 1e12} TFLOPS fp32; {per_thread:.0f} img/s per thread",
            },
            a.out,
        )
    print(json.dumps({"per_thread_img_per_s": round(per_thread, 1)}))


if __name__ == "__main__":
    main()
