"""Corners: PyTorch pickles, a missing torch, a light `import mlx_aimv2`, bf16 compute and
activation checkpointing in the training step."""

import subprocess
import sys

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from helpers import hf_vision, torch_pixels
from mlx.utils import tree_flatten

import mlx_aimv2
from mlx_aimv2.config import VisionConfig
from mlx_aimv2.errors import UserError
from mlx_aimv2.models.decoder import AIMv2PreTrainer, DecoderConfig

torch = pytest.importorskip("torch", reason="compares against PyTorch/transformers: pip install -e '.[test]'")


def test_pytorch_bin_checkpoint_converts_with_weights_only(tmp_path, monkeypatch):
    model, _ = hf_vision(tmp_path)
    sd = {k: v.to(torch.bfloat16) if k.endswith("rms_norm.weight") else v for k, v in model.state_dict().items()}
    f = tmp_path / "bin" / "pytorch_model.bin"
    f.parent.mkdir()
    torch.save(sd, f)
    loaded = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loaded.append(k) or real(*a, **k))
    m = mlx_aimv2.load(str(f.parent), dtype=mx.float32)
    assert loaded and loaded[0]["weights_only"] is True
    model.load_state_dict({k: v.float() for k, v in sd.items()})  # the reference gets the same rounded gains
    x = np.random.default_rng(0).standard_normal((1, 56, 56, 3)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch_pixels(x)).last_hidden_state.numpy()
    assert np.abs(np.array(m.vision(mx.array(x))) - ref).max() <= 1e-4


def test_bin_without_torch_says_so(tmp_path, monkeypatch):
    f = tmp_path / "model.bin"
    f.write_bytes(b"whatever")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(UserError, match="needs torch"):
        mlx_aimv2.load(str(f))


def test_import_is_light():
    code = "import sys, mlx_aimv2; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _tiny():
    enc = VisionConfig(hidden_size=32, depth=2, num_heads=2, mlp_hidden=64, image_size=28)
    mx.random.seed(1)
    model = AIMv2PreTrainer(enc, DecoderConfig(width=32, depth=1, num_heads=2, vocab_size=20, context_length=6))
    mx.eval(model.parameters())
    x = mx.random.normal((2, 28, 28, 3))
    ids = mx.array([[3, 4, 5, 0, 0, 0], [6, 7, 8, 9, 1, 0]])
    return model, x, ids, mx.array([1, 3])


def test_activation_checkpointing_gives_the_same_gradients():
    model, x, ids, prefix = _tiny()
    grad = nn.value_and_grad(model, lambda m: m.losses(x, ids, prefix)["loss"])
    loss_a, g_a = grad(model)
    model.encoder.trunk.set_checkpointing(True)
    model.decoder.trunk.set_checkpointing(True)
    loss_b, g_b = grad(model)
    assert loss_a.item() == pytest.approx(loss_b.item(), abs=1e-6)
    fa, fb = dict(tree_flatten(g_a)), dict(tree_flatten(g_b))
    assert max(float(mx.abs(fa[k] - fb[k]).max()) for k in fa) < 1e-5
    assert max(float(mx.abs(v).max()) for v in fb.values()) > 0  # not the silent zeros of mx.checkpoint


def test_bf16_training_step_runs_close_to_fp32(tmp_path):
    from mlx_aimv2.config import load_config
    from mlx_aimv2.data import write_synthetic
    from mlx_aimv2.train.trainer import Trainer

    d = write_synthetic(tmp_path / "d", 16, size=64)
    losses = {}
    for dt in ("float32", "bfloat16"):
        cfg = load_config(
            overrides=dict(
                data=str(d),
                out=str(tmp_path / dt),
                image_size=56,
                batch_size=4,
                steps=2,
                warmup=1,
                vocab_size=300,
                dtype=dt,
                log_every=1,
            )
        )
        t = Trainer(cfg, log=lambda *a: None)
        r = t.run(progress=False)
        losses[dt] = r["last"]["loss"]
        assert all(v.dtype == mx.float32 for _, v in tree_flatten(t.model.parameters()))  # fp32 masters
    assert abs(losses["float32"] - losses["bfloat16"]) < 0.05 * losses["float32"]


def test_gradient_accumulation_trains(tmp_path):
    """accum=2 runs two compiled micro-steps per update and lands close to the one-pass step."""
    from mlx_aimv2.config import load_config
    from mlx_aimv2.data import write_synthetic
    from mlx_aimv2.train.trainer import Trainer

    d = write_synthetic(tmp_path / "d", 32, size=64)
    weights = {}
    for accum in (1, 2):
        cfg = load_config(
            overrides=dict(
                data=str(d),
                out=str(tmp_path / f"a{accum}"),
                image_size=56,
                batch_size=8,
                accum=accum,
                steps=3,
                warmup=1,
                vocab_size=300,
                log_every=1,
            )
        )
        t = Trainer(cfg, log=lambda *a: None)
        r = t.run(progress=False)
        assert r["step"] == 3 and np.isfinite(r["last"]["loss"])
        weights[accum] = dict(tree_flatten(t.model.encoder.parameters()))
    diff = max(float(mx.abs(weights[1][k] - weights[2][k]).max()) for k in weights[1])
    scale = max(float(mx.abs(weights[1][k]).max()) for k in weights[1])
    assert 0 < diff < 0.05 * scale  # different prefix draws per micro-batch, same direction of travel
