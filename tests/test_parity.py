"""Our encoders against transformers' Aimv2VisionModel / Aimv2Model with random weights, fp32,
for a checkpoint in every layout we read, on both numeric paths: MLX's own ops (what Metal and CUDA
run) and cpu.py's kernels (what the CPU runs)."""

import numpy as np
import pytest
from helpers import hf_lit, hf_vision, save_safetensors, state_dict_np, to_mlaim_keys, to_timm_keys, torch_pixels

import mlx_aimv2
from mlx_aimv2 import cpu
from mlx_aimv2.models.layers import Attention

torch = pytest.importorskip("torch", reason="compares against PyTorch/transformers: pip install -e '.[test]'")

TOL = 1e-4


def _pixels(h=56, w=56, b=2, seed=1):
    return np.random.default_rng(seed).standard_normal((b, h, w, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def vision_ref(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vision")
    model, folder = hf_vision(tmp)
    x = _pixels()
    with torch.no_grad():
        ref = model(torch_pixels(x)).last_hidden_state.numpy()
    assert np.abs(ref).max() > 0.5  # a real signal, not all zeros
    return tmp, model, folder, x, ref


@pytest.fixture(params=["mlx-ops", "cpu-kernels"])
def kernels(request):
    """Which numeric path a test runs: `use(model)` puts it in place and checks that it is."""
    on = request.param == "cpu-kernels"

    def use(m):
        cpu.use_kernels(m.module, enabled=on)
        attn = next(mod for _, mod in m.module.named_modules() if isinstance(mod, Attention))
        assert (attn.sdpa is cpu.attention) == on
        return m

    return use


def _ours(path, x, kernels):
    m = kernels(mlx_aimv2.load(str(path)))
    import mlx.core as mx

    return np.array(m.vision(mx.array(x))), m


@pytest.mark.parametrize("layout", ["transformers", "ml-aim", "timm", "converted"])
def test_vision_parity_every_layout(vision_ref, layout, kernels):
    tmp, model, folder, x, ref = vision_ref
    sd = state_dict_np(model)
    if layout == "transformers":
        path = folder
    elif layout == "ml-aim":
        path = save_safetensors(to_mlaim_keys(sd), tmp / "mlaim" / "model.safetensors")
    elif layout == "timm":
        path = save_safetensors(to_timm_keys(to_mlaim_keys(sd)), tmp / "timm" / "model.safetensors")
    else:
        path = mlx_aimv2.convert(str(folder), tmp / "converted")
    out, m = _ours(path, x, kernels)
    assert m.config.vision.num_heads == 2 and m.config.vision.hidden_size // 2 == 128
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= TOL


def test_converting_a_converted_checkpoint_changes_nothing(vision_ref, tmp_path):
    _, _, folder, _, _ = vision_ref
    a = mlx_aimv2.convert(str(folder), tmp_path / "a")
    b = mlx_aimv2.convert(str(a), tmp_path / "b")
    import mlx.core as mx

    wa, wb = mx.load(str(a / "model.safetensors")), mx.load(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(mx.array_equal(wa[k], wb[k]).item() for k in wa)
    assert (a / "config.json").read_text() == (b / "config.json").read_text()


def test_intermediate_layers_match_hidden_states(vision_ref, kernels):
    _, model, folder, x, _ = vision_ref
    with torch.no_grad():
        hs = model(torch_pixels(x), output_hidden_states=True).hidden_states
    m = kernels(mlx_aimv2.load(str(folder)))
    import mlx.core as mx

    _, feats = m.vision(mx.array(x), output_layers=(0, -1))
    # transformers' hidden_states[i + 1] is block i's output
    assert np.abs(np.array(feats[0]) - hs[1].numpy()).max() <= TOL
    assert np.abs(np.array(feats[1]) - hs[2].numpy()).max() <= TOL


def test_native_model_non_square(tmp_path, kernels):
    model, folder = hf_vision(tmp_path, is_native=True)
    x = _pixels(h=42, w=70)
    with torch.no_grad():
        ref = model(torch_pixels(x)).last_hidden_state.numpy()
    out, m = _ours(folder, x, kernels)
    assert m.config.vision.native
    assert out.shape == (2, 15, 256)
    assert np.abs(out - ref).max() <= TOL


def test_lit_logits_and_embeddings(tmp_path, kernels):
    model, folder = hf_lit(tmp_path)
    x = _pixels()
    ids = np.random.default_rng(2).integers(0, 298, (3, 16)).astype(np.int64)
    ids[0, 5], ids[1, 9], ids[2, 15] = 299, 299, 299  # end-of-text positions
    ids[0, 6:] = 299  # padded with eos, as CLIP pads
    with torch.no_grad():
        ref = model(
            input_ids=torch.from_numpy(ids),
            pixel_values=torch_pixels(x),
            attention_mask=torch.ones(ids.shape, dtype=torch.long),
        )  # a mask makes the text tower causal
    m = kernels(mlx_aimv2.load(str(folder)))
    import mlx.core as mx

    logits = np.array(m.module(mx.array(x), mx.array(ids.astype(np.int32))))
    assert m.config.kind == "lit"
    assert np.abs(logits - ref.logits_per_image.numpy()).max() <= TOL * 10  # logits are scaled by exp(2)
    img = np.array(m.module.encode_image(mx.array(x)))
    assert np.abs(img - ref.image_embeds.numpy()).max() <= TOL
    txt = np.array(m.module.encode_text(mx.array(ids.astype(np.int32))))
    assert np.abs(txt - ref.text_embeds.numpy()).max() <= TOL


def test_encoder_with_saturated_swiglu_gates(tmp_path, kernels):
    """MLP gates scaled to reach +-200: silu must give ~0 for large negative gates on both paths
    (the CPU exp once overflowed into the sign bit there and returned silu(-150) = -150)."""
    model, folder = hf_vision(tmp_path)
    gates = []
    with torch.no_grad():
        for layer in model.encoder.layers:
            layer.ffn.gate_proj.weight.mul_(300.0)
            layer.ffn.gate_proj.register_forward_hook(lambda mod, i, o: gates.append(o.abs().max().item()))
    model.save_pretrained(folder)
    x = _pixels()
    with torch.no_grad():
        ref = model(torch_pixels(x)).last_hidden_state.numpy()
    assert max(gates) > 200
    out, _ = _ours(folder, x, kernels)
    assert np.isfinite(out).all()
    assert np.abs(out - ref).max() <= TOL * 10  # activations are ~100x larger here
