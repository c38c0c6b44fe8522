"""Per-element cost of the transcendental kernels at AIMv2-L's shapes: MLX's own CPU ops, this
package's arithmetic versions (mlx_aimv2/cpu.py) and PyTorch, side by side in one process. Then
attention's core, forward and backward as a training step runs it (compiled), at the pre-training
decoder's causal shape and the encoder's: MLX's own sdpa, cpu.attention and PyTorch's sdpa.

    python benchmarks/cpu_kernels.py --out benchmarks/results/kernels_cpu.jsonl
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import attention_in_head_chunks, emit, median  # noqa: E402


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
    ap.add_argument("--attention-only", action="store_true", help="only attention's forward + backward")
    a = ap.parse_args()
    if not a.attention_only:
        kernels(a.out)
    attention_fwd_bwd(a.out)


def kernels(out):
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
                out,
            )


def attention_fwd_bwd(out, reps: int = 7):
    shapes = {"decoder, causal": ((8, 6, 334, 64), "causal"), "encoder, no mask": ((8, 6, 256, 64), None)}
    for what, (shape, mask) in shapes.items():
        attention_case(what, shape, mask, out, reps)


def attention_case(what: str, shape: tuple, mask, out, reps: int):
    import mlx.core as mx
    import numpy as np
    import torch

    from mlx_aimv2 import cpu

    rng = np.random.default_rng(0)
    q, k, v, g = (rng.standard_normal(shape).astype(np.float32) for _ in range(4))
    args, cot = [mx.array(a) for a in (q, k, v)], mx.array(g)

    def mlx_fn(sdpa):
        def loss(q, k, v):
            return (sdpa(q, k, v, scale=0.125, mask=mask) * cot).sum()

        grad = mx.compile(mx.value_and_grad(loss, argnums=(0, 1, 2)))
        return lambda: mx.eval(grad(*args))

    tq, tk, tv = (torch.from_numpy(a).requires_grad_() for a in (q, k, v))
    tg = torch.from_numpy(g)

    def torch_run():
        o = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=mask == "causal", scale=0.125)
        (o * tg).sum().backward()

    impls = {
        "mlx_stock_sdpa": mlx_fn(mx.fast.scaled_dot_product_attention),
        "mlx_aimv2": mlx_fn(cpu.attention),
        "mlx_heads_in_chunks": mlx_fn(attention_in_head_chunks(1 << 19)),  # one stream: where it wins
        "torch": torch_run,
    }
    times = {name: [] for name in impls}
    for fn in impls.values():
        fn()
    for _ in range(reps):  # in turns, so a machine that drifts slows every contender alike
        for name, fn in impls.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    ms = {name: round(median(ts) * 1e3, 1) for name, ts in times.items()}
    emit(
        {
            "what": "attention_fwd_bwd",
            "shape": list(shape),
            "context": what,
            **{f"{k}_ms": v for k, v in ms.items()},
            "stock_over_ours": round(ms["mlx_stock_sdpa"] / ms["mlx_aimv2"], 2),
            "chunks_over_ours": round(ms["mlx_heads_in_chunks"] / ms["mlx_aimv2"], 2),
            "ours_over_torch": round(ms["mlx_aimv2"] / ms["torch"], 2),
            "torch_threads": torch.get_num_threads(),
        },
        out,
    )


if __name__ == "__main__":
    main()
