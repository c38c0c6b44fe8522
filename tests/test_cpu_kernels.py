"""cpu.py's kernels against numpy and MLX's own ops over the whole float32 range, with gradients."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_aimv2 import cpu

F32_MAX_LOG = float(np.log(np.finfo(np.float32).max))  # 88.7228: exp overflows above


def _sweep():
    rng = np.random.default_rng(0)
    dense = np.linspace(-110, 95, 2_000_001, dtype=np.float32)
    wide = np.concatenate([-np.logspace(-30, 38, 20000), np.logspace(-30, 38, 20000)]).astype(np.float32)
    special = np.array(
        [
            0.0,
            -0.0,
            np.inf,
            -np.inf,
            np.nan,
            -np.nan,
            np.finfo(np.float32).max,
            -np.finfo(np.float32).max,
            np.finfo(np.float32).tiny,
            88.72,
            88.7228,
            88.73,
            -87.0,
            -87.4,
            -88.0,
            -103.0,
            -104.0,
        ],
        np.float32,
    )
    bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)  # any float32
    return np.concatenate([dense, wide, special, bits])


def test_exp_over_the_whole_float32_range():
    x = _sweep()
    ours = np.array(cpu.exp(mx.array(x)))
    with np.errstate(over="ignore", invalid="ignore"):
        exact = np.exp(x.astype(np.float64))
        ref32 = np.exp(x)
    nan = np.isnan(x)
    assert np.isnan(ours[nan]).all()
    assert not np.isnan(ours[~nan]).any()
    # inf exactly where float32's exp overflows, as mx.exp and numpy do
    assert ((ours == np.inf) == (ref32 == np.inf))[~nan].all()
    assert (ours[x == -np.inf] == 0).all() and (ours[~nan] >= 0).all()
    normal = ~nan & (exact >= 2.0**-125) & np.isfinite(ref32)
    assert (np.abs(ours[normal] - exact[normal]) / exact[normal]).max() < 1e-6
    tiny = ~nan & (exact < 2.0**-125)  # the bottom of float32: 0 or a subnormal, never more
    assert np.abs(ours[tiny] - exact[tiny]).max() < 2.0**-125
    # and MLX's own exp (itself within 4e-6 of the exact value) agrees wherever it is finite and normal
    theirs = np.array(mx.exp(mx.array(x)))
    both = normal & np.isfinite(theirs) & (theirs > 0)
    assert (np.abs(ours[both] - theirs[both]) / theirs[both]).max() < 5e-6


def test_exp_gradient():
    x = mx.array(np.linspace(-120, 80, 10001, dtype=np.float32))
    g = mx.grad(lambda v: cpu.exp(v).sum())(x)
    assert np.allclose(np.array(g), np.array(mx.exp(x)), rtol=1e-5, atol=1e-37)


@pytest.mark.parametrize("scale", [1.0, 50.0, 300.0])
def test_silu_and_its_gradient_match_mlx(scale):
    x = mx.array((np.random.default_rng(1).standard_normal(50_000) * scale).astype(np.float32))
    x = mx.concatenate([x, mx.array([-200.0, -150.0, -90.0, 90.0, 150.0, 200.0, 0.0])])
    ours, ref = cpu.silu(x), nn.silu(x)
    assert np.allclose(np.array(ours), np.array(ref), rtol=2e-6, atol=1e-6)
    assert abs(cpu.silu(mx.array(-150.0)).item()) < 1e-30
    g_ours = np.array(mx.grad(lambda v: cpu.silu(v).sum())(x))
    x64 = np.array(x).astype(np.float64)
    with np.errstate(over="ignore"):
        s = 1 / (1 + np.exp(-x64))
    exact = s * (1 + x64 * (1 - s))  # d/dx x * sigmoid(x), bounded by 1.1 in magnitude
    assert np.abs(g_ours - exact).max() < 1e-6


@pytest.mark.parametrize("mask", [None, "causal", "bool", "per_head", "additive", "prefix"])
@pytest.mark.parametrize("batch", [2, 1])  # 1: a batch too small to spread spreads its heads over the streams
def test_attention_matches_mlx_sdpa(mask, batch):
    rng = np.random.default_rng(2)
    q, k, v = (mx.array(rng.standard_normal((2, 3, 17, 8)).astype(np.float32) * 4)[:batch] for _ in range(3))
    if mask == "bool":
        mask = mx.array(rng.random((2, 1, 17, 17)) > 0.3) | mx.eye(17, dtype=mx.bool_)
    elif mask == "per_head":
        mask = mx.array(rng.random((2, 3, 17, 17)) > 0.5) | mx.eye(17, dtype=mx.bool_)
    elif mask == "additive":
        mask = mx.array(rng.standard_normal((17, 17)).astype(np.float32))
    elif mask == "prefix":
        from mlx_aimv2.models.encoder import prefix_mask

        mask = prefix_mask(mx.array([1, 9]), 17)
    if isinstance(mask, mx.array) and mask.ndim == 4:
        mask = mask[:batch]
    ours = cpu.attention(q, k, v, scale=0.3, mask=mask)
    ref = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.3, mask=mask)
    assert np.abs(np.array(ours) - np.array(ref)).max() < 1e-5
    # the gradients too: cpu.softmax's own vjp against MLX's autodiff of its attention
    g = mx.array(rng.standard_normal(q.shape).astype(np.float32))

    def grads(fn):
        return mx.grad(lambda q, k, v: (fn(q, k, v, scale=0.3, mask=mask) * g).sum(), argnums=(0, 1, 2))(q, k, v)

    for a, b in zip(grads(cpu.attention), grads(mx.fast.scaled_dot_product_attention)):
        assert np.abs(np.array(a) - np.array(b)).max() < 1e-5 * np.abs(np.array(b)).max()


@pytest.mark.parametrize("kernel", ["silu", "softmax", "masked_softmax"])
def test_backward_runs_on_the_stream_of_its_forward(kernel, monkeypatch):
    # MLX runs a custom vjp on the default stream of the thread taking the gradient; per_stream's
    # halves would then compute their backward one after the other on that one stream
    seen = []
    real = cpu._custom

    def spying(forward, backward):  # records the default stream while each backward runs
        return real(forward, lambda *a: (seen.append(mx.default_stream(mx.cpu)), backward(*a))[1])

    monkeypatch.setattr(cpu, "_custom", spying)
    side = mx.new_stream(mx.cpu)
    keep = mx.array(np.random.default_rng(0).random((4, 4)) > 0.3) | mx.eye(4, dtype=mx.bool_)
    call = {
        "silu": lambda x: cpu.silu(x),
        "softmax": lambda x: cpu.softmax(x),
        "masked_softmax": lambda x: cpu.softmax(x, keep),
    }[kernel]

    def loss(x):
        with mx.stream(side):
            y = call(x)
        return (y * y).sum()

    mx.eval(mx.grad(loss)(mx.random.normal((4, 4))))
    assert seen == [side]


def test_checkpointed_blocks_recompute_on_the_stream_of_their_forward(monkeypatch):
    from mlx_aimv2.models.layers import Block, Transformer

    seen, real = [], Block.__call__
    monkeypatch.setattr(Block, "__call__", lambda self, *a: (seen.append(mx.default_stream(mx.cpu)), real(self, *a))[1])
    trunk = Transformer(8, 2, 2, 16)
    trunk.set_checkpointing(True)
    side = mx.new_stream(mx.cpu)

    def loss(params, x):
        trunk.update(params)
        with mx.stream(side):
            y = trunk(x)
        return (y * y).sum()

    mx.eval(mx.grad(loss)(trunk.trainable_parameters(), mx.random.normal((2, 3, 8))))
    assert len(seen) == 4 and all(s == side for s in seen)  # two forwards and two recomputations


def test_kernels_fall_back_to_mlx_off_float32():
    x = mx.array([-150.0, 1.0, 150.0], dtype=mx.bfloat16)
    assert cpu.silu(x).dtype == mx.bfloat16
    assert np.allclose(np.array(cpu.silu(x).astype(mx.float32)), np.array(nn.silu(x).astype(mx.float32)))


def _pretraining_step(spread: bool, checkpointing: bool):
    """The trainer's compiled step on a tiny AIMv2 model, with the batch spread over the CPU streams or not."""
    from types import SimpleNamespace

    from mlx_aimv2.config import TrainConfig
    from mlx_aimv2.train.objectives import AIMv2Objective
    from mlx_aimv2.train.optim import DecoupledAdamW, schedule
    from mlx_aimv2.train.step import make_step

    cfg = TrainConfig(encoder="tiny", image_size=56, batch_size=6, steps=10, warmup=2, checkpointing=checkpointing)
    objective = AIMv2Objective(cfg, out=".")
    mx.random.seed(0)
    model = objective.build(SimpleNamespace(vocab_size=64, pad_id=0))
    if not spread:
        del model.__dict__["per_stream"]
    opt = DecoupledAdamW(schedule(1e-3, 2, 10, 1e-5), 1e-3, 1e-4)
    opt.init(model.trainable_parameters())
    return model, opt, make_step(objective, model, opt, cfg, mx.distributed.init())


