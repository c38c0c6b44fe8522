"""Quantized checkpoints: convert -q writes MLX quantized blocks and the spec; load / embed / classify /
train --init read them; the quantized model equals transformers running the dequantized weights."""

import json

import mlx.core as mx
import numpy as np
import pytest
from helpers import cli, hf_lit, hf_vision, torch_pixels

import mlx_aimv2
from mlx_aimv2.errors import UserError
from mlx_aimv2.quantize import is_quantized, spec

torch = pytest.importorskip("torch", reason="compares against PyTorch/transformers: pip install -e '.[test]'")


def _pixels(seed=1):
    return np.random.default_rng(seed).standard_normal((2, 56, 56, 3)).astype(np.float32)


def _dequantized_state(folder):
    """Our quantized file's weights, dequantized with MLX's own op, under transformers' names."""
    w = mx.load(str(folder / "model.safetensors"))
    q = json.loads((folder / "config.json").read_text())["quantization"]
    out = {}
    for k, v in w.items():
        if k.endswith(".scales") or k.endswith(".biases"):
            continue
        base = k[: -len("weight")]
        if base + "scales" in w:
            v = mx.dequantize(v, w[base + "scales"], w.get(base + "biases"), q["group_size"], q["bits"], mode=q["mode"])
        out[k] = np.array(v.astype(mx.float32))
    return out


@pytest.mark.parametrize(
    "bits, group, mode", [(8, 64, "affine"), (4, 64, "affine"), (6, 128, "affine"), (4, 32, "mxfp4")]
)
def test_quantized_encoder_equals_transformers_on_the_dequantized_weights(tmp_path, bits, group, mode):
    model, folder = hf_vision(tmp_path)
    r = cli(
        *[
            "convert",
            str(folder),
            str(tmp_path / "q"),
            "-q",
            "--q-bits",
            str(bits),
            "--q-group-size",
            str(group),
            "--q-mode",
            mode,
        ],
    )
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())
    assert cfg["quantization"] == {"bits": bits, "group_size": group, "mode": mode}
    m = mlx_aimv2.load(str(tmp_path / "q"), keep_quantized=True)  # MLX's quantized kernels
    assert is_quantized(m.module)
    # transformers with our dequantized block weights: the reference for what the quantized layers compute
    deq = _dequantized_state(tmp_path / "q")
    sd = model.state_dict()
    with torch.no_grad():
        for i, layer in enumerate(model.encoder.layers):
            qkv = deq[f"trunk.blocks.{i}.attn.qkv.weight"]
            d = qkv.shape[1]
            for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
                getattr(layer.attention, name).weight.copy_(torch.from_numpy(qkv[j * d : (j + 1) * d]))
            layer.attention.out_proj.weight.copy_(torch.from_numpy(deq[f"trunk.blocks.{i}.attn.proj.weight"]))
            layer.ffn.gate_proj.weight.copy_(torch.from_numpy(deq[f"trunk.blocks.{i}.mlp.fc1.weight"]))
            layer.ffn.up_proj.weight.copy_(torch.from_numpy(deq[f"trunk.blocks.{i}.mlp.fc3.weight"]))
            layer.ffn.down_proj.weight.copy_(torch.from_numpy(deq[f"trunk.blocks.{i}.mlp.fc2.weight"]))
        x = _pixels()
        ref = model(torch_pixels(x)).last_hidden_state.numpy()
    assert sd is not None
    out = np.array(m.vision(mx.array(x)))
    assert np.abs(out - ref).max() <= 2e-4
    # the CPU default: the same layers dequantized at load (MLX's CPU quantized matmul is slow), same numbers
    plain = mlx_aimv2.load(str(tmp_path / "q"))
    assert not is_quantized(plain.module)
    assert np.abs(np.array(plain.vision(mx.array(x))) - ref).max() <= 2e-4


