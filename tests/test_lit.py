"""LiT tuning in the trainer: the contrastive loss falls, retrieval beats a random text side, resume is
exact, the result loads like the published LiT layout, and the losses equal numpy's."""

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from helpers import QUIET, ROOT, tiny_config

import mlx_aimv2
from mlx_aimv2.config import load_config
from mlx_aimv2.data import write_synthetic
from mlx_aimv2.errors import UserError
from mlx_aimv2.eval import retrieval as R
from mlx_aimv2.models.losses import clip_loss, sigmoid_loss
from mlx_aimv2.quantize import spec
from mlx_aimv2.train.trainer import Trainer

DEMO = str(ROOT / "weights" / "demo")


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("lit")
    return write_synthetic(root / "train", 256, size=112, seed=1), write_synthetic(root / "held", 96, size=112, seed=5)


def cfg(data, out, **kw):
    lit = dict(
        objective="lit", init=DEMO, tokenizer=str(ROOT / "weights/demo/tokenizer.json"), context_length=32,
        text={"hidden_size": 64, "depth": 1, "num_heads": 2}, projection_dim=64, batch_size=32, steps=120, warmup=10,
        lr=2e-3, encoder=None, image_size=None, vocab_size=None, threads=None,  # the init and the tokenizer decide
    )  # fmt: skip
    return tiny_config(data, out, **{**lit, **kw})


