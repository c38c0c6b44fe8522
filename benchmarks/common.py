"""Shared helpers for the benchmarks: timing, FLOP counts, the GEMM peak, memory."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
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


def train_flops_per_image(model, image_size: int, text_len: int) -> float:
    """Forward FLOPs x 3 (forward + backward) for encoder, decoder and both heads."""
    enc, dec = model.encoder.config, model.decoder
    n = (image_size // enc.patch_size) ** 2
    f = encoder_flops(enc.hidden_size, enc.depth, enc.mlp_hidden, n, enc.patch_size**2 * 3)
    w = dec.vision_proj.weight.shape[0]
    hidden = dec.trunk.blocks[0].mlp.fc1.weight.shape[0]
    t = n + text_len + 1
    f += 2 * n * enc.hidden_size * w  # vision projection
    f += encoder_flops(w, len(dec.trunk.blocks), hidden, t, 0)  # causal trunk (full attention cost)
    f += 2 * n * w * dec.pixel_head.weight.shape[0] + 2 * (text_len + 1) * w * dec.text_head.weight.shape[0]
    return 3 * f


def training_step(
    encoder: str, image_size: int, batch: int, vocab: int = 1024, dtype: str = "float32", checkpointing: bool = False
):
    """The trainer's own objective, model, optimizer and compiled step on one fixed random batch,
    without data or a run folder. `.one()` runs one step (the first call compiles it)."""
    from types import SimpleNamespace

    import numpy as np

    from mlx_aimv2 import cpu
    from mlx_aimv2.config import TrainConfig
    from mlx_aimv2.train.objectives import AIMv2Objective
    from mlx_aimv2.train.optim import DecoupledAdamW, schedule
    from mlx_aimv2.train.step import make_step

    cfg = TrainConfig(
        encoder=encoder, image_size=image_size, batch_size=batch, steps=1000, warmup=10, dtype=dtype,
        checkpointing=checkpointing,
    )  # fmt: skip
    objective = AIMv2Objective(cfg, out=".")
    mx.random.seed(0)
    model = objective.build(SimpleNamespace(vocab_size=vocab, pad_id=0))
    mx.eval(model.parameters())
    opt = DecoupledAdamW(schedule(1e-3, 10, 1000, 1e-5), 1e-3, 1e-4)
    opt.init(model.trainable_parameters())
    step = make_step(objective, model, opt, cfg, mx.distributed.init())
    rng = np.random.default_rng(0)
    imgs = mx.array(rng.integers(0, 255, (batch, image_size, image_size, 3), dtype=np.uint8))
    ids = mx.array(rng.integers(1, vocab, (batch, 77), dtype=np.int32))
    calls = [0]
    blas = cpu.blas_for(model)  # as the trainer evaluates its step

    def one():
        calls[0] += 1
        with blas:
            p, g = step(imgs, ids, mx.random.key(calls[0]))
            mx.eval(p, g, model.state, opt.state)

    return SimpleNamespace(objective=objective, model=model, opt=opt, imgs=imgs, ids=ids, one=one)


def step_arguments(reps: int):
    """The command line of the benchmarks that time the trainer's step (train.py, step_profile.py,
    step_variants.py): each adds its own flags to it."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--encoder", default="vit-s")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--checkpointing", action="store_true", help="recompute each block in the backward pass")
    ap.add_argument("--reps", type=int, default=reps)
    ap.add_argument("--out", default=None)
    return ap


def median(xs):
    return statistics.median(xs)


def emit(record: dict, path=None):
    line = json.dumps(record)
    print(line)
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


# -- memory, in MiB on Linux and macOS alike ----------------------------------------------------------
# Linux reports ru_maxrss in KiB and has /proc; macOS reports ru_maxrss in bytes and has no /proc.
RU_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024  # bytes per ru_maxrss unit


def peak_rss_mib(who: str = "self") -> float:
    """The peak resident memory of this process ("self") or of its waited-for children ("children")."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF if who == "self" else resource.RUSAGE_CHILDREN)
    return usage.ru_maxrss * RU_MAXRSS_UNIT / 2**20


def rss_mib(pid: int | None = None) -> float:
    """The resident memory of a process now: /proc on Linux, `ps` (KiB) on macOS and elsewhere."""
    pid = os.getpid() if pid is None else pid
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    out = subprocess.run(["ps", "-o", "rss=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
    return int(out) / 1024 if out else float("nan")


# For a child process's code: its own peak in MiB. Linux's VmHWM is this process image's own peak
# (ru_maxrss would carry a large parent's over fork + exec); macOS has no /proc and gives ru_maxrss
# in bytes, for this process since its exec.
PEAK_MIB_CODE = """
import resource as _r, sys as _s
def _peak_mib():
    try:
        return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
    except OSError:
        return _r.getrusage(_r.RUSAGE_SELF).ru_maxrss / (2**20 if _s.platform == "darwin" else 1024)