def test_fidelity_and_size_against_float(tmp_path):
    _, folder = hf_vision(tmp_path, hidden_size=256, intermediate_size=768)
    f32 = mlx_aimv2.convert(str(folder), tmp_path / "f32")
    x = _pixels(3)
    base = np.array(mlx_aimv2.load(str(f32)).vision(mx.array(x))).mean(axis=1)
    size = (f32 / "model.safetensors").stat().st_size
    blocks = sum(
        v.nbytes for k, v in mx.load(str(f32 / "model.safetensors")).items() if ".blocks." in k and v.ndim == 2
    )
    rest = size - blocks  # what stays in float: embeddings, norms, positions (a large share of a tiny model)
    for bits, min_cos in ((8, 0.999), (4, 0.98)):
        q = mlx_aimv2.convert(str(f32), tmp_path / f"q{bits}", quantization=spec(bits, 64))
        e = np.array(mlx_aimv2.load(str(q)).vision(mx.array(x))).mean(axis=1)
        cos = (e * base).sum(1) / np.linalg.norm(e, axis=1) / np.linalg.norm(base, axis=1)
        assert cos.min() >= min_cos, (bits, cos)
        # packed weights plus a float32 scale and bias per 64: 72/256 of float at 8 bits, 40/256 at 4
        assert (q / "model.safetensors").stat().st_size - rest < blocks * (0.29 if bits == 8 else 0.165)


def test_quantized_folders_behave_like_any_other(tmp_path):
    import shutil

    from helpers import tiny_clip_vocab

    vocab = tiny_clip_vocab(tmp_path / "tok")
    _, folder = hf_lit(tmp_path, vocab_size=len(vocab), eos=vocab["<|endoftext|>"], context=77)
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(tmp_path / "tok" / f, folder / f)
    q = mlx_aimv2.convert(str(folder), tmp_path / "q", quantization=spec(8, 64))
    m = mlx_aimv2.load(str(q), keep_quantized=True)
    assert is_quantized(m.module.text_encoder) and is_quantized(m.module.image_encoder)
    from pathlib import Path

    photo = Path(__file__).parent.parent / "examples" / "grace_hopper.jpg"
    probs = m.classify([photo], ["cat", "dog"])
    assert probs.shape == (1, 2) and abs(probs.sum() - 1) < 1e-5
    again = mlx_aimv2.convert(str(q), tmp_path / "again")  # stays quantized, same spec
    assert json.loads((again / "config.json").read_text())["quantization"]["bits"] == 8
    with pytest.raises(UserError, match="already quantized"):
        mlx_aimv2.convert(str(q), tmp_path / "twice", quantization=spec(4, 64))
    cfg = json.loads((q / "config.json").read_text())
    del cfg["quantization"]
    (q / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="does not say how they were quantized"):
        mlx_aimv2.load(str(q))


def test_bad_quantization_options_are_one_line(tmp_path):
    _, folder = hf_vision(tmp_path)
    for args, word in (
        (["--q-bits", "7"], "--q-bits 7"),
        (["--q-mode", "mxfp4", "--q-bits", "8"], "mxfp4 takes 4"),
        (["--q-group-size", "48"], "--q-group-size 48"),
        (["--q-mode", "int3"], "--q-mode int3"),
    ):
        r = cli(*["convert", str(folder), str(tmp_path / "q"), "-q", *args])
        assert r.exit_code == 1 and word in r.output.strip().splitlines()[-1], r.output
    assert not (tmp_path / "q").exists()
    r = cli(*["convert", "demo", str(tmp_path / "q"), "-q", "--q-group-size", "128"])  # 192 wide
    assert r.exit_code == 1 and "does not divide this model's 192-wide layers; use 32 or 64" in r.output, r.output
    assert not (tmp_path / "q").exists()


def test_training_from_a_quantized_checkpoint_starts_from_dequantized_weights(tmp_path):
    from mlx_aimv2.config import load_config
    from mlx_aimv2.data import write_synthetic
    from mlx_aimv2.train.trainer import Trainer

    q = mlx_aimv2.convert("demo", tmp_path / "q", quantization=spec(8, 64))
    data = write_synthetic(tmp_path / "s", 16, size=112)
    logs = []
    t = Trainer(
        load_config(
            overrides=dict(
                data=str(data),
                out=str(tmp_path / "r"),
                init=str(q),
                image_size=112,
                batch_size=8,
                steps=1,
                warmup=1,
                vocab_size=300,
            )
        ),
        log=logs.append,
    )
    assert any("dequantized" in line for line in logs)
    assert not is_quantized(t.model)
    assert t.run(progress=False)["step"] == 1