def metrics(out):
    return [json.loads(l) for l in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def _np_log_softmax(x, axis):
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def test_contrastive_losses_equal_numpy():
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(2, 12, 16)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    logits = 7.0 * img @ txt.T
    want = -0.5 * (np.diag(_np_log_softmax(logits, 1)).mean() + np.diag(_np_log_softmax(logits, 0)).mean())
    got = clip_loss(mx.array(img), mx.array(txt), mx.array(7.0)).item()
    assert abs(got - want) < 1e-5, (got, want)
    z = logits - 3.0
    labels = 2 * np.eye(12) - 1
    want = np.log1p(np.exp(-labels * z)).sum() / 12
    got = sigmoid_loss(mx.array(img), mx.array(txt), mx.array(7.0), mx.array(-3.0)).item()
    assert abs(got - want) < 1e-4, (got, want)


def test_lit_tuning_learns_and_beats_a_random_text_side(sets, tmp_path):
    train, held = sets
    t = Trainer(cfg(train, tmp_path / "run"), **QUIET)
    t.run(progress=False)
    m = metrics(tmp_path / "run")
    first, last = np.mean([r["loss"] for r in m[:10]]), np.mean([r["loss"] for r in m[-10:]])
    assert last < 0.6 * first, (first, last)
    # the result is a LiT folder like the published one: load, encode_text, classify all read it
    lit = mlx_aimv2.load(str(tmp_path / "run" / "lit"))
    assert lit.config.kind == "lit" and lit.config.text.hidden_size == 64
    tuned = R.evaluate(lit, str(held))
    R.randomize_text_side(lit)
    floor = R.evaluate(lit, str(held))
    for k in ("t2i@5", "i2t@5"):
        assert tuned[k] > floor[k] + 15 and tuned[k] > 2 * tuned["chance@5"], (k, tuned, floor)
    # the frozen encoder is untouched: the LiT folder's image tower is the demo's
    demo = mlx_aimv2.load(DEMO)
    w = np.array(lit.module.image_encoder.trunk.blocks[0].attn.qkv.weight)
    assert np.array_equal(w, np.array(demo.module.trunk.blocks[0].attn.qkv.weight))


def test_lit_resume_continues_exactly_from_the_cache(sets, tmp_path):
    train, _ = sets
    c = dict(steps=12, save_every=4, lit_loss="sigmoid")
    Trainer(cfg(train, tmp_path / "a", **c), **QUIET).run(progress=False)
    logs = []
    r = Trainer(cfg(train, tmp_path / "b", **c), **QUIET).run(progress=False, until=6)
    assert r["interrupted"]
    Trainer(cfg(train, tmp_path / "b", **c), resume=True, log=logs.append, progress=False).run(progress=False)
    assert any("using the encoder tokens cached" in l for l in logs), logs
    a, b = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert [x["loss"] for x in a] == [x["loss"] for x in b]
    wa = mx.load(str(tmp_path / "a" / "lit" / "model.safetensors"))
    wb = mx.load(str(tmp_path / "b" / "lit" / "model.safetensors"))
    assert all(mx.array_equal(wa[k], wb[k]).item() for k in wa)


def test_images_replaced_in_place_are_never_served_stale_tokens(tmp_path):
    """Issue 17: a run that died before its first checkpoint, its images replaced under the same
    names, run again: the cache is rebuilt from the new images (it is keyed by the files' size/mtime,
    the encoder's weights and the preprocessing), and its tokens are the encoder's on them."""
    import shutil

    from mlx_aimv2.train.token_cache import TokenCache

    data = write_synthetic(tmp_path / "d", 40, size=112, seed=3)
    other = write_synthetic(tmp_path / "o", 40, size=112, seed=4)
    c = dict(steps=2, batch_size=8, save_every=1000)
    Trainer(cfg(data, tmp_path / "run", **c), **QUIET).run(progress=False, until=1)
    shutil.rmtree(tmp_path / "run" / "checkpoints", ignore_errors=True)
    for f in (other / "images").iterdir():
        shutil.copy(f, data / "images" / f.name)
    logs = []
    Trainer(cfg(data, tmp_path / "run", **c), log=logs.append, progress=False)
    assert not any("using the encoder tokens cached" in l for l in logs), logs
    cache = TokenCache(tmp_path / "run" / "token_cache", 1)
    first = sorted((data / "images").iterdir())[0]
    rows = [json.loads(l) for l in (data / "captions.jsonl").read_text().splitlines()]
    i = next(j for j, r in enumerate(rows) if Path(r["image"]).name == first.name)
    want = mlx_aimv2.load(DEMO).embed(str(first), pool="none")
    assert np.abs(cache.get(i).astype(np.float32) - want).max() < 0.05


def test_tuning_a_lit_model_starts_from_its_text_side(sets, tmp_path):
    """A LiT init keeps its head, projections, text tower and tokenizer, and the run starts where it is."""
    train, held = sets
    Trainer(cfg(train, tmp_path / "first", steps=60), **QUIET).run(progress=False)
    first = str(tmp_path / "first" / "lit")
    again = cfg(
        train, tmp_path / "again", init=first, tokenizer=None, steps=1, lr=1e-12, min_lr=0, warmup=0, weight_decay=0
    )
    Trainer(again, **QUIET).run(progress=False)
    a, b = mlx_aimv2.load(first), mlx_aimv2.load(str(tmp_path / "again" / "lit"))
    caps = ["one shape: a large red circle at the left", "two shapes: a small blue square at the top"]
    assert np.allclose(a.encode_text(caps), b.encode_text(caps), atol=1e-5)
    assert (tmp_path / "again" / "lit" / "tokenizer.json").is_file()


def test_lit_user_errors(sets, tmp_path):
    train, _ = sets
    with pytest.raises(UserError, match="set init"):
        cfg(train, tmp_path / "x", init=None)
    with pytest.raises(UserError, match="text config key"):
        cfg(train, tmp_path / "x", text={"width": 3})
    with pytest.raises(UserError, match="lit_loss"):
        cfg(train, tmp_path / "x", lit_loss="hinge")


def test_recall_at_k_counts_identical_captions_and_chance():
    sim = np.array([[0.9, 0.1, 0.0], [0.2, 0.1, 0.8], [0.0, 0.7, 0.3]])
    r = R.recall_at_k(sim, ["a", "b", "b"], ks=(1,))
    # image 1's best text is text 2, whose caption equals its own: a hit; texts 1 and 2 find images 2 and 1
    assert r["i2t@1"] == 100.0 and r["t2i@1"] == 100.0
    assert abs(r["chance@1"] - 100 * np.mean([1 / 3, 2 / 3, 2 / 3])) < 0.01


def test_lit_from_a_training_run_and_from_a_quantized_encoder(sets, tmp_path):
    """Any encoder we load can be frozen: a pre-training run's latest checkpoint, a quantized folder."""
    train, _ = sets
    pre = load_config(
        overrides=dict(
            data=str(train),
            out=str(tmp_path / "pre"),
            encoder="tiny",
            image_size=56,
            batch_size=16,
            steps=2,
            warmup=1,
            vocab_size=300,
            log_every=1,
        )
    )
    Trainer(pre, **QUIET).run(progress=False)
    Trainer(cfg(train, tmp_path / "from_run", init=str(tmp_path / "pre"), steps=3, tokenizer=None), **QUIET).run(
        progress=False
    )
    m = mlx_aimv2.load(str(tmp_path / "from_run" / "lit"))
    assert m.config.vision.hidden_size == 64 and m.encode_text(["a red circle"]).shape == (1, 64)
    q8 = mlx_aimv2.convert(DEMO, tmp_path / "demo-q8", quantization=spec(8, 64, "affine"))
    Trainer(cfg(train, tmp_path / "from_q8", init=str(q8), steps=3), **QUIET).run(progress=False)
    assert mlx_aimv2.load(str(tmp_path / "from_q8" / "lit")).config.kind == "lit"
    with pytest.raises(UserError, match="LiT tuning run"):
        Trainer(cfg(train, tmp_path / "x", init=str(tmp_path / "from_q8")), **QUIET)
