"""Training memory of the big presets: weights + optimizer state, and activation memory per sample,
measured with MLX's peak-memory counter around the trainer's own compiled forward + backward
(`step.gradients`) at batch 4 and 8 (per sample = the difference / 4), and around its whole step,
fp32 / bf16 compute, with and without `checkpointing`. Each configuration runs in a fresh process
so that peaks do not mix.

A full-depth step of these models takes minutes on this CPU, so each is measured at its full width
with 2 and 4 encoder blocks (1 and 2 decoder blocks: the presets' decoders have half the encoder's
depth) and extrapolated linearly to 24 / 12 blocks: every block holds the same activations. From
those figures (and only from them: no Mac was at hand) it derives the largest batch that fits in
64 / 128 / 192 GB of unified memory, leaving 20 % to the system and the loader. `--full` measures
one configuration at full depth instead, to check the extrapolation; `--direct 8` measures one
full-depth step at batch 8 with and without checkpointing, no extrapolation.

    python benchmarks/memory.py --encoders large --out benchmarks/results/memory_cpu.jsonl
    python benchmarks/memory.py --encoders large --direct 8 --out benchmarks/results/memory_cpu.jsonl
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from common import emit

_ONE = """
import json, sys
import mlx.core as mx
import numpy as np
from mlx_aimv2.config import TrainConfig
from mlx_aimv2.train.objectives import AIMv2Objective as AIMv2
from mlx_aimv2.train.optim import DecoupledAdamW, schedule
from mlx_aimv2.train.step import make_step

encoder, dtype, ckpt, batch, depth = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4]), int(sys.argv[5])
cfg = TrainConfig(encoder=encoder, image_size=224, batch_size=batch, dtype=dtype, checkpointing=ckpt)
if depth:  # full width, fewer blocks
    import dataclasses
    from mlx_aimv2.config.model import vision_preset
    cfg.vision = lambda: dataclasses.replace(vision_preset(encoder, 224, 14), depth=depth)
    cfg.decoder = {"depth": depth // 2}
objective = AIMv2(cfg, out=".")
model = objective.build(type("T", (), {"vocab_size": 1024, "pad_id": 0})())
mx.eval(model.parameters())
opt = DecoupledAdamW(schedule(1e-4, 1, 10, 1e-5), 1e-4, 1e-4)
opt.init(model.trainable_parameters())
step = make_step(objective, model, opt, cfg, mx.distributed.init())
rng = np.random.default_rng(0)
x = mx.array(rng.integers(0, 255, (batch, 224, 224, 3), dtype=np.uint8))
ids = mx.array(rng.integers(1, 1024, (batch, 77), dtype=np.int32))
p, g = step(x, ids, mx.random.key(0))
mx.eval(p, g, model.state, opt.state)  # the optimizer state now exists
state = mx.get_active_memory()
mx.reset_peak_memory()
p, g = step.gradients(x, ids, mx.random.key(1))  # forward + backward alone: activations and gradients
mx.eval(p, g)
grads_peak = mx.get_peak_memory()
del p, g
mx.reset_peak_memory()
p, g = step(x, ids, mx.random.key(2))  # the whole step, whose update (weights, moments, gradients) may peak higher
mx.eval(p, g, model.state, opt.state)
print(json.dumps({"state": state, "peak": mx.get_peak_memory(), "grads_peak": grads_peak}))
"""


MEMORY = (64, 128, 192)  # GB of unified memory: Mac Studio sizes


def measure(encoder: str, dtype: str, ckpt: bool, batch: int, depth: int = 0) -> dict:
    args = [encoder, dtype, str(int(ckpt)), str(batch), str(depth)]
    r = subprocess.run([sys.executable, "-c", _ONE, *args], capture_output=True, text=True)
    if r.returncode:
        sys.exit(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def per_sample(encoder, dtype, ckpt, depth) -> tuple[float, float, float, float]:
    """(activation bytes per sample, batch-free bytes at the forward + backward's peak, state bytes,
    the whole step's peak at batch 4) at this depth. The activations come from the forward + backward's
    peak alone: the whole step's peak can be the optimizer update's, which no batch size moves, and
    that hid checkpointing's activations in an earlier version of this measurement."""
    small, large = measure(encoder, dtype, ckpt, 4, depth), measure(encoder, dtype, ckpt, 8, depth)
    act = (large["grads_peak"] - small["grads_peak"]) / 4
    return act, small["grads_peak"] - 4 * act, small["state"], small["peak"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--encoders", nargs="+", default=["large", "huge", "1B"])
    # bf16 has no BLAS on a CPU: a 2-block step takes minutes here, so it is measured only when asked
    ap.add_argument("--dtypes", nargs="+", default=["float32"])
    ap.add_argument("--full", action="store_true", help="measure at full depth (slow) instead of extrapolating")
    ap.add_argument(
        "--direct",
        type=int,
        default=0,
        metavar="BATCH",
        help="instead: one full-depth step at BATCH with and without checkpointing, peaks as measured",
    )
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    gib = 2**30
    if a.direct:
        for enc in a.encoders:
            for ckpt in (False, True):
                m = measure(enc, a.dtypes[0], ckpt, a.direct)
                emit({"encoder": enc, "dtype": a.dtypes[0], "checkpointing": ckpt, "batch": a.direct,
                      "how": "measured at full depth", "state_gib": round(m["state"] / gib, 2),
                      "forward_backward_peak_gib": round(m["grads_peak"] / gib, 2),
                      "step_peak_gib": round(m["peak"] / gib, 2)}, a.out)  # fmt: skip
        return
    for enc in a.encoders:
        for dtype in a.dtypes:
            for ckpt in (False, True):
                if a.full:
                    act, fixed, state, update = per_sample(enc, dtype, ckpt, 0)
                    how = "measured at full depth"
                else:  # linear in depth: v(24) = v(2) + (v(4) - v(2)) * 11
                    two, four = per_sample(enc, dtype, ckpt, 2), per_sample(enc, dtype, ckpt, 4)
                    act, fixed, state, update = (x2 + (x4 - x2) * 11 for x2, x4 in zip(two, four))
                    how = "extrapolated from 2 and 4 blocks"
                row = {"encoder": enc, "dtype": dtype, "checkpointing": ckpt, "how": how}
                if act <= 0:  # noise larger than the activations: say so rather than divide by it
                    emit({**row, "activation_gib_per_sample": None, "note": "below what batch 4 to 8 resolves"}, a.out)
                    continue
                # a batch fits when the forward + backward's peak (fixed + batch x act) and the whole
                # step's (at least the update's, which the batch barely moves) fit in 80 % of memory
                fits = {f"{m}GB": int((m * 1e9 * 0.8 - fixed) // act) if update <= m * 1e9 * 0.8 else 0 for m in MEMORY}
                emit(
                    {
                        **row,
                        "state_gib": round(state / gib, 2),
                        "fixed_gib": round(fixed / gib, 2),
                        "activation_gib_per_sample": round(act / gib, 3),
                        "step_peak_batch4_gib": round(update / gib, 2),
                        "largest_batch_derived": fits,
                    },
                    a.out,
                )


if __name__ == "__main__":
    main()
