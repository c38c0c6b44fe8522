"""The compiled training step, the same for every objective: the objective's inputs -> its loss ->
grads -> (data parallel) average -> clip -> AdamW.

Everything random arrives as an mx.array (a per-step key), so the step traces once and a resumed
run draws exactly what the uninterrupted one would. Under mx.distributed each rank's loss is its
part of the global one (objectives/base.py: RankShare), the gradients are averaged inside the step,
and N ranks compute what one process does on the whole batch.
"""

from __future__ import annotations

from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_map

from .objectives import Objective, RankShare


def make_step(objective: Objective, model: nn.Module, optimizer, cfg, world):
    """Returns step(inputs, ids, key) -> (named values, grad norm) over one global batch's share of
    this rank, in cfg.accum micro-batches."""
    shard = RankShare(world, mx.bfloat16 if cfg.dtype == "bfloat16" else mx.float32)
    size = shard.size

    def loss_fn(params, batch):
        if shard.dtype != mx.float32:
            params = tree_map(lambda p: p.astype(shard.dtype), params)
        model.update(params)
        out = objective.loss(model, batch, shard)
        out = {k: v * size for k, v in out.items()}  # average_gradients divides by size again
        return out["loss"], out

    def micro(inputs, ids, key):
        batch = objective.prepare(inputs, ids, key, shard)
        params = model.trainable_parameters()
        (_, parts), grads = mx.value_and_grad(loss_fn)(params, batch)
        model.update(params)  # back to the fp32 masters
        return reduce(parts), grads

    def reduce(parts):
        if objective.whole_batch:  # every rank holds the whole batch's values already
            return {k: v / size for k, v in parts.items()}
        return {k: shard.sum(v) / size for k, v in parts.items()}

    def update(grads):
        if size > 1:
            grads = nn.average_gradients(grads, group=world)
            grads = {k: g / size if k in objective.replicated else g for k, g in grads.items()}
        grads, norm = optim.clip_grad_norm(grads, cfg.clip)
        optimizer.update(model, grads)
        return norm

    state = [model.state, optimizer.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def whole_step(inputs, ids, key):
        parts, grads = micro(inputs, ids, key)
        return parts, update(grads)

    grad_step = mx.compile(micro, inputs=state, outputs=state)
    apply_step = mx.compile(update, inputs=state, outputs=state)

    def step(inputs, ids, key):
        if cfg.accum == 1:
            return whole_step(inputs, ids, key)
        n = inputs.shape[0] // cfg.accum
        keys = mx.random.split(key, cfg.accum)
        acc, logs = None, []
        for i in range(cfg.accum):
            parts, grads = grad_step(inputs[i * n : (i + 1) * n], ids[i * n : (i + 1) * n], keys[i])
            acc = grads if acc is None else tree_map(mx.add, acc, grads)
            mx.eval(acc, parts)
            logs.append(parts)
        norm = apply_step(tree_map(lambda g: g / cfg.accum, acc))
        return {k: sum(log[k] for log in logs) / cfg.accum for k in logs[0]}, norm

    step.gradients = grad_step  # the forward and backward alone (benchmarks/memory.py measures it apart)
    return step
