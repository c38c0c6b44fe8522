"""Fine-tuning (objective classify): LoRA layers against numpy, the loss against numpy's cross-entropy,
layer-wise decay, what each `tune` trains, exact resume, and the exported model in its merged and
adapter forms (equal to 1e-5) read by classify, embed and export."""

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from helpers import QUIET, cli, one_clear_line, tiny_config
from mlx.utils import tree_flatten

import mlx_aimv2
from mlx_aimv2 import owner, runs
from mlx_aimv2.checkpoints.mlx_io import save
from mlx_aimv2.config import ModelConfig, load_config, vision_preset
from mlx_aimv2.data.synth import write_labelled
from mlx_aimv2.models import AIMv2VisionEncoder, lora
from mlx_aimv2.quantize import quantize, spec
from mlx_aimv2.train.trainer import Trainer


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_labelled(tmp_path_factory.mktemp("labelled"), 160, "colour", size=64, seed=2)


@pytest.fixture(scope="module")
def init(tmp_path_factory):
    """A tiny trained-looking encoder folder (random weights) at 56 px."""
    mx.random.seed(5)
    vision = vision_preset("tiny", 56, 14)
    enc = AIMv2VisionEncoder(vision)
    mx.eval(enc.parameters())
    return save(enc, ModelConfig(vision=vision, name="tiny init"), tmp_path_factory.mktemp("init") / "enc")


def cfg(data, out, init, **kw):
    base = dict(init=str(init), objective="classify", batch_size=16, steps=6, warmup=2, lr=2e-3, threads=2, tune="lora",
                vocab_size=None)  # fmt: skip
    if kw.get("tune", "lora") == "lora":  # lora_rank alone (another tune) is refused: it would do nothing
        base["lora_rank"] = 4
    return tiny_config(data, out, **{**base, **kw})


def weights(folder) -> dict:
    return dict(mx.load(str(Path(folder) / "model.safetensors")))


# ------------------------------------------------------------------------------------ LoRA layers


@pytest.mark.parametrize("quantized", [False, True])
def test_lora_layer_is_base_plus_scaled_low_rank_update_and_merges_to_it(quantized):
    mx.random.seed(0)
    base = nn.Linear(64, 96, bias=False)
    w = np.array(base.weight)
    if quantized:  # QLoRA: the frozen base is quantized; the reference uses its dequantized weight
        holder = nn.Module()
        holder.blocks = [base]
        quantize(holder, spec(8, 32))
        base = holder.blocks[0]
        w = np.array(mx.dequantize(base.weight, base.scales, base.biases, 32, 8))
    layer = lora.LoRALinear(base, rank=4, alpha=8.0)
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    assert np.allclose(np.array(layer(mx.array(x))), x @ w.T, atol=1e-4)  # B = 0: exactly the base
    layer.lora_b = mx.array(np.random.default_rng(1).standard_normal((4, 96)).astype(np.float32))
    a, b = np.array(layer.lora_a), np.array(layer.lora_b)
    want = x @ w.T + 2.0 * (x @ a) @ b  # alpha / rank = 2
    assert np.abs(np.array(layer(mx.array(x))) - want).max() < 1e-4
    fused = layer.fused()
    assert isinstance(fused, nn.Linear) and np.abs(np.array(fused(mx.array(x))) - want).max() < 1e-4


def test_lora_rank_larger_than_a_layer_is_refused():
    with pytest.raises(ValueError, match="rank 40 exceeds this 32->64 layer"):
        lora.LoRALinear(nn.Linear(32, 64), rank=40, alpha=1.0)


# ------------------------------------------------------------------------------------ the objective


def test_classify_loss_is_numpy_cross_entropy_and_accuracy(shapes, init, tmp_path):
    t = Trainer(cfg(shapes, tmp_path / "run", init), **QUIET)
    batch = next(iter(t.stream))
    from mlx_aimv2.train.objectives import RankShare

    def loss_and_logits():  # the run's model lives on the library's MLX thread (owner.py)
        x, labels = t.objective.prepare(
            mx.array(batch["images"]), mx.array(batch["ids"]), mx.random.key(0), RankShare(mx.distributed.init())
        )
        parts = t.objective.loss(t.model, (x, labels), RankShare(mx.distributed.init()))
        return {k: v.item() for k, v in parts.items()}, np.array(t.model(x)), np.array(labels)

    parts, logits, y = owner.run(loss_and_logits)
    logits = logits.astype(np.float64)
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    assert abs(parts["loss"] - (-logp[np.arange(len(y)), y].mean())) < 1e-5
    assert abs(parts["accuracy"] - (logits.argmax(1) == y).mean()) < 1e-6
    assert set(y.tolist()) <= set(range(len(t.objective.classes))) and len(set(y.tolist())) > 1


