"""Which kernels the CPU embedding forward should use, measured on the forward itself: AIMv2-L/14-224
(transformers' random weights) embedding a batch through `features` as shipped (split over the CPU
streams, cpu.attention and cpu.silu), then with MLX's own sdpa, its own silu, or both swapped in, all
timed in turns in one process. MLX's sdpa wins a microbenchmark of attention alone
(benchmarks/cpu_kernels.py); this says what each kernel does to the whole forward.

    python benchmarks/embed_variants.py --out benchmarks/results/embed_variants_cpu.jsonl   # ~4 min
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import L14, attention_deferred_normalization, attention_in_head_chunks, emit, median  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="8,1")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", nargs="*", default=None, help="variant names (default: all)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np
    import torch
    from transformers import Aimv2VisionConfig, Aimv2VisionModel

    import mlx_aimv2
    from mlx_aimv2 import cpu

    folder = Path(tempfile.mkdtemp()) / "ckpt"
    torch.manual_seed(0)
    Aimv2VisionModel(Aimv2VisionConfig(**L14)).save_pretrained(folder)
    model = mlx_aimv2.load(str(folder))
    layers = [m for _, m in model.module.named_modules()]
    variants = {
        "shipped": (cpu.attention, cpu.silu),
        "deferred_normalization": (attention_deferred_normalization, cpu.silu),  # (e @ v) / sum(e)
        "heads_in_chunks": (attention_in_head_chunks(1 << 19), cpu.silu),  # 2 heads' scores at a time, in L2
        "mlx_sdpa": (mx.fast.scaled_dot_product_attention, cpu.silu),
        "mlx_silu": (cpu.attention, nn.silu),
        "mlx_both": (mx.fast.scaled_dot_product_attention, nn.silu),
    }
    variants = {k: v for k, v in variants.items() if k == "shipped" or not a.only or k in a.only}

    def run(name, x):
        sdpa, act = variants[name]
        for m in layers:  # the seams cpu.use_kernels fills
            if hasattr(type(m), "sdpa"):
                m.sdpa = sdpa
            if hasattr(type(m), "act"):
                m.act = act
        t = time.perf_counter()
        out = model.features(x, pool="none")["tokens"]
        mx.eval(out)
        return time.perf_counter() - t, out

    for b in (int(v) for v in a.batches.split(",")):
        x = mx.array(np.random.default_rng(0).standard_normal((b, 224, 224, 3)).astype(np.float32))
        ref = run("shipped", x)[1]
        diff = {name: mx.abs(run(name, x)[1] - ref).max().item() for name in variants}  # also the warm-up
        times = {name: [] for name in variants}
        for _ in range(a.reps):
            for name in variants:
                times[name].append(run(name, x)[0])
        base = median(times["shipped"])
        for name, ts in times.items():
            emit(
                {
                    "what": "embed_variant", "variant": name, "batch": b, "s_per_batch": round(median(ts), 3),
                    "vs_shipped": round(median(ts) / base, 3), "max_abs_diff": diff[name],
                    "times": [round(t, 3) for t in ts],
                },
                a.out,
            )  # fmt: skip
    run("shipped", x)


if __name__ == "__main__":
    main()
