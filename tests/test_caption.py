"""Captioning with a pre-training run's decoder (issue 20, part 4): the KV-cached decoding gives the
same tokens as recomputing the whole sequence, greedy and beam; the cached step's logits equal the
decoder's own forward; the CLI and the API read a run; runs that cannot caption say so in one line."""

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from helpers import QUIET, cli, one_clear_line, tiny_config

from mlx_aimv2.data import write_synthetic
from mlx_aimv2.train.trainer import Trainer


def _run(data, out, **kw):
    Trainer(tiny_config(data, out, **{"steps": 6, **kw}), **QUIET).run(progress=False)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("caption")
    data = write_synthetic(tmp / "data", 24, size=64, seed=4, max_objects=1)
    return data, _run(data, tmp / "aimv2"), _run(data, tmp / "image", objective="image")


def test_cached_decoding_equals_the_full_recompute(runs):
    from mlx_aimv2.caption import load

    data, run, _ = runs
    captioner = load(run, max_tokens=12)
    images = sorted((data / "images").iterdir())[:6]
    for beam in (1, 3):
        cached = captioner.ids([str(p) for p in images], beam=beam)
        full = captioner.ids([str(p) for p in images], beam=beam, cache=False)
        assert cached == full, (beam, cached, full)
    assert any(len(c) > 0 for c in cached)


def test_a_cached_step_gives_the_decoders_own_logits(runs):
    from mlx_aimv2.caption import load

    data, run, _ = runs
    c = load(run).captioner
    pixels = mx.random.normal((2, 56, 56, 3))
    ids = mx.array([[5, 9, 17], [3, 3, 40]], dtype=mx.int32)
    _, reference = c.model.decoder(c.model.encoder(pixels), ids)  # (2, 4, V): after BOS and each token
    logits, kv = c._prefix(pixels)
    got = [logits]
    for t in range(3):
        logits, kv = c._next(ids[:, t], t + 1, kv)
        got.append(logits)
    np.testing.assert_allclose(np.stack([np.array(g) for g in got], 1), np.array(reference), atol=2e-4)


def test_caption_command_and_its_errors(runs, tmp_path):
    data, run, image_only = runs
    images = sorted((data / "images").iterdir())[:3]
    r = cli("caption", *images, "--model", run, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [Path(o["path"]).name for o in out] == [p.name for p in images]
    assert all(isinstance(o["caption"], str) for o in out)
    one_clear_line(cli("caption", images[0], "--model", image_only), "objective 'image'", "only patches")
    one_clear_line(cli("caption", images[0], "--model", tmp_path), "not a pre-training run")
    one_clear_line(cli("caption", tmp_path / "nothing.jpg", "--model", run), "no images to caption")


def test_complete_shows_the_next_patch_predictions_the_image_loss_scores(runs, tmp_path):
    """Issue 20, part 5: the decoder's predictions after a prefix of K patches; their MSE over the
    predicted patches is the image loss for that prefix (the model's own losses, to 1e-5)."""
    from mlx_aimv2.models.completion import next_patches, unpatchify
    from mlx_aimv2.runs import load_pretrainer

    data, run, _ = runs
    model, _, pre, cfg = load_pretrainer(run, "image")
    image = sorted((data / "images").iterdir())[0]
    x = mx.array(pre(str(image))[None])
    n = (cfg.image_size // cfg.patch_size) ** 2
    for k in (1, 5, n - 1):
        r = next_patches(model, x, k)
        ref = model.losses(x, mx.zeros((1, 4), dtype=mx.int32), mx.array([k]))["loss_image"]
        assert abs(r["mse"] - ref.item()) < 1e-5, (k, r["mse"], ref.item())
        assert (r["error"][:k] == 0).all() and (r["error"][k:] > 0).all()
    patches = np.array(x[0]).reshape(4, 14, 4, 14, 3).transpose(0, 2, 1, 3, 4).reshape(16, -1)
    np.testing.assert_allclose(r["predicted"][: n - 1], patches[: n - 1], atol=1e-6)  # the prefix as it is
    assert np.allclose(unpatchify(patches, 56, 56, 14), np.array(x[0]))
    out = tmp_path / "grid.png"
    r = cli("complete", image, "--model", run, "--prefix", "6", "-o", out)
    assert r.exit_code == 0 and out.stat().st_size > 1000 and "MSE after 6 of 16" in r.output, r.output
    one_clear_line(cli("complete", image, "--model", run, "--prefix", "16", "-o", out), "give 1 to 15")
    text_only = _run(data, tmp_path / "text", objective="text")
    one_clear_line(cli("complete", image, "--model", text_only, "--prefix", "3", "-o", out), "objective 'text'")


def test_a_run_exported_with_its_decoder_captions_and_completes_as_the_run_does(runs, tmp_path):
    from mlx_aimv2.caption import load

    data, run, image_only = runs
    folder = tmp_path / "with_decoder"
    r = cli("export", run, folder, "--decoder")
    assert r.exit_code == 0, r.output
    assert {"decoder.json", "decoder.safetensors", "tokenizer.json", "model.safetensors"} <= {
        p.name for p in folder.iterdir()
    }
    images = [str(p) for p in sorted((data / "images").iterdir())[:4]]
    assert load(folder, max_tokens=12).ids(images, beam=2) == load(run, max_tokens=12).ids(images, beam=2)
    r = cli("complete", images[0], "--model", folder, "--prefix", "6", "-o", tmp_path / "g.png")
    assert r.exit_code == 0 and "MSE after 6 of 16" in r.output, r.output
    assert cli("export", image_only, tmp_path / "img", "--decoder").exit_code == 0
    one_clear_line(cli("caption", images[0], "--model", tmp_path / "img"), "objective 'image'", "only patches")
    one_clear_line(cli("export", run, tmp_path / "x", "--decoder", "--format", "transformers"), "--decoder exports")
    (folder / "decoder.json").write_text("{")
    one_clear_line(cli("caption", images[0], "--model", folder), "decoder.json: unreadable")


def test_the_bundled_demo_captions_offline_naming_colour_and_shape_above_chance(tmp_path):
    """`caption examples/scenes/images --model demo --json` on a fresh clone, and on 100 held-out
    one-object scenes the demo's decoder (trained on its frozen encoder) names the colour and the
    shape far above chance (1/8, 1/4)."""
    from mlx_aimv2.caption import load

    scenes = Path(__file__).parent.parent / "examples" / "scenes"
    r = cli("caption", scenes / "images", "--model", "demo", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert sorted(Path(o["path"]).name for o in out) == sorted(p.name for p in (scenes / "images").iterdir())
    assert all(o["caption"].split(":")[0] in ("one shape", "two shapes", "three shapes") for o in out)
    held = write_synthetic(tmp_path / "held", 100, size=112, seed=9, max_objects=1)
    rows = [json.loads(line) for line in (held / "captions.jsonl").read_text().splitlines()]
    captions = load("demo")([str(held / r["image"]) for r in rows])
    colour = np.mean([r["labels"]["colour"] in c.split() for r, c in zip(rows, captions)])
    shape = np.mean([r["labels"]["shape"] in c.split() for r, c in zip(rows, captions)])
    assert colour > 0.9 and shape > 0.36, (colour, shape)
