"""The compiled training step: encoder with a prefix mask -> decoder -> losses -> grads -> AdamW.

Everything random arrives as an mx.array (a per-step key), so the step traces once and a resumed
run draws exactly what the uninterrupted one would. Under mx.distributed each rank scores its
share of the global batch against the global counts and the gradients are averaged inside the
step, so N ranks compute what one process does on the whole batch.
"""
from __future__ import annotations

from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_map


def make_step(model, optimizer, cfg, world, num_patches: int):
    """Returns step(images_u8, ids, key) -> (metrics dict, grad norm); micro-batches via cfg.accum."""
    size, rank = world.size(), world.rank()
    mean = mx.array(cfg.mean, dtype=mx.float32) * 255.0
    std = mx.array(cfg.std, dtype=mx.float32) * 255.0
    compute = mx.bfloat16 if cfg.dtype == "bfloat16" else mx.float32
    global_micro = cfg.batch_size // cfg.accum

    def total(count):  # the divisor: scored patches / tokens over all ranks
        return mx.distributed.all_sum(count, group=world) if size > 1 else count

    def loss_fn(params, images, ids, prefix):
        if compute != mx.float32:
            params = tree_map(lambda p: p.astype(compute), params)
        model.update(params)
        out = model.losses(images.astype(compute), ids, prefix, total)
        out = {k: v * size for k, v in out.items()}  # average_gradients divides by size again
        return out["loss"], out

    def micro(images_u8, ids, key):
        images = (images_u8.astype(mx.float32) - mean) / std
        # one draw for the global micro-batch, identical on every rank; this rank takes its strided share
        prefix = mx.random.randint(1, num_patches, (global_micro,), key=key)[rank::size]
        params = model.trainable_parameters()
        (_, parts), grads = mx.value_and_grad(lambda p: loss_fn(p, images, ids, prefix))(params)
        model.update(params)  # back to the fp32 masters
        return parts, grads

    def update(grads):
        grads = nn.average_gradients(grads, group=world) if size > 1 else grads
        grads, norm = optim.clip_grad_norm(grads, cfg.clip)
        optimizer.update(model, grads)
        return norm

    def reduce(parts):
        return {k: (mx.distributed.all_sum(v, group=world) if size > 1 else v) / size for k, v in parts.items()}

    state = [model.state, optimizer.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def full_step(images_u8, ids, key):
        parts, grads = micro(images_u8, ids, key)
        return reduce(parts), update(grads)

    @partial(mx.compile, inputs=state, outputs=state)
    def grad_step(images_u8, ids, key):
        parts, grads = micro(images_u8, ids, key)
        return reduce(parts), grads

    @partial(mx.compile, inputs=state, outputs=state)
    def apply_step(grads):
        return update(grads)

    def step(images_u8, ids, key):
        if cfg.accum == 1:
            return full_step(images_u8, ids, key)
        n = images_u8.shape[0] // cfg.accum
        keys = mx.random.split(key, cfg.accum)
        acc, logs = None, []
        for i in range(cfg.accum):
            parts, grads = grad_step(images_u8[i * n:(i + 1) * n], ids[i * n:(i + 1) * n], keys[i])
            acc = grads if acc is None else tree_map(mx.add, acc, grads)
            mx.eval(acc, parts)
            logs.append(parts)
        norm = apply_step(tree_map(lambda g: g / cfg.accum, acc))
        return {k: sum(l[k] for l in logs) / cfg.accum for k in logs[0]}, norm

    return step