def test_layer_decay_scales_each_blocks_step(shapes, init, tmp_path):
    """One full fine-tuning step with layer_decay 0.5 moves block i by 0.5 ** (depth - i) of the
    step it takes without decay (Adam's first step has the same size for every weight)."""
    moves = {}
    for decay in (1.0, 0.5):
        t = Trainer(
            cfg(shapes, tmp_path / f"d{decay}", init, tune="full", layer_decay=decay, steps=1, weight_decay=0.0),
            **QUIET,
        )
        before = {k: np.array(v) for k, v in weights(init).items()}
        t.run(progress=False)
        after = dict(mx.load(str(t.out / "checkpoints" / "step_00000001" / "model.safetensors")))
        moves[decay] = {k: np.abs(np.array(after["encoder." + k]) - v).max() for k, v in before.items()}
    depth = vision_preset("tiny", 56, 14).depth
    for i in range(depth):
        k = f"trunk.blocks.{i}.attn.qkv.weight"
        assert moves[0.5][k] / moves[1.0][k] == pytest.approx(0.5 ** (depth - i), rel=1e-3)
    k = "preprocessor.patchifier.proj.weight"
    assert moves[0.5][k] / moves[1.0][k] == pytest.approx(0.5 ** (depth + 1), rel=1e-3)


@pytest.mark.parametrize("tune", ["head", "lora", "full"])
def test_what_each_tune_trains(shapes, init, tmp_path, tune):
    t = Trainer(cfg(shapes, tmp_path / tune, init, tune=tune, steps=2), **QUIET)
    t.run(progress=False)
    saved = dict(mx.load(str(t.out / "checkpoints" / "step_00000002" / "model.safetensors")))
    base = weights(init)
    same = [
        mx.array_equal(
            saved.get(f"encoder.{k}", saved.get("encoder." + k.replace(".weight", ".base.weight"))), v
        ).item()
        for k, v in base.items()
    ]
    assert all(same) if tune in ("head", "lora") else not any(s for k, s in zip(base, same) if "blocks" in k)
    trainable = {k for k, _ in tree_flatten(t.model.trainable_parameters())}
    assert any(k.startswith("classifier.") for k in trainable)
    assert any("lora_a" in k for k in trainable) == (tune == "lora")


def test_resume_continues_exactly(shapes, init, tmp_path):
    whole = Trainer(cfg(shapes, tmp_path / "whole", init), **QUIET)
    whole.run(progress=False)
    part = Trainer(cfg(shapes, tmp_path / "part", init), **QUIET)
    part.run(progress=False, until=3)
    again = Trainer(cfg(shapes, tmp_path / "part", init), resume=True, **QUIET)
    again.run(progress=False)
    a = weights(tmp_path / "whole" / "checkpoints" / "step_00000006")
    b = weights(tmp_path / "part" / "checkpoints" / "step_00000006")
    assert a.keys() == b.keys() and all(np.allclose(np.array(a[k]), np.array(b[k]), atol=1e-6) for k in a)


# ------------------------------------------------------------------------------------ the result


