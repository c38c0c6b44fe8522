"""The CLI on tiny converted checkpoints: convert, embed (every format, folders, globs, bad input),
classify, and the hub's offline behaviour."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import PHOTO, hf_lit, hf_vision, save_safetensors, state_dict_np, tiny_clip_vocab, to_mlaim_keys
from helpers import cli as run
from PIL import Image

import mlx_aimv2

torch = pytest.importorskip("torch", reason="compares against PyTorch/transformers: pip install -e '.[test]'")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny transformers checkpoint converted by the CLI, and a folder of images."""
    tmp = tmp_path_factory.mktemp("cli")
    model, hf = hf_vision(tmp)
    r = run("convert", hf, tmp / "mlx")
    assert r.exit_code == 0, r.output
    imgs = tmp / "imgs"
    (imgs / "sub").mkdir(parents=True)
    photo = Image.open(PHOTO)
    photo.save(imgs / "a.jpg")
    photo.rotate(90, expand=True).save(imgs / "sub" / "b.png")
    photo.crop((0, 0, 300, 200)).save(imgs / "c.webp")
    return tmp, model, tmp / "mlx", imgs


def test_convert_writes_the_three_files_and_a_model_card(tiny):
    tmp, _, mlx, _ = tiny
    assert {p.name for p in mlx.iterdir()} == {
        "model.safetensors",
        "config.json",
        "preprocessor_config.json",
        "README.md",
    }
    cfg = json.loads((mlx / "config.json").read_text())
    assert cfg["format"] == "mlx_aimv2" and cfg["vision"]["depth"] == 2
    r = run("convert", mlx, tmp / "bf16", "--dtype", "bfloat16")
    assert r.exit_code == 0
    import mlx.core as mx

    w = mx.load(str(tmp / "bf16" / "model.safetensors"))
    assert all(v.dtype == mx.bfloat16 for v in w.values())


def test_embed_matches_the_reference_model(tiny, tmp_path):
    tmp, model, mlx, imgs = tiny
    out = tmp_path / "e.npy"
    r = run("embed", PHOTO, "--model", mlx, "-o", out)
    assert r.exit_code == 0, r.output
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    px = CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})(
        images=Image.open(PHOTO), return_tensors="pt"
    )["pixel_values"]
    with torch.no_grad():
        ref = model(px).last_hidden_state.mean(1).numpy()
    assert np.abs(np.load(out) - ref).max() <= 1e-4


@pytest.mark.parametrize("fmt", [".npy", ".safetensors", ".jsonl"])
def test_embed_every_output_format_folder_and_glob(tiny, tmp_path, fmt):
    _, _, mlx, imgs = tiny
    out = tmp_path / f"e{fmt}"
    r = run("embed", imgs, str(imgs / "*.jpg"), "--model", mlx, "-o", out, "--batch-size", 2)
    assert r.exit_code == 0, r.output
    if fmt == ".npy":
        assert np.load(out).shape == (4, 256)  # folder (3, recursive) + glob (1)
    elif fmt == ".safetensors":
        from safetensors import safe_open
        from safetensors.numpy import load_file

        assert load_file(str(out))["embedding"].shape == (4, 256)
        with safe_open(str(out), "np") as f:
            files = json.loads(f.metadata()["files"])
        assert [Path(f).name for f in files] == ["a.jpg", "c.webp", "b.png", "a.jpg"]  # sorted, then the glob
    else:
        rows = [json.loads(l) for l in out.read_text().splitlines()]
        assert len(rows) == 4 and len(rows[0]["embedding"]) == 256 and rows[0]["file"].endswith("a.jpg")


