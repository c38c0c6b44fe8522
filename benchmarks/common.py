"""Shared helpers for the benchmarks: timing, FLOP counts, the GEMM peak, memory."""

from __future__ import annotations

import json
import statistics
import time

import mlx.core as mx

# aimv2-large-patch14-224's vision tower as transformers' Aimv2VisionConfig arguments
L14 = dict(
    hidden_size=1024,
    intermediate_size=2816,
    num_hidden_layers=24,
    num_attention_heads=8,
    image_size=224,
    patch_size=14,
    use_head=False,
)


def timed(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def gemm_peak_gflops(n: int = 2048, reps: int = 5) -> float:
    """The best fp32 GEMM rate MLX reaches on this device (the 'peak' MFU is measured against)."""
    a, b = mx.random.normal((n, n)), mx.random.normal((n, n))
    mx.eval(a @ b)
    return max(2 * n**3 / t / 1e9 for t in timed(lambda: mx.eval(a @ b), reps))


def encoder_flops(d: int, depth: int, mlp: int, tokens: int, patch_dim: int = 588) -> float:
    """Forward FLOPs of the ViT trunk on `tokens` tokens (multiply-add = 2; elementwise not counted)."""
    per_block = 2 * tokens * (4 * d * d + 3 * d * mlp) + 2 * 2 * tokens * tokens * d
    return 2 * tokens * patch_dim * d + depth * per_block


def median(xs):
    return statistics.median(xs)


def emit(record: dict, path=None):
    line = json.dumps(record)
    print(line)
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
