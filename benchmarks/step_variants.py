"""What was tried to speed up the CPU training step (issue 30), and what each did to the whole step:
the trainer's own compiled step (ViT-S/14 + decoder, batch 8, fp32), built once per variant with one
change in place while it is traced, then all variants timed in turns (this machine drifts by up to
20 % over a run; turns slow every variant alike). A variant that wins in a microbenchmark of its own
op can lose here: the step is bound by passes over memory on two streams at once, not by one op.

The variants other than `baseline` are stand-ins for this measurement; the training code is untouched.

    python benchmarks/step_variants.py --out benchmarks/results/step_variants_cpu.jsonl   # ~8 min
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    attention_deferred_normalization,
    attention_in_head_chunks,
    emit,
    median,
    step_arguments,
    timed,
    training_step,
)


def variants():
    """name -> (what it changes, a context manager that puts the change in place)."""
    import mlx.core as mx
    import mlx.nn as nn

    from mlx_aimv2 import cpu
    from mlx_aimv2.models import layers
    from mlx_aimv2.models.layers import causal_mask

    @contextlib.contextmanager
    def patched(obj, name, value):
        old = getattr(obj, name) if not isinstance(obj, dict) else obj[name]
        if isinstance(obj, dict):
            obj[name] = value
        else:
            setattr(obj, name, value)
        try:
            yield
        finally:
            if isinstance(obj, dict):
                obj[name] = old
            else:
                setattr(obj, name, old)

    def vjp_on_default_stream(forward, backward):  # before: MLX's placement of a custom vjp
        fn = mx.custom_function(forward)
        fn.vjp(backward)
        return fn

    def autodiff_softmax(x, keep=None):  # before: autodiff through max, exp and the division
        x = x if keep is None else mx.where(keep, x, -mx.inf)
        e = cpu.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def causal_blocks(q, k, v, scale, mask=None):  # four blocks of query rows, each over its own keys only
        if not isinstance(mask, str):
            return cpu.attention(q, k, v, scale, mask)
        n, outs = q.shape[-2], []
        cuts = [n * i // 4 for i in range(5)]
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            s = (q[..., lo:hi, :] * scale) @ k[..., :hi, :].swapaxes(-1, -2)
            keep = mx.arange(lo, hi)[:, None] >= mx.arange(hi)[None, :]
            outs.append(cpu.softmax(s, keep) @ v[..., :hi, :])
        return mx.concatenate(outs, axis=-2)

    @mx.custom_function
    def rowsum_core(q, k, v, keep):  # FlashAttention's backward: rowsum(dP * P) = rowsum(dO * O)
        p = cpu._rows(mx.where(keep, q @ k.swapaxes(-1, -2), -mx.inf))
        return p @ v, p

    @rowsum_core.vjp
    def _rowsum_vjp(primals, cotangents, outputs):
        q, k, v, keep = primals
        (g, _), (o, p) = cotangents, outputs
        ds = p * (g @ v.swapaxes(-1, -2) - (g * o).sum(axis=-1, keepdims=True))
        return ds @ k, ds.swapaxes(-1, -2) @ q, p.swapaxes(-1, -2) @ g, mx.zeros_like(keep)

    def rowsum_attention(q, k, v, scale, mask=None):
        if mask is None:
            mask = mx.array(True)
        elif isinstance(mask, str):
            mask = causal_mask(q.shape[-2])
        return rowsum_core(q * scale, k, v, mask)[0]

    taylor = [1.0, 1.0, 1 / 2, 1 / 6, 1 / 24, 1 / 120, 1 / 720, 1 / 5040, 1 / 40320, 1 / 362880]

    def squaring_exp(x):  # exp(x) for x <= 0 in one fusable chain: (e^(x/32))^32, 0 below -32
        y = mx.maximum(x, -32.0) * (1.0 / 32)
        p = taylor[-1]
        for c in reversed(taylor[:-1]):
            p = p * y + c
        for _ in range(5):
            p = p * p
        return mx.where(x < -32.0, 0.0, p)

    def squaring_rows(x):
        e = squaring_exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    @mx.custom_function
    def squaring_silu(x):
        e = squaring_exp(-mx.abs(x))
        return mx.where(x >= 0, x, x * e) / (1.0 + e)

    @squaring_silu.vjp
    def _squaring_silu_vjp(x, g, out):
        e = squaring_exp(-mx.abs(x))
        s = mx.where(x >= 0, 1.0, e) / (1.0 + e)
        return g * s * (1.0 + x * (1.0 - s))

    return {
        "baseline": ("the trainer's step as shipped", contextlib.nullcontext()),
        "one_stream": ("no per_stream: the batch in one piece, threaded BLAS", patched(cpu, "KERNELS", {
            k: v for k, v in cpu.KERNELS.items() if k != "per_stream"})),
        "vjp_on_default_stream": ("softmax's and silu's backward on the default stream, as MLX places a custom vjp "
                                  "(before)", patched(cpu, "_custom", vjp_on_default_stream)),
        "recompute_on_default_stream": ("with --checkpointing: blocks recomputed on the default stream, as "
                                        "mx.checkpoint places them (before)", patched(layers, "on_current_stream",
                                                                                      lambda fn: fn)),
        "autodiff_softmax": ("softmax differentiated by autodiff (before)", patched(cpu, "softmax", autodiff_softmax)),
        "mlx_sdpa": ("MLX's own scaled_dot_product_attention", patched(cpu.KERNELS, "sdpa",
                                                                      mx.fast.scaled_dot_product_attention)),
        "deferred_normalization": ("attention's probabilities never normalised as an (L, L) array; "
                                   "FlashAttention's row sum", patched(cpu.KERNELS, "sdpa",
                                                                       attention_deferred_normalization)),
        "heads_in_chunks": ("attention 2 heads at a time (scores in L2), probabilities recomputed in the backward",
                            patched(cpu.KERNELS, "sdpa", attention_in_head_chunks(1 << 19))),
        "causal_query_blocks": ("the decoder's causal attention in 4 blocks of query rows",
                                patched(cpu.KERNELS, "sdpa", causal_blocks)),
        "rowsum_vjp": ("attention's backward with rowsum(dO * O) (FlashAttention's)",
                       patched(cpu.KERNELS, "sdpa", rowsum_attention)),
        "squaring_exp_softmax": ("softmax's exp as (e^(x/32))^32, one fusable chain", patched(cpu, "_rows",
                                                                                              squaring_rows)),
        "squaring_exp_silu": ("silu's exp as (e^(x/32))^32", patched(cpu.KERNELS, "act", squaring_silu)),
        "mlx_silu": ("MLX's own nn.silu", patched(cpu.KERNELS, "act", nn.silu)),
    }  # fmt: skip


def main():
    ap = step_arguments(reps=3)
    ap.add_argument("--only", nargs="*", default=None, help="variant names (default: all)")
    a = ap.parse_args()

    steps, about = {}, {}
    for name, (what, change) in variants().items():
        if a.only and name not in a.only and name != "baseline":
            continue
        with change:  # in place while the step is built and traced
            run = training_step(a.encoder, a.image_size, a.batch, a.vocab, checkpointing=a.checkpointing)
            run.one(), run.one()
        steps[name], about[name] = run.one, what
    times = {name: [] for name in steps}
    for _ in range(a.reps):
        for name, one in steps.items():
            times[name] += timed(one, 1)
    base = median(times["baseline"])
    for name, ts in times.items():
        emit(
            {
                "what": "step_variant", "variant": name, "change": about[name], "encoder": a.encoder,
                "batch": a.batch, "checkpointing": a.checkpointing, "s_per_step": round(median(ts), 3), "vs_baseline": round(median(ts) / base, 3),
                "times": [round(t, 3) for t in ts],
            },
            a.out,
        )  # fmt: skip


if __name__ == "__main__":
    main()
