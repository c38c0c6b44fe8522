"""Where a pre-training step's time goes (issue 30): the trainer's own compiled step (objective,
model, optimizer) on one fixed batch, timed whole and with one kind of op at a time swapped for a
stand-in that keeps every shape but does almost no work. The time a swap saves is that op kind's
share, forward and backward together; the matmuls' share is their FLOPs at the GEMM rate measured
in the same run (the floor no kernel work can go under). Also timed alone: the forward pass, the
forward + backward, and the optimizer update.

The stand-ins change the arithmetic, so they are for this measurement only; the training code is
untouched.

    python benchmarks/step_profile.py --encoder vit-s --batch 8 --out benchmarks/results/step_profile.jsonl
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, gemm_peak_gflops, median, step_arguments, timed, train_flops_per_image, training_step  # noqa: E402


def warmed(run):
    """The step's call, compiled and warmed up."""
    run.one(), run.one()
    return run.one


def interleaved(a, b, reps: int) -> tuple[float, float]:
    """Median seconds of a() and of b(), run in turns: a machine that slows down over the run (this
    one does, by up to 20 %) slows both alike."""
    ta, tb = [], []
    for _ in range(reps):
        ta += timed(a, 1)
        tb += timed(b, 1)
    return median(ta), median(tb)


def stand_in(model, kind: str) -> None:
    """One op kind of `model` made a near-free stand-in of the same shapes, on its layers themselves
    (where cpu.use_kernels puts its kernels): attention's core softmax(q k^T) v -> v, SwiGLU's silu ->
    identity, RMSNorm -> its gain alone."""
    if kind == "norm":  # a special method: Python looks it up on the class (main swaps it there)
        return
    name, fn = {
        "attention": ("sdpa", lambda q, k, v, scale=None, mask=None: v),
        "activation": ("act", lambda x: x),
    }[kind]
    for _, m in model.named_modules():
        if hasattr(type(m), name):
            setattr(m, name, fn)


def main():
    a = step_arguments(reps=3).parse_args()
    import mlx.core as mx

    from mlx_aimv2.environment import backend

    peak = max(gemm_peak_gflops(), gemm_peak_gflops())
    run = training_step(a.encoder, a.image_size, a.batch, a.vocab, checkpointing=a.checkpointing)
    objective, model, opt, imgs, ids = run.objective, run.model, run.opt, run.imgs, run.ids
    base = warmed(run)
    whole = median(timed(base, a.reps))
    flops = train_flops_per_image(model, a.image_size, 77) * a.batch
    matmul = flops / (peak * 1e9)

    # the phases alone: forward, forward + backward, the optimizer update
    batch = objective.prepare(
        imgs, ids, mx.random.key(0), SimpleNamespace(dtype=mx.float32, size=1, rank=0, sum=lambda x: x)
    )
    params = model.trainable_parameters()

    def loss(p):
        model.update(p)
        return objective.loss(
            model, batch, SimpleNamespace(dtype=mx.float32, size=1, sum=lambda x: x, gather=lambda x: x)
        )["loss"]

    fwd, fwd_bwd = loss, mx.value_and_grad(loss)  # uncompiled: the phases' shares, not the step's time
    grads = fwd_bwd(params)[1]
    mx.eval(grads)
    model.update(params)

    def update():
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state)

    phases = {  # uncompiled
        "forward": median(timed(lambda: mx.eval(fwd(params)), a.reps + 1)[1:]),
        "forward_backward": median(timed(lambda: mx.eval(fwd_bwd(params)), a.reps + 1)[1:]),
        "optimizer": median(timed(update, a.reps + 1)[1:]),
    }
    model.update(params)

    import mlx.nn as nn

    shares, norm_call = {}, nn.RMSNorm.__call__
    for kind in ("attention", "activation", "norm"):
        run2 = training_step(a.encoder, a.image_size, a.batch, a.vocab, checkpointing=a.checkpointing)
        stand_in(run2.model, kind)
        if kind == "norm":  # traced with the stand-in (at the warm-up), then the class is itself again
            nn.RMSNorm.__call__ = lambda self, x: x * self.weight
        try:
            variant = warmed(run2)
        finally:
            nn.RMSNorm.__call__ = norm_call
        t_base, t_var = interleaved(base, variant, a.reps)
        shares[kind] = (t_base - t_var) / t_base
    rest = 1 - matmul / whole - sum(max(v, 0.0) for v in shares.values())
    record = {
        "what": "step_profile", "encoder": a.encoder, "batch": a.batch, "image_size": a.image_size,
        "backend": backend(), "mlx": mx.__version__, "gemm_peak_gflop_s": round(peak, 1),
        "step_s": round(whole, 4), "mfu_vs_gemm_peak": round(matmul / whole, 3),
        "phases_s": {k: round(v, 4) for k, v in phases.items()},
        "share_of_step": {"matmul_at_peak": round(matmul / whole, 3),
                          **{k: round(v, 3) for k, v in shares.items()},
                          "everything_else": round(rest, 3)},
    }  # fmt: skip
    emit(record, a.out)


if __name__ == "__main__":
    main()