@pytest.mark.skipif(cpu.streams() < 2, reason="one core: nothing to spread")
@pytest.mark.parametrize("checkpointing", [False, True])
def test_training_step_spread_over_streams_equals_one_stream(checkpointing):
    """cpu.per_stream computes each sample's forward and backward on one of the CPU streams; the losses
    and the updated weights must equal the step computed in one piece."""
    from mlx.utils import tree_flatten

    rng = np.random.default_rng(0)
    imgs = mx.array(rng.integers(0, 255, (6, 56, 56, 3), dtype=np.uint8))
    ids = mx.array(rng.integers(1, 64, (6, 12), dtype=np.int32))
    runs = {}
    for spread in (True, False):
        model, opt, step = _pretraining_step(spread, checkpointing)
        assert cpu.spreads(model) is spread
        losses = []
        with cpu.blas_for(model):
            for i in range(3):
                parts, norm = step(imgs, ids, mx.random.key(i))
                mx.eval(parts, norm, model.state, opt.state)
                losses.append((parts["loss_image"].item(), parts["loss_text"].item(), norm.item()))
        runs[spread] = losses, dict(tree_flatten(model.parameters()))
    np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=1e-5)
    for name, w in runs[False][1].items():
        np.testing.assert_allclose(np.array(runs[True][1][name]), np.array(w), atol=1e-5, err_msg=name)


