"""Export to transformers: what we write, transformers' own from_pretrained loads with no missing or
unexpected keys, and it computes what the source computes (float, quantized, LiT, native, a run)."""

import json

import mlx.core as mx
import numpy as np
import pytest
from helpers import cli, hf_lit, hf_vision, torch_pixels

import mlx_aimv2
from mlx_aimv2.quantize import spec

torch = pytest.importorskip("torch", reason="compares against PyTorch/transformers: pip install -e '.[test]'")


def _export(src, dst):
    r = cli(*["export", str(src), str(dst), "--format", "transformers"])
    assert r.exit_code == 0, r.output
    assert {p.name for p in dst.iterdir()} >= {"model.safetensors", "config.json", "preprocessor_config.json"}
    assert not list(dst.glob("*.bin"))
    return dst


def _load_hf(cls, folder):
    model, info = cls.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model.eval()


@pytest.mark.parametrize("native", [False, True])
def test_float_and_quantized_encoders_round_trip(tmp_path, native):
    from transformers import Aimv2VisionModel

    ref, hf = hf_vision(tmp_path, is_native=native)
    x = np.random.default_rng(0).standard_normal((2, 42 if native else 56, 70 if native else 56, 3)).astype(np.float32)
    ours = mlx_aimv2.convert(str(hf), tmp_path / "ours")
    back = _load_hf(Aimv2VisionModel, _export(ours, tmp_path / "back"))
    with torch.no_grad():
        want = ref(torch_pixels(x)).last_hidden_state.numpy()
        got = back(torch_pixels(x)).last_hidden_state.numpy()
    assert np.abs(got - want).max() <= 1e-5
    again = mlx_aimv2.convert(str(tmp_path / "back"), tmp_path / "again")  # export then convert: bit-identical
    wa, wb = mx.load(str(ours / "model.safetensors")), mx.load(str(again / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(mx.array_equal(wa[k], wb[k]).item() for k in wa)
    q = mlx_aimv2.convert(str(ours), tmp_path / "q4", quantization=spec(4, 64))
    back_q = _load_hf(Aimv2VisionModel, _export(q, tmp_path / "back_q"))
    with torch.no_grad():
        got_q = back_q(torch_pixels(x)).last_hidden_state.numpy()
    ours_q = np.array(mlx_aimv2.load(str(q)).vision(mx.array(x)))
    assert np.abs(got_q - ours_q).max() <= 2e-4  # the dequantized weights, exactly as MLX runs them
    assert np.abs(got_q - want).max() > 1e-4  # and really the quantized model, not the float one


def test_lit_round_trip(tmp_path):
    from transformers import Aimv2Model

    ref, hf = hf_lit(tmp_path)
    back = _export(mlx_aimv2.convert(str(hf), tmp_path / "ours"), tmp_path / "back")
    assert json.loads((back / "config.json").read_text())["architectures"] == ["Aimv2Model"]
    model, info = Aimv2Model.from_pretrained(back, output_loading_info=True, attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    x = np.random.default_rng(0).standard_normal((2, 56, 56, 3)).astype(np.float32)
    ids = torch.from_numpy(np.random.default_rng(1).integers(0, 299, (2, 16)))
    ids[:, 10] = 299
    kw = dict(input_ids=ids, pixel_values=torch_pixels(x), attention_mask=torch.ones_like(ids))
    with torch.no_grad():
        want, got = ref(**kw), model.eval()(**kw)
    assert np.abs(got.logits_per_image.numpy() - want.logits_per_image.numpy()).max() <= 1e-4


def test_a_training_run_exports_for_pytorch(tmp_path):
    from transformers import Aimv2VisionModel

    from mlx_aimv2.data import write_synthetic

    data = write_synthetic(tmp_path / "s", 16, size=64)
    r = cli(
        *[
            "train",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "run"),
            "--image-size",
            "56",
            "-b",
            "8",
            "--steps",
            "2",
            "--set",
            "vocab_size=300",
            "--no-progress",
        ],
    )
    assert r.exit_code == 0, r.output
    folder = _export(tmp_path / "run", tmp_path / "back")
    back = _load_hf(Aimv2VisionModel, folder)
    x = np.random.default_rng(0).standard_normal((1, 56, 56, 3)).astype(np.float32)
    ours = np.array(mlx_aimv2.load(str(tmp_path / "run" / "encoder")).vision(mx.array(x)))
    with torch.no_grad():
        got = back(torch_pixels(x)).last_hidden_state.numpy()
    assert np.abs(got - ours).max() <= 1e-4
    from transformers import CLIPImageProcessor

    assert CLIPImageProcessor.from_pretrained(folder).crop_size["height"] == 56


def test_a_lit_tuning_run_exports_for_pytorch(tmp_path):
    """LiT tuning's result, from the run folder, loads in transformers' Aimv2Model and gives our logits."""
    from pathlib import Path

    from transformers import Aimv2Model

    from mlx_aimv2.data import write_synthetic

    root = Path(__file__).parent.parent
    data = write_synthetic(tmp_path / "s", 16, size=112)
    r = cli(
        *[
            "train",
            "--objective",
            "lit",
            "--init",
            str(root / "weights" / "demo"),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "run"),
            "-b",
            "8",
            "--steps",
            "3",
            "--no-progress",
            "--set",
            f"tokenizer={root / 'weights/demo/tokenizer.json'}",
            "--set",
            "context_length=32",
            "--set",
            "text.hidden_size=64",
            "--set",
            "text.depth=1",
            "--set",
            "text.num_heads=2",
        ],
    )
    assert r.exit_code == 0, r.output
    folder = _export(tmp_path / "run", tmp_path / "back")
    assert (folder / "tokenizer.json").is_file()
    model, info = Aimv2Model.from_pretrained(folder, output_loading_info=True, attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ours = mlx_aimv2.load(str(tmp_path / "run" / "lit"))
    x = np.random.default_rng(0).standard_normal((2, 112, 112, 3)).astype(np.float32)
    ids = ours.tokenizer(["one shape: a large red circle at the left", "two shapes: a small blue square"])
    want = np.array(ours.module(mx.array(x), mx.array(ids)))
    with torch.no_grad():
        got = model.eval()(
            input_ids=torch.from_numpy(ids.astype(np.int64)),
            pixel_values=torch_pixels(x),
            attention_mask=torch.ones(ids.shape, dtype=torch.long),
        ).logits_per_image.numpy()
    assert np.abs(got - want).max() <= 1e-3 * max(1.0, np.abs(want).max()), (got, want)
