"""The compiled training step: encoder with a prefix mask -> decoder -> losses -> grads -> AdamW.

Everything random arrives as an mx.array (a per-step key), so the step traces once and a resumed
run draws exactly what the uninterrupted one would. Under mx.distributed each rank scores its
share of the global batch against the global counts and the gradients are averaged inside the
step, so N ranks compute what one process does on the whole batch.

LiT tuning (objective "lit") goes through the same step with cached encoder tokens in place of
images. Its contrastive loss needs every rank's embeddings: each rank gathers them, keeps its own
with their gradient, and computes the whole batch's loss; its gradient is then exact for its own
rows, so summing over ranks (the `* size` below, then the average) gives the full gradient. The
logit scale and bias are seen whole by every rank, so their sum is divided back by the rank count.
"""

from __future__ import annotations

from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_map


def make_step(model, optimizer, cfg, world, num_patches: int):
    """Returns step(inputs, ids, key) -> (metrics dict, grad norm); inputs are uint8 images, or for LiT
    the frozen encoder's tokens; micro-batches via cfg.accum."""
    size, rank = world.size(), world.rank()
    mean = mx.array(cfg.mean, dtype=mx.float32) * 255.0
    std = mx.array(cfg.std, dtype=mx.float32) * 255.0
    compute = mx.bfloat16 if cfg.dtype == "bfloat16" else mx.float32
    global_micro = cfg.batch_size // cfg.accum
    lit = cfg.objective == "lit"
    replicated = ("log_logit_scale", "logit_bias")  # LiT: every rank computes their full gradient

    def total(count):  # the divisor: scored patches / tokens over all ranks
        return mx.distributed.all_sum(count, group=world) if size > 1 else count

    def gather(x):  # every rank's rows in rank order; this rank's own keep their gradient
        if size == 1:
            return x
        every = mx.stop_gradient(mx.distributed.all_gather(x, group=world))
        n = x.shape[0]
        return mx.concatenate([every[: rank * n], x, every[(rank + 1) * n :]])

    def loss_fn(params, x, ids, prefix):
        if compute != mx.float32:
            params = tree_map(lambda p: p.astype(compute), params)
        model.update(params)
        if lit:
            out = model.losses(x.astype(compute), ids, gather)
        else:
            out = model.losses(x.astype(compute), ids, prefix, total)
        out = {k: v * size for k, v in out.items()}  # average_gradients divides by size again
        return out["loss"], out

    def micro(inputs, ids, key):
        if lit:  # the frozen encoder's tokens, stored as float16
            x, prefix = inputs.astype(mx.float32), None
        else:
            x = (inputs.astype(mx.float32) - mean) / std
            # one draw for the global micro-batch, identical on every rank; this rank takes its strided share
            prefix = mx.random.randint(1, num_patches, (global_micro,), key=key)[rank::size]
        params = model.trainable_parameters()
        (_, parts), grads = mx.value_and_grad(lambda p: loss_fn(p, x, ids, prefix))(params)
        model.update(params)  # back to the fp32 masters
        return parts, grads

    def update(grads):
        grads = nn.average_gradients(grads, group=world) if size > 1 else grads
        if lit and size > 1:
            grads = {k: g / size if k in replicated else g for k, g in grads.items()}
        grads, norm = optim.clip_grad_norm(grads, cfg.clip)
        optimizer.update(model, grads)
        return norm

    def reduce(parts):
        if lit:  # every rank holds the whole batch's values already
            return {k: v / size for k, v in parts.items()}
        return {k: (mx.distributed.all_sum(v, group=world) if size > 1 else v) / size for k, v in parts.items()}

    state = [model.state, optimizer.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def full_step(inputs, ids, key):
        parts, grads = micro(inputs, ids, key)
        return reduce(parts), update(grads)

    @partial(mx.compile, inputs=state, outputs=state)
    def grad_step(inputs, ids, key):
        parts, grads = micro(inputs, ids, key)
        return reduce(parts), grads

    @partial(mx.compile, inputs=state, outputs=state)
    def apply_step(grads):
        return update(grads)

    def step(inputs, ids, key):
        if cfg.accum == 1:
            return full_step(inputs, ids, key)
        n = inputs.shape[0] // cfg.accum
        keys = mx.random.split(key, cfg.accum)
        acc, logs = None, []
        for i in range(cfg.accum):
            parts, grads = grad_step(inputs[i * n : (i + 1) * n], ids[i * n : (i + 1) * n], keys[i])
            acc = grads if acc is None else tree_map(mx.add, acc, grads)
            mx.eval(acc, parts)
            logs.append(parts)
        norm = apply_step(tree_map(lambda g: g / cfg.accum, acc))
        return {k: sum(l[k] for l in logs) / cfg.accum for k in logs[0]}, norm

    return step