def test_embed_tokens_layers_and_pca(tiny, tmp_path):
    _, _, mlx, imgs = tiny
    out = tmp_path / "t.safetensors"
    r = run(
        "embed",
        imgs / "a.jpg",
        imgs / "c.webp",
        "--model",
        mlx,
        "--pool",
        "none",
        "--layers",
        "0,-1",
        "-o",
        out,
        "--pca",
        tmp_path / "pca.png",
    )
    assert r.exit_code == 0, r.output
    from safetensors.numpy import load_file

    d = load_file(str(out))
    assert d["tokens"].shape == (2, 16, 256) and d["layer_0"].shape == (2, 16, 256) and "layer_1" in d
    assert Image.open(tmp_path / "pca.png").size[0] > 100
    r = run("embed", imgs / "a.jpg", "--model", mlx, "--layers", "0", "-o", tmp_path / "x.npy")
    assert r.exit_code == 1 and ".safetensors" in r.output


def test_embed_skips_bad_files_and_lists_them(tiny, tmp_path):
    _, _, mlx, imgs = tiny
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "text.png").write_text("hello")
    (bad / "trunc.jpg").write_bytes(PHOTO.read_bytes()[:2000])
    out = tmp_path / "e.npy"
    r = run("embed", imgs / "a.jpg", bad, tmp_path / "missing.jpg", "--model", mlx, "-o", out)
    assert r.exit_code == 2  # partial success
    assert np.load(out).shape == (1, 256)
    for name in ("empty.jpg", "text.png", "trunc.jpg", "missing.jpg"):
        assert name in r.output
    assert "Traceback" not in r.output
    r = run("embed", bad / "empty.jpg", "--model", mlx)
    assert r.exit_code == 1 and "empty" in r.output


def _expect_error(result, *words):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    line = result.output.strip().splitlines()[-1]
    for w in words:
        assert w in line, line


def test_bad_checkpoints(tiny, tmp_path):
    tmp, model, mlx, imgs = tiny
    sd = to_mlaim_keys(state_dict_np(model))
    missing = dict(sd)
    missing.pop("trunk.blocks.1.mlp.fc2.weight")
    extra = dict(sd, **{"trunk.blocks.0.attn.extra": np.zeros(3, np.float32)})
    wrong = dict(sd, **{"trunk.blocks.0.mlp.fc2.weight": np.zeros((256, 100), np.float32)})
    for name, d, word in [("missing", missing, "Missing"), ("extra", extra, "not in model"), ("wrong", wrong, "shape")]:
        f = save_safetensors(d, tmp_path / name / "model.safetensors")
        _expect_error(run("embed", imgs / "a.jpg", "--model", f), str(f), word)
    (tmp_path / "trunc").mkdir()
    (tmp_path / "trunc" / "model.safetensors").write_bytes((mlx / "model.safetensors").read_bytes()[:5000])
    _expect_error(run("convert", tmp_path / "trunc", tmp_path / "o"), "cannot read checkpoint")
    _expect_error(run("embed", imgs / "a.jpg", "--model", "aimv2-giant-patch99"), "neither a local path nor a hub id")
    _expect_error(run("embed", imgs / "a.jpg", "--model", tmp_path / "nowhere"), "no such file or folder")


def test_hub_offline_cache(tiny, tmp_path, monkeypatch):
    """A hub id resolves from a local cache with the hub unreachable, and says so when it is not cached."""
    _, _, mlx, imgs = tiny
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    r = run("embed", imgs / "a.jpg", "--model", "apple/aimv2-large-patch14-336")
    _expect_error(r, "apple/aimv2-large-patch14-336@639423ae", "not in the local Hugging Face cache")
    # a cache laid out as huggingface_hub writes it, at the pinned revision
    from mlx_aimv2.hub import REVISIONS

    rev = REVISIONS["aimv2-large-patch14-336"]
    snap = tmp_path / "cache" / "models--apple--aimv2-large-patch14-336" / "snapshots" / rev
    snap.mkdir(parents=True)
    for f in mlx.iterdir():
        shutil.copy(f, snap / f.name)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text(rev)
    r = run("embed", imgs / "a.jpg", "--model", "apple/aimv2-large-patch14-336", "-o", tmp_path / "e.npy")
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "e.npy").shape == (1, 256)