@pytest.mark.skipif(cpu.streams() < 2, reason="one core: nothing to spread")
def test_classifier_training_logits_spread_over_streams_equal_one_piece():
    from mlx.utils import tree_flatten

    from mlx_aimv2.config.model import vision_preset
    from mlx_aimv2.models.classifier import Classifier
    from mlx_aimv2.models.encoder import AIMv2VisionEncoder

    mx.random.seed(0)
    vision = vision_preset("tiny", 56, 14)
    vision.use_head = False
    model = cpu.use_kernels(Classifier(AIMv2VisionEncoder(vision), 5))
    x = mx.array(np.random.default_rng(0).standard_normal((6, 56, 56, 3)).astype(np.float32))
    labels = mx.array([0, 1, 2, 3, 4, 0])

    def loss(params):
        model.update(params)
        return nn.losses.cross_entropy(model.training_logits(x), labels, reduction="mean")

    results = []
    for spread in (True, False):
        if not spread:
            del model.__dict__["per_stream"]
        assert cpu.spreads(model) is spread
        with cpu.blas_for(model):
            value, grads = mx.value_and_grad(loss)(model.trainable_parameters())
            mx.eval(value, grads)
        results.append((value.item(), dict(tree_flatten(grads))))
    assert abs(results[0][0] - results[1][0]) < 1e-6
    for name, g in results[1][1].items():
        np.testing.assert_allclose(np.array(results[0][1][name]), np.array(g), atol=1e-6, err_msg=name)
