"""Per-element cost of the transcendental kernels at AIMv2-L's shapes: MLX's own CPU ops, this
package's arithmetic versions (mlx_aimv2/cpu.py) and PyTorch, side by side in one process.

    python benchmarks/cpu_kernels.py --out benchmarks/results/kernels_cpu.jsonl
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, median  # noqa: E402


def per_element_ns(fn, x, n, reps=9):
    fn(x)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return round(median(times) / n * 1e9, 2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np
    import torch

    from mlx_aimv2 import cpu

    shapes = {
        "silu (1, 256, 2816): an MLP gate": (1, 256, 2816),
        "softmax (1, 8, 256, 256): attention": (1, 8, 256, 256),
    }
    for what, shape in shapes.items():
        data = (np.random.default_rng(0).standard_normal(shape) * 4).astype(np.float32)
        x, t = mx.array(data), torch.from_numpy(data)
        n = data.size
        rows = {
            "exp": (lambda v: mx.eval(mx.exp(v)), lambda v: mx.eval(cpu.exp(v)), lambda v: torch.exp(v)),
            "silu": (
                lambda v: mx.eval(nn.silu(v)),
                lambda v: mx.eval(cpu.silu(v)),
                lambda v: torch.nn.functional.silu(v),
            ),
            "softmax": (
                lambda v: mx.eval(mx.softmax(v, axis=-1, precise=True)),
                lambda v: mx.eval(cpu.softmax(v)),
                lambda v: torch.softmax(v, dim=-1),
            ),
        }
        for op, (stock, ours, ref) in rows.items():
            s, o, r = per_element_ns(stock, x, n), per_element_ns(ours, x, n), per_element_ns(ref, t, n)
            emit(
                {
                    "what": "kernel",
                    "op": op,
                    "shape": list(shape),
                    "context": what,
                    "mlx_stock_ns": s,
                    "mlx_aimv2_cpu_ns": o,
                    "torch_ns": r,
                    "stock_over_ours": round(s / o, 2),
                    "ours_over_torch": round(o / r, 2),
                    "torch_threads": torch.get_num_threads(),
                },
                a.out,
            )


if __name__ == "__main__":
    main()
