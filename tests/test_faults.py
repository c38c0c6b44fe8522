"""Fault injection: bad input and faults thrown at embed, the Python API, convert / load, and train.
Every case must end in one clear line (exit 1, no traceback) or be handled as valid input; nothing
silent, nothing lost, nothing left half-written."""

import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from helpers import PHOTO, hf_vision, one_clear_line
from helpers import cli as run
from PIL import Image

import mlx_aimv2
from mlx_aimv2.atomic import TMP_PREFIX
from mlx_aimv2.errors import UserError


def no_temporaries(folder: Path):
    assert not [p for p in Path(folder).rglob("*") if p.name.startswith(TMP_PREFIX) or p.suffix == ".tmp"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny converted checkpoint (transformers layout in, ours out) and two images."""
    tmp = tmp_path_factory.mktemp("faults")
    _, hf = hf_vision(tmp)
    out = mlx_aimv2.convert(str(hf), tmp / "mlx")
    imgs = tmp / "imgs"
    imgs.mkdir()
    Image.open(PHOTO).resize((120, 90)).save(imgs / "a.jpg")
    Image.open(PHOTO).resize((80, 100)).save(imgs / "b.png")
    return tmp, hf, out, imgs


def _png(path: Path, w: int, h: int) -> Path:
    """A valid grayscale PNG of w x h zeros, written by hand (compresses to a few hundred bytes)."""
    raw = zlib.compress(b"".join(b"\x00" + bytes(w) for _ in range(h)), 9)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", raw)
        + chunk(b"IEND", b"")
    )
    return path


# ------------------------------------------------------------------------------------------ embed


@pytest.mark.parametrize(
    "dest, word", [("folder", "is a folder"), ("under_a_file", "is a file"), ("x.csv", "unknown output format")]
)
def test_embed_refuses_a_bad_destination_before_any_work(ckpt, tmp_path, dest, word, monkeypatch):
    _, _, model, imgs = ckpt
    (tmp_path / "folder.npy").mkdir()
    (tmp_path / "afile").write_text("x")
    out = {
        "folder": tmp_path / "folder.npy",
        "under_a_file": tmp_path / "afile" / "e.npy",
        "x.csv": tmp_path / "x.csv",
    }[dest]
    for name in ("load", "load_aimv2"):  # what embed loads with (an AIMv2: load_aimv2)
        monkeypatch.setattr(mlx_aimv2.api, name, lambda *a, **k: pytest.fail("loaded a model for a doomed run"))
    one_clear_line(run("embed", imgs, "--model", model, "-o", out), word)


def test_embed_into_a_missing_folder_makes_it(ckpt, tmp_path):
    _, _, model, imgs = ckpt
    r = run("embed", imgs, "--model", model, "-o", tmp_path / "new" / "deeper" / "e.safetensors")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "new" / "deeper" / "e.safetensors").is_file()


@pytest.mark.parametrize("fmt", [".jsonl", ".npy", ".safetensors"])
def test_ctrl_c_keeps_what_is_done(ckpt, tmp_path, monkeypatch, fmt):
    _, _, model, imgs = ckpt
    files = [imgs / "a.jpg"] * 3 + [imgs / "b.png"]
    real, calls = mlx_aimv2.api.AIMv2._numpy_features, []

    def interrupted_at_the_third_batch(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(mlx_aimv2.api.AIMv2, "_numpy_features", interrupted_at_the_third_batch)
    out = tmp_path / f"e{fmt}"
    r = run("embed", *files, "--model", model, "-o", out, "-b", 1)
    assert r.exit_code == 130, r.output
    partial = tmp_path / f"e.partial{fmt}"
    assert "kept the 2 embedding(s)" in r.output and partial.is_file() and not out.exists()
    if fmt == ".jsonl":
        assert len(partial.read_text().splitlines()) == 2
    elif fmt == ".npy":
        assert np.load(partial).shape == (2, 256)
        assert len((tmp_path / "e.partial.files.txt").read_text().splitlines()) == 2
    no_temporaries(tmp_path)


def test_a_full_disk_is_one_line_and_leaves_nothing(ckpt, tmp_path, monkeypatch):
    _, _, model, imgs = ckpt

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", full)
    one_clear_line(
        run("embed", imgs, "--model", model, "-o", tmp_path / "e.npy"), "disk is full", "nothing partial was kept"
    )
    no_temporaries(tmp_path)
    assert not list(tmp_path.iterdir())


def test_unusual_inputs_get_their_own_reason(ckpt, tmp_path):
    _, _, model, imgs = ckpt
    empty = tmp_path / "empty"
    empty.mkdir()
    one_clear_line(run("embed", empty, "--model", model), "folder holds no image files")
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    r = run("embed", imgs / "a.jpg", fifo, "--model", model)
    assert r.exit_code == 2 and "not a regular file" in r.output
    strip = _png(tmp_path / "strip.png", 20000, 1)
    assert strip.stat().st_size < 400
    r = run("embed", imgs / "a.jpg", strip, "--model", model, "-o", tmp_path / "e.jsonl")
    assert r.exit_code == 2 and "strip over 50:1" in r.output
    assert len((tmp_path / "e.jsonl").read_text().splitlines()) == 1  # the good image beside it is written


def test_layers_out_of_range_are_refused(ckpt):
    _, _, model, imgs = ckpt
    one_clear_line(run("embed", imgs, "--model", model, "--layers", "2"), "out of range", "2 blocks")
    one_clear_line(run("embed", imgs, "--model", model, "--layers", "-3"), "out of range")
    r = run("embed", imgs / "a.jpg", "--model", model, "--layers", "-2,1")
    assert r.exit_code == 0 and "layer_0" in r.output and "layer_1" in r.output


def test_nan_weights_give_no_silent_nan(ckpt, tmp_path):
    _, _, model, imgs = ckpt
    bad = tmp_path / "nan"
    shutil.copytree(model, bad)
    w = mx.load(str(bad / "model.safetensors"))
    w["trunk.blocks.0.mlp.fc2.weight"] = mx.full(w["trunk.blocks.0.mlp.fc2.weight"].shape, float("nan"))
    mx.save_safetensors(str(bad / "model.safetensors"), w, metadata={"format": "mlx"})
    r = run("embed", imgs, "--model", bad, "-o", tmp_path / "e.jsonl")
    assert r.exit_code == 1 and "non-finite" in r.output
    assert not (tmp_path / "e.jsonl").exists()
    with pytest.raises(UserError, match="non-finite"):
        mlx_aimv2.load(str(bad)).embed([imgs / "a.jpg"])


# ------------------------------------------------------------------------------------ Python API


@pytest.mark.parametrize(
    "bad, word",
    [
        (np.zeros((3, 64, 64), np.float32), "channels"),
        (np.zeros((2, 64, 64, 3), np.float32), "is a batch"),
        (42, "int"),
        (b"bytes", "bytes"),
        ("nowhere.jpg", "no such image file"),
    ],
)
def test_api_bad_images_are_user_errors(ckpt, bad, word):
    m = mlx_aimv2.load(str(ckpt[2]))
    with pytest.raises(UserError, match=word):
        m.embed([bad])


def test_api_single_item_and_empty_list(ckpt):
    m = mlx_aimv2.load(str(ckpt[2]))
    one = m.embed(ckpt[3] / "a.jpg")
    assert one.shape == (256,)
    assert np.allclose(one, m.embed([ckpt[3] / "a.jpg"])[0], atol=1e-6)
    assert m.embed([]).shape == (0, 256)
    assert "AIMv2(" in repr(m) and "256" in repr(m)


# ------------------------------------------------------------------------------- bad checkpoints


def _edit_config(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps(edit(cfg)))
    return dst


CONFIG_FAULTS = {
    "heads 7": (lambda c: {**c, "vision": {**c["vision"], "num_heads": 7}}, "do not divide"),
    "heads 0": (lambda c: {**c, "vision": {**c["vision"], "num_heads": 0}}, "'num_heads' is 0"),
    "heads -2": (lambda c: {**c, "vision": {**c["vision"], "num_heads": -2}}, "'num_heads' is -2"),
    "eps abc": (lambda c: {**c, "vision": {**c["vision"], "eps": "abc"}}, "'eps' is 'abc'"),
    "a list": (lambda c: [c], "JSON object"),
    "empty vision": (lambda c: {**c, "vision": {}}, "'vision' must be a table"),
    "depth says 3": (lambda c: {**c, "vision": {**c["vision"], "depth": 3}}, "'depth' says 3"),
}


@pytest.mark.parametrize("fault", list(CONFIG_FAULTS))
def test_bad_config_json_is_refused_by_convert_and_embed(ckpt, tmp_path, fault):
    _, _, model, imgs = ckpt
    edit, word = CONFIG_FAULTS[fault]
    bad = _edit_config(model, tmp_path / "bad", edit)
    one_clear_line(run("convert", bad, tmp_path / "out"), word)
    assert not (tmp_path / "out").exists()
    one_clear_line(run("embed", imgs, "--model", bad), word)


PREPROCESSOR_FAULTS = {
    "crop 50": ({"crop_size": {"height": 50, "width": 50}}, "this model takes 56x56"),
    "crop a list": ({"crop_size": [56, 56]}, "'crop_size'"),
    "two means": ({"image_mean": [0.5, 0.5]}, "'image_mean'"),
    "size 0": ({"size": {"shortest_edge": 0}}, "'size' is 0"),
    "std 0": ({"image_std": [0.2, 0, 0.2]}, "'image_std'"),
}


@pytest.mark.parametrize("fault", [*PREPROCESSOR_FAULTS, "not json"])
def test_bad_preprocessor_config_is_refused(ckpt, tmp_path, fault):
    _, _, model, imgs = ckpt
    bad = tmp_path / "bad"
    shutil.copytree(model, bad)
    f = bad / "preprocessor_config.json"
    if fault == "not json":
        f.write_text("{size: 3")
        word = "not valid JSON"
    else:
        change, word = PREPROCESSOR_FAULTS[fault]
        f.write_text(json.dumps({**json.loads(f.read_text()), **change}))
    one_clear_line(run("convert", bad, tmp_path / "out"), word)
    one_clear_line(run("embed", imgs, "--model", bad), word)


@pytest.mark.parametrize("fault", ["int32 weights", "position table", "missing last block"])
def test_damaged_tensors_are_refused(ckpt, tmp_path, fault):
    _, _, model, imgs = ckpt
    bad = tmp_path / "bad"
    shutil.copytree(model, bad)
    w = mx.load(str(bad / "model.safetensors"))
    if fault == "int32 weights":
        w["trunk.blocks.0.attn.qkv.weight"] = w["trunk.blocks.0.attn.qkv.weight"].astype(mx.int32)
        word = "is int32"
    elif fault == "position table":
        w["preprocessor.pos_embed"] = w["preprocessor.pos_embed"][:, :15]
        word = "position table"
    else:
        w = {k: v for k, v in w.items() if not k.startswith("trunk.blocks.1.")}
        word = "'depth' says 2 but the weights hold 1"
    mx.save_safetensors(str(bad / "model.safetensors"), w)
    one_clear_line(run("convert", bad, tmp_path / "out"), word)
    one_clear_line(run("embed", imgs, "--model", bad), word)


def test_convert_never_deletes_what_it_did_not_write(ckpt, tmp_path):
    _, hf, _, _ = ckpt
    dst = tmp_path / "mine"
    dst.mkdir()
    (dst / "notes.txt").write_text("my notes")
    one_clear_line(run("convert", hf, dst), "not an mlx-aimv2 checkpoint", "--overwrite")
    assert [p.name for p in dst.iterdir()] == ["notes.txt"]
    r = run("convert", hf, dst, "--overwrite")
    assert r.exit_code == 0, r.output
    assert (dst / "notes.txt").read_text() == "my notes" and (dst / "model.safetensors").is_file()
    r = run("convert", hf, dst)  # now a checkpoint of ours: converted again in place, notes kept
    assert r.exit_code == 0 and (dst / "notes.txt").is_file()
    one_clear_line(run("convert", hf, dst / "notes.txt"), "is a file")
    no_temporaries(tmp_path)


def test_refused_pickle_says_why(tmp_path):
    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"w": torch.zeros(2), "x": Evil()}, tmp_path / "model.bin")
    r = run("convert", tmp_path / "model.bin", tmp_path / "out")
    line = one_clear_line(r, "refused", "code")
    assert "weights_only=False" not in line


def test_converted_dtype_and_name(ckpt, tmp_path):
    _, hf, model, _ = ckpt
    assert json.loads((model / "config.json").read_text())["name"] != "hf"
    bf16 = mlx_aimv2.convert(str(model), tmp_path / "bf16", dtype="bfloat16")
    again = mlx_aimv2.convert(str(bf16), tmp_path / "again")  # no dtype asked: stays bf16
    assert all(v.dtype == mx.bfloat16 for v in mx.load(str(again / "model.safetensors")).values())


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sharded") / "demo"
    mlx_aimv2.convert("demo", folder, max_shard_size=200_000)
    assert (folder / "model.safetensors.index.json").is_file()
    return folder


@pytest.mark.parametrize(
    "index",
    [
        [1, 2],
        {"weight_map": ["model-00001-of-00002.safetensors"]},
        {"weight_map": {"a.weight": 3}},
        {"weight_map": {"a.weight": ["x"]}},
        {"weight_map": {"a.weight": "../../etc/passwd"}},
        {"weight_map": {}},
        "{not json",
    ],
)
def test_a_shard_index_that_is_not_one_is_one_line(sharded, tmp_path, index):
    """[1, 2], a list as weight_map or a number as a value gave TypeError / AttributeError tracebacks."""
    folder = tmp_path / "m"
    shutil.copytree(sharded, folder)
    text = index if isinstance(index, str) else json.dumps(index)
    (folder / "model.safetensors.index.json").write_text(text)
    with pytest.raises(UserError, match="model.safetensors.index.json"):
        mlx_aimv2.load(str(folder))
    one_clear_line(run("embed", PHOTO, "--model", folder), "model.safetensors.index.json")


@pytest.mark.parametrize("size", ["1" + "0" * 400, "1e400GB", "-5MB", "0"])
def test_a_shard_size_past_any_disk_or_below_a_byte_is_one_line(tmp_path, size):
    """1 followed by 400 zeros gave OverflowError."""
    one_clear_line(run("convert", "demo", tmp_path / "out", "--max-shard-size", size), "--max-shard-size")
    assert not (tmp_path / "out").exists()