def test_merged_and_adapter_exports_agree_and_every_command_reads_them(shapes, init, tmp_path):
    t = Trainer(cfg(shapes, tmp_path / "run", init, merge_lora=False), **QUIET)
    t.run(progress=False)
    adapter = tmp_path / "run" / "classifier"
    assert {p.name for p in adapter.iterdir()} >= {"adapters.safetensors", "adapter_config.json", "classifier.json"}
    base = weights(init)  # the adapter form keeps the frozen base exactly as it was given
    assert all(mx.array_equal(weights(adapter)[k], v).item() for k, v in base.items())
    merged = runs.export_run(tmp_path / "run", tmp_path / "merged", merge_lora=True)
    assert not (merged / "adapters.safetensors").exists()
    images = sorted(str(p) for p in (shapes / "val").rglob("*.jpg"))[:6]
    m, a = mlx_aimv2.load(str(merged)), mlx_aimv2.load(str(adapter))
    assert m.classes == a.classes == json.loads((adapter / "classifier.json").read_text())["classes"]
    assert np.abs(m.embed(images) - a.embed(images)).max() < 1e-5
    assert np.abs(m.predict(images) - a.predict(images)).max() < 1e-5
    assert np.allclose(m.predict(images).sum(1), 1, atol=1e-5)
    r = cli(*["classify", images[0], "--model", str(adapter), "--top-k", "2"])
    assert r.exit_code == 0, r.output
    rows = r.output.strip().splitlines()
    probs = m.predict(images[:1])[0]
    assert len(rows) == 2 and rows[0].split()[-1] == m.classes[int(probs.argmax())]
    assert float(rows[0].split("%")[0]) == pytest.approx(probs.max() * 100, abs=0.01)
    r = cli(*["embed", images[0], "--model", str(adapter), "-o", str(tmp_path / "e.npy")])
    assert r.exit_code == 0, r.output
    assert np.abs(np.load(tmp_path / "e.npy").reshape(-1) - m.embed(images[:1])[0]).max() < 1e-5


def test_qlora_trains_adapters_over_a_frozen_quantized_base(shapes, init, tmp_path):
    q = mlx_aimv2.convert(str(init), tmp_path / "q", quantization=spec(8, 64))
    t = Trainer(cfg(shapes, tmp_path / "run", q, merge_lora=False, steps=3), **QUIET)
    t.run(progress=False)
    folder = tmp_path / "run" / "classifier"
    saved, given = weights(folder), weights(q)
    packed = [k for k in given if given[k].dtype == mx.uint32]
    assert packed and all(mx.array_equal(saved[k], given[k]).item() for k in given)  # still quantized, unchanged
    assert json.loads((folder / "config.json").read_text())["quantization"]["bits"] == 8
    merged = runs.export_run(tmp_path / "run", tmp_path / "merged", merge_lora=True)
    assert "quantization" not in json.loads((merged / "config.json").read_text())
    images = sorted(str(p) for p in (shapes / "val").rglob("*.jpg"))[:4]
    a = mlx_aimv2.load(str(folder), keep_quantized=True)
    m = mlx_aimv2.load(str(merged))
    assert np.abs(a.predict(images) - m.predict(images)).max() < 1e-4


def test_the_export_reads_in_transformers(shapes, init, tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import Aimv2VisionModel

    Trainer(cfg(shapes, tmp_path / "run", init, steps=2), **QUIET).run(progress=False)
    r = cli(*["export", str(tmp_path / "run" / "classifier"), str(tmp_path / "hf"), "--format", "transformers"])
    assert r.exit_code == 0, r.output
    back, info = Aimv2VisionModel.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    x = np.random.default_rng(0).standard_normal((1, 56, 56, 3)).astype(np.float32)
    ours = np.array(mlx_aimv2.load(str(tmp_path / "run" / "classifier")).vision(mx.array(x)))
    with torch.no_grad():
        got = back.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2))).last_hidden_state.numpy()
    assert np.abs(got - ours).max() < 1e-4


def test_init_from_a_pre_training_run(shapes, tmp_path):
    """--init a pre-training run folder: its newest checkpoint's encoder is what fine-tuning starts from."""
    from mlx_aimv2.data import write_synthetic

    data = write_synthetic(tmp_path / "synth", 16, size=64, seed=1)
    pre = dict(data=str(data), out=str(tmp_path / "pre"), encoder="tiny", image_size=56, batch_size=8, steps=2,
               warmup=1, save_every=1000, vocab_size=300, threads=1)  # fmt: skip
    Trainer(load_config(overrides=pre), **QUIET).run(progress=False)
    t = Trainer(cfg(shapes, tmp_path / "run", tmp_path / "pre", tune="head", steps=1), **QUIET)
    enc, *_ = runs.load_encoder(tmp_path / "pre")
    mine = dict(tree_flatten(t.model.encoder.parameters()))
    assert all(mx.array_equal(mine[k], v).item() for k, v in tree_flatten(enc.parameters()))