def test_default_model_falls_back_to_demo_offline(tiny, tmp_path, monkeypatch):
    from mlx_aimv2 import hub

    _, _, mlx, imgs = tiny
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setitem(hub.BUNDLED, "demo", mlx)
    r = run("embed", imgs / "a.jpg", "-o", tmp_path / "e.npy")
    assert r.exit_code == 0, r.output
    assert "demo" in r.output and np.load(tmp_path / "e.npy").shape == (1, 256)


def test_classify_with_lit_and_clip_tokenizer(tmp_path):
    vocab = tiny_clip_vocab(tmp_path / "tok")
    model, folder = hf_lit(tmp_path, vocab_size=len(vocab), eos=vocab["<|endoftext|>"], context=77)
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(tmp_path / "tok" / f, folder / f)
    r = run("convert", folder, tmp_path / "lit")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "lit" / "vocab.json").is_file()
    # our tokenizer equals transformers' CLIPTokenizer on the same files
    from transformers import CLIPTokenizer

    ref_tok = CLIPTokenizer(str(tmp_path / "tok" / "vocab.json"), str(tmp_path / "tok" / "merges.txt"))
    m = mlx_aimv2.load(str(tmp_path / "lit"))
    texts = ["a photo of a cat.", "A  Photo of a DOG!", "dogs & cats 42"]
    ref_ids = ref_tok(texts, padding="max_length", max_length=77)["input_ids"]
    assert (m.tokenizer(texts) == np.array(ref_ids)).all()
    # zero-shot probabilities equal the reference model's softmax over logits_per_image
    r = run("classify", PHOTO, "--labels", "cat,dog,photo", "--model", tmp_path / "lit")
    assert r.exit_code == 0, r.output
    probs = {line.split()[1]: float(line.split()[0].rstrip("%")) / 100 for line in r.output.strip().splitlines()}
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    px = CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})(
        images=Image.open(PHOTO), return_tensors="pt"
    )["pixel_values"]
    ids = ref_tok(
        [f"a photo of {l}." for l in ("cat", "dog", "photo")], padding="max_length", max_length=77, return_tensors="pt"
    )["input_ids"]
    with torch.no_grad():
        ref = model(input_ids=ids, pixel_values=px, attention_mask=torch.ones_like(ids)).logits_per_image.softmax(-1)[0]
    for i, l in enumerate(("cat", "dog", "photo")):
        assert abs(probs[l] - float(ref[i])) < 1e-3
    _, vision_only = hf_vision(tmp_path / "v")
    _expect_error(run("classify", PHOTO, "--labels", "x", "--model", vision_only), "LiT")


def test_batched_embedding_equals_one_by_one(tiny):
    """A batch is spread over CPU streams; rows must come back in order and unchanged."""
    _, _, mlx, imgs = tiny
    m = mlx_aimv2.load(str(mlx))
    files = [imgs / "a.jpg", imgs / "c.webp", imgs / "sub" / "b.png"]
    together = m.embed(files, batch_size=3)
    alone = np.stack([m.embed([f], batch_size=1)[0] for f in files])
    assert np.abs(together - alone).max() < 1e-5
    toks = m.embed(files, pool="none", layers=(0,), batch_size=3)
    assert np.abs(toks["layer_0"][1] - m.embed([files[1]], pool="none", layers=(0,))["layer_0"][0]).max() < 1e-5


def test_tokenizer_from_a_hub_repo_via_the_local_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    from mlx_aimv2.errors import UserError
    from mlx_aimv2.tokenizer import load_tokenizer, train_bpe

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="google/siglip-base-patch16-224/tokenizer.json"):
        load_tokenizer("google/siglip-base-patch16-224")
    rev = "0" * 40  # a cache laid out as huggingface_hub writes it
    repo = tmp_path / "cache" / "models--google--siglip-base-patch16-224"
    (repo / "snapshots" / rev).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    train_bpe(["a red circle", "a blue square at the left"] * 20, 300, repo / "snapshots" / rev / "tokenizer.json")
    tok = load_tokenizer("google/siglip-base-patch16-224")
    ids = tok(["a red circle"])
    assert ids.shape == (1, 77) and ids[0, 0] != tok.pad_id and (ids[0, 10:] == tok.pad_id).all()