"""


def boolean_masks_only(core):
    """An attention contender's front: core(q, k, v, scale, mask) sees mask None or a boolean array;
    "causal" becomes its array, and an additive mask goes to cpu.attention as shipped."""

    def attention(q, k, v, scale, mask=None):
        from mlx_aimv2 import cpu
        from mlx_aimv2.models.layers import causal_mask

        if isinstance(mask, str):
            mask = causal_mask(q.shape[-2])
        if mask is not None and mask.dtype != mx.bool_:
            return cpu.attention(q, k, v, scale, mask)
        return core(q, k, v, scale, mask)

    return attention


def attention_in_head_chunks(chunk_bytes: int):
    """A contender for cpu.attention: a few heads at a time, each chunk's (heads, Lq, Lk) scores within
    chunk_bytes so softmax's ~20 passes stay in a core's L2, with a backward that recomputes each
    chunk's probabilities (FlashAttention's trade, at the grain of whole heads). 1.5x faster than
    all heads at once for one stream in a microbenchmark; slower in the spread step and embedding."""
    from mlx_aimv2 import cpu

    def chunks(q, k):
        b, h, lq, lk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
        per = max(1, min(h, chunk_bytes // (4 * lq * lk)))
        return [(i, slice(j, min(j + per, h))) for i in range(b) for j in range(0, h, per)]

    def part(keep, i, heads):  # the mask (broadcastable to (B, H, Lq, Lk)) for one chunk
        if keep is None or keep.ndim < 3:
            return keep
        m = keep[i if keep.shape[0] > 1 else 0] if keep.ndim == 4 else keep
        return m[heads] if m.shape[0] > 1 else m

    def probabilities(qs, k, keep):
        s = qs @ k.swapaxes(-1, -2)
        return cpu._rows(s if keep is None else mx.where(keep, s, -mx.inf))

    @boolean_masks_only
    def attention(q, k, v, scale, mask):
        masked = mask is not None

        def forward(q, k, v, *mask):
            keep = mask[0] if masked else None
            outs = [probabilities(q[i, h] * scale, k[i, h], part(keep, i, h)) @ v[i, h] for i, h in chunks(q, k)]
            return mx.concatenate(outs).reshape(q.shape[:3] + v.shape[3:])

        def backward(primals, cotangent, output):
            q, k, v = primals[:3]
            keep = primals[3] if masked else None
            dq, dk, dv = [], [], []
            for i, h in chunks(q, k):
                qs, g = q[i, h] * scale, cotangent[i, h]
                p = probabilities(qs, k[i, h], part(keep, i, h))
                dv.append(p.swapaxes(-1, -2) @ g)
                ds = cpu._rows_vjp(g @ v[i, h].swapaxes(-1, -2), p)
                dq.append((ds @ k[i, h]) * scale)
                dk.append(ds.swapaxes(-1, -2) @ qs)
            grads = tuple(mx.concatenate(d).reshape(x.shape) for d, x in ((dq, q), (dk, k), (dv, v)))
            return grads + ((mx.zeros_like(keep),) if masked else ())

        return cpu._custom(forward, backward)(q, k, v, *([mask] if masked else []))

    return attention


@boolean_masks_only
def attention_deferred_normalization(q, k, v, scale, mask):
    """A contender for cpu.attention: the probabilities are never normalised as a (B, H, L, L)
    array. The forward computes e = exp(s - max) and o = (e @ v) / sum(e), dividing the (L, hd) output
    instead of the (L, L) scores; the backward uses FlashAttention's rowsum(dP * P) = rowsum(dO * O),
    an (L, hd) product, and folds 1 / sum(e) into the rows of dO. Two fewer passes over the scores
    forward, about three backward."""
    from mlx_aimv2 import cpu

    masked = mask is not None

    def forward(qs, k, v, *mask):
        s = qs @ k.swapaxes(-1, -2)
        if masked:
            s = mx.where(mask[0], s, -mx.inf)
        e = cpu.exp(s - s.max(axis=-1, keepdims=True))
        inv = 1.0 / e.sum(axis=-1, keepdims=True)
        return (e @ v) * inv, e, inv

    def backward(primals, cotangents, outputs):
        qs, k, v = primals[:3]
        g = cotangents[0]
        o, e, inv = outputs
        gi = g * inv  # dO's rows scaled by 1 / sum(e): then dP * inv = gi @ v^T
        ds = e * (gi @ v.swapaxes(-1, -2) - (g * o).sum(axis=-1, keepdims=True) * inv)
        grads = (ds @ k, ds.swapaxes(-1, -2) @ qs, e.swapaxes(-1, -2) @ gi)
        return grads + ((mx.zeros_like(primals[3]),) if masked else ())

    return cpu._custom(forward, backward)(q * scale, k, v, *([mask] if masked else []))[0]
