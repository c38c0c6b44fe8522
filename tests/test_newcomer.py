"""What a new user meets: ragged native outputs, CLIP's special tokens, probing a LiT model from
scratch, and the README's main job from an installed wheel rather than a clone."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import PHOTO, ROOT, hf_lit, hf_vision, tiny_clip_vocab
from helpers import cli as run
from PIL import Image

import mlx_aimv2


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("native")
    _, folder = hf_vision(tmp, is_native=True)
    Image.open(PHOTO).resize((300, 200)).save(tmp / "wide.jpg")
    Image.open(PHOTO).resize((300, 300)).save(tmp / "tall.jpg")
    return tmp, mlx_aimv2.convert(str(folder), tmp / "mlx")


def test_native_tokens_of_different_sizes(native, tmp_path):
    tmp, model = native
    files = [tmp / "wide.jpg", tmp / "tall.jpg", tmp / "wide.jpg"]
    m = mlx_aimv2.load(str(model))
    toks = m.embed(files, pool="none")
    assert isinstance(toks, list) and toks[0].shape != toks[1].shape and toks[0].shape == toks[2].shape
    from safetensors import safe_open
    from safetensors.numpy import load_file

    r = run("embed", *files, "--model", model, "--pool", "none", "-o", tmp_path / "t.safetensors")
    assert r.exit_code == 0, r.output
    saved = load_file(str(tmp_path / "t.safetensors"))
    with safe_open(str(tmp_path / "t.safetensors"), "numpy") as f:
        names = json.loads(f.metadata()["files"])
    assert names == [str(f) for f in files]
    assert np.allclose(saved["tokens/1"], toks[1], atol=1e-5)
    r = run("embed", *files, "--model", model, "--pool", "none", "-o", tmp_path / "t.jsonl")
    assert r.exit_code == 0 and len((tmp_path / "t.jsonl").read_text().splitlines()) == 3
    r = run("embed", *files, "--model", model, "--pool", "none", "-o", tmp_path / "t.npy")
    assert r.exit_code == 1 and ".safetensors or .jsonl" in r.output.strip().splitlines()[-1]
    assert not (tmp_path / "t.npy").exists()


def test_clip_special_tokens_in_text_match_transformers(tmp_path):
    from transformers import CLIPTokenizer

    from mlx_aimv2.tokenizer import clip_tokenizer

    tiny_clip_vocab(tmp_path)
    ours = clip_tokenizer(tmp_path)
    ref = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    texts = ["a cat<|endoftext|>dog", "<|startoftext|>photo of a cat", "A  Photo <|endoftext|> of"]
    want = ref(texts, padding="max_length", max_length=77)["input_ids"]
    assert (ours(texts) == np.array(want)).all()


def test_probe_from_random_init_on_a_lit_model(tmp_path):
    from mlx_aimv2.data import write_synthetic

    _, folder = hf_lit(tmp_path)
    data = write_synthetic(tmp_path / "s", 40, size=56, max_objects=1)
    out = tmp_path / "p.json"
    r = run(
        "probe",
        "-m",
        folder,
        "--data",
        data,
        "--random-init",
        "--methods",
        "knn,linear",
        "--epochs",
        "1",
        "--attributes",
        "colour",
        "-o",
        out,
        "--cache",
        tmp_path / "cache",
    )
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["random_init"] and res["epochs"]["colour"] > 1  # the epochs it really ran are recorded


def test_main_job_from_an_installed_wheel(tmp_path):
    """`pip install <wheel>` then the README's main command: the demo ships inside the package."""
    pytest.importorskip("setuptools", minversion="77")
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT), "-w", str(wheels)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(site),
            *map(str, wheels.glob("*.whl")),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    env = dict(os.environ, PYTHONPATH=str(site), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    r = subprocess.run(
        [sys.executable, "-m", "mlx_aimv2", "embed", str(PHOTO), "--pca", str(tmp_path / "p.png")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert str(site / "mlx_aimv2" / "demo") in r.stderr and (tmp_path / "p.png").is_file()
    # and text search works from the wheel alone: demo-lit ships inside the package too
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import mlx_aimv2; m = mlx_aimv2.load('demo-lit'); print(m.folder, m.encode_text(['a red circle']).shape)",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0 and str(site / "mlx_aimv2" / "demo_lit") in r.stdout and "(1, 128)" in r.stdout, r.stderr


def test_training_says_what_it_did(tmp_path):
    from mlx_aimv2.data import write_synthetic

    data = write_synthetic(tmp_path / "s", 32, size=64)
    r = run(
        "train",
        "--data",
        data,
        "--out",
        tmp_path / "r",
        "-b",
        "8",
        "--steps",
        "2",
        "--set",
        "warmup=5",
        "--set",
        "vocab_size=1024",
        "--no-progress",
    )
    assert r.exit_code == 0, r.output
    assert "warmup (5) is not shorter than steps (2)" in r.output
    assert "training runs at 224 px, so they are upsampled" in r.output
    made = json.loads((tmp_path / "r" / "tokenizer.json").read_text())["model"]["vocab"]
    assert f"trained a {len(made)}-token BPE" in r.output and "asked for 1024" in r.output
    assert run("--version").output.strip() == f"mlx-aimv2 {mlx_aimv2.__version__}"
    help_text = run("train", "--help").output
    assert "small" in help_text and "default: 224" in help_text


def test_export_into_the_working_directory_is_one_clear_line(tmp_path, monkeypatch):
    from mlx_aimv2.data import write_synthetic

    data = write_synthetic(tmp_path / "s", 16, size=64)
    r = run(
        "train",
        "--data",
        data,
        "--out",
        tmp_path / "r",
        "--image-size",
        "56",
        "-b",
        "8",
        "--steps",
        "1",
        "--set",
        "vocab_size=300",
        "--no-progress",
    )
    assert r.exit_code == 0, r.output
    monkeypatch.chdir(tmp_path)
    r = run("export", tmp_path / "r", ".")
    assert r.exit_code == 1 and "not an mlx-aimv2 checkpoint" in r.output and "Traceback" not in r.output
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert run("export", tmp_path / "r", ".").exit_code == 0 and (empty / "model.safetensors").is_file()


def test_images_are_decoded_ahead_in_threads_in_input_order(tmp_path, monkeypatch):
    import threading

    from mlx_aimv2.preprocess import decode_ahead

    seen = []

    def slow_square(i):
        seen.append(threading.current_thread().name)
        if i == 3:
            raise ValueError("bad item 3")
        return i * i

    out = list(decode_ahead(slow_square, range(10), workers=3))
    assert [i for i, _ in out] == list(range(10))
    assert [v for i, v in out if i != 3] == [i * i for i in range(10) if i != 3]
    assert isinstance(out[3][1], ValueError)  # errors stay with their item
    assert all(name.startswith("mlx-aimv2-decode") for name in seen)
    # and through the API: same rows as one by one, a bad file in the middle skipped and named
    m = mlx_aimv2.load("demo")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    files = [PHOTO, bad, PHOTO, PHOTO]
    errors = []
    rows = list(m.iter_embed(files, errors=errors, batch_size=2))
    assert [r[0] for r in rows] == [PHOTO] * 3 and errors[0][0] == bad
    assert np.allclose(rows[2][1]["embedding"], m.embed(PHOTO), atol=1e-5)