def test_bfloat16_lora_over_a_quantized_base_trains_and_exports(shapes, init, tmp_path):
    q = mlx_aimv2.convert(str(init), tmp_path / "q", quantization=spec(4, 64))
    t = Trainer(cfg(shapes, tmp_path / "run", q, dtype="bfloat16", steps=3), **QUIET)
    result = t.run(progress=False)
    assert np.isfinite(result["last"]["loss"])
    probs = mlx_aimv2.load(str(tmp_path / "run" / "classifier")).predict(
        sorted(str(p) for p in shapes.rglob("*.jpg"))[:2]
    )
    assert probs.shape == (2, 8) and np.allclose(probs.sum(1), 1, atol=1e-4)


def test_predict_from_several_threads_at_once_equals_one_thread(shapes, init, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    Trainer(cfg(shapes, tmp_path / "run", init, tune="head", steps=1), **QUIET).run(progress=False)
    model = mlx_aimv2.load(str(tmp_path / "run" / "classifier"))
    images = sorted(str(p) for p in shapes.rglob("*.jpg"))[:8]
    alone = model.predict(images)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: model.predict(images[i : i + 2]), range(0, 8, 2)))
    assert np.abs(np.concatenate(got) - alone).max() < 1e-6


def test_a_lora_runs_adapters_load_in_peft_onto_the_base_and_equal_the_merged_model(shapes, init, tmp_path):
    """`export RUN DIR --format peft` writes PEFT's layout: peft.PeftModel.from_pretrained puts it on
    transformers' Aimv2VisionModel (the base, exported) and gives what this package's merged model gives."""
    peft = pytest.importorskip("peft")
    import torch
    from helpers import torch_pixels
    from transformers import Aimv2VisionModel

    t = Trainer(cfg(shapes, tmp_path / "run", init, lr=1e-2, lora_layers=2, lora_targets=["qkv", "fc2"]), **QUIET)
    t.run(progress=False)
    for src, dst, fmt in ((init, "base", "transformers"), (tmp_path / "run", "adapter", "peft"),
                          (tmp_path / "run", "merged", "transformers")):  # fmt: skip
        r = cli("export", src, tmp_path / dst, "--format", fmt)
        assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    # the init is a local folder, not a hub id: its transformers export goes beside the adapters
    assert saved["peft_type"] == "LORA" and saved["r"] == 4
    assert saved["base_model_name_or_path"] == str(tmp_path / "adapter" / "base")
    x = torch_pixels(np.random.default_rng(0).normal(size=(2, 56, 56, 3)).astype(np.float32))
    base = Aimv2VisionModel.from_pretrained(tmp_path / "base").eval()
    with torch.no_grad():
        plain = base(pixel_values=x).last_hidden_state.numpy()
        adapted = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()(pixel_values=x).last_hidden_state
        merged = Aimv2VisionModel.from_pretrained(tmp_path / "merged").eval()(pixel_values=x).last_hidden_state
    np.testing.assert_allclose(adapted.numpy(), merged.numpy(), atol=2e-5)
    assert np.abs(plain - merged.numpy()).max() > 1e-3  # the adapters do something: the check can fail
    # AutoPeftModel failed ("Cannot infer the auto class from the config"): it finds base and class alone
    auto = peft.AutoPeftModel.from_pretrained(tmp_path / "adapter").eval()
    with torch.no_grad():
        np.testing.assert_allclose(auto(pixel_values=x).last_hidden_state.numpy(), merged.numpy(), atol=2e-5)


def test_an_adapter_folder_written_before_the_rename_still_loads(shapes, init, tmp_path):
    t = Trainer(cfg(shapes, tmp_path / "run", init, merge_lora=False, steps=2), **QUIET)
    t.run(progress=False)
    folder = tmp_path / "run" / "classifier"
    new = mlx_aimv2.load(str(folder)).embed(sorted(str(p) for p in (shapes / "val").rglob("*.jpg"))[:2])
    (folder / "adapters.safetensors").rename(folder / "adapter.safetensors")
    old = mlx_aimv2.load(str(folder)).embed(sorted(str(p) for p in (shapes / "val").rglob("*.jpg"))[:2])
    np.testing.assert_array_equal(new, old)
    one_clear_line(cli("export", init, tmp_path / "p", "--format", "peft"), "no LoRA adapters")
