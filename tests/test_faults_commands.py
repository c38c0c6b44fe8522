"""Issue 17's fault cases over the other commands and the Python API: a file where a folder must be,
read-only places, bad option values, templates, offline defaults, the API's edge inputs, leftovers
of killed writers, and a host process whose warning and logging set-up must stay as it was."""

import json
import logging
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import PHOTO, ROOT, cli, one_clear_line, read_only_folder
from helpers import one_clear_line as one_line
from PIL import Image

import mlx_aimv2
from mlx_aimv2.atomic import TMP_PREFIX
from mlx_aimv2.config import load_config
from mlx_aimv2.data.synth import write_synthetic
from mlx_aimv2.errors import UserError

SCENES = ROOT / "examples" / "scenes" / "images"


@pytest.fixture
def afile(tmp_path):
    f = tmp_path / "afile"
    f.write_text("not a folder")
    return f


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from mlx_aimv2.data import write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("synth"), 24, size=64, seed=0, max_objects=1)


def test_a_file_where_a_folder_must_be(afile, synth, tmp_path):
    one_line(cli("convert", "demo", afile / "x"), "a file is in the way")
    one_line(cli("index", PHOTO, "--db", afile / "lib.aimv2", "-m", "demo-lit", "--no-progress"), "afile")
    one_line(cli("embed", PHOTO, "-m", "demo", "--pca", afile / "p.png"), "is a file")
    one_line(cli("data", "synth", afile, "--n", "2"), "is a file")
    one_line(cli("data", "synth", afile / "x", "--n", "2"), "a file is in the way")
    one_line(cli("tokenizer", "train", synth, "-o", afile / "t.json"), "is a file")
    one_line(cli("train", "--data", synth, "--out", afile / "run", "--steps", "1"), "afile")
    assert afile.read_text() == "not a folder"


def test_bad_values_and_names(synth, tmp_path):
    one_line(cli("embed", PHOTO, "-m", "demo", "--pca", tmp_path / "pca.xyz"), "--pca", ".png")
    assert cli("data", "synth", tmp_path / "s", "--size", "-5").exit_code == 2  # typer's own range check
    assert cli("data", "synth", tmp_path / "s", "--size", "0").exit_code == 2
    assert not (tmp_path / "s").exists()
    folder = tmp_path / "folder"
    folder.mkdir()
    one_line(cli("tokenizer", "train", synth, "-o", folder), "is a folder")
    assert cli("tokenizer", "train", synth).exit_code == 2  # -o is required: nothing lands in the working dir
    if Path("/proc/self").is_dir():
        one_line(cli("tokenizer", "train", synth, "-o", "/proc/tok.json"), "/proc/tok.json")
    one_line(cli("probe", "-m", "demo", "--data", tmp_path / "missing"), "--data", "no such folder")
    one_line(cli("probe", "-m", "demo", "--data", synth, "-o", folder), "is a folder")
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("template", ["{0} {1}", "a {x}", "{", 42])
def test_classify_templates(template):
    r = cli("classify", PHOTO, "--labels", "cat,dog", "-m", "demo-lit", "--template", template)
    one_line(r, "template", "'{}'")
    lit = mlx_aimv2.load("demo-lit")
    with pytest.raises(UserError, match="template"):
        lit.classify([PHOTO], ["cat"], template)


def test_classify_offline_falls_back_to_demo_lit_and_says_so(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = cli("classify", PHOTO, "--labels", "a person,a cat")
    assert r.exit_code == 0, r.output
    assert "using the bundled demo-lit" in r.output and "%" in r.output


def test_read_only_places(synth, tmp_path):
    with read_only_folder(None, tmp_path / "ro") as ro:
        one_line(cli("convert", "demo", ro / "x"), str(ro))
        one_line(cli("train", "--data", synth, "--out", ro / "run", "--steps", "1"), str(ro))
        one_line(cli("index", PHOTO, "--db", ro / "lib.aimv2", "-m", "demo-lit", "--no-progress"), str(ro))
        one_line(cli("embed", PHOTO, "-m", "demo", "-o", ro / "e.npy"), str(ro))
        assert list(ro.iterdir()) == []


def test_leftovers_of_a_killed_export_are_removed_by_the_next_write(tmp_path):
    dead = tmp_path / f"{TMP_PREFIX}999999999-abcd"  # a killed writer's: its pid is gone
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"x" * 1000)
    live = tmp_path / f"{TMP_PREFIX}{os.getpid()}-live"  # a writer still at work: spared
    live.mkdir()
    assert cli("convert", "demo", tmp_path / "out").exit_code == 0
    assert not dead.exists() and live.exists()


def test_api_edge_inputs_are_one_user_error_naming_the_argument():
    m = mlx_aimv2.load("demo")
    lit = mlx_aimv2.load("demo-lit")
    cases = [
        (lambda: m.embed(np.zeros((0, 0, 3), np.uint8)), "no pixels"),
        (lambda: lit.encode_text([None]), "texts"),
        (lambda: lit.encode_text([]), "texts"),
        (lambda: lit.encode_image([]), "images"),
        (lambda: lit.classify([PHOTO], []), "labels"),
    ]
    for call, word in cases:
        with pytest.raises(UserError, match=word):
            call()


def test_the_api_refuses_huge_and_strip_images_at_once(monkeypatch):
    """Refused from the image's size alone: no pixel is resized or converted first."""
    m = mlx_aimv2.load("demo")
    touched = []
    for name in ("resize", "convert", "reduce"):
        real = getattr(Image.Image, name)
        monkeypatch.setattr(
            Image.Image, name, lambda self, *a, _n=name, _r=real, **k: (touched.append(_n), _r(self, *a, **k))[1]
        )
    for image in (np.zeros((1, 20000, 3), np.uint8), Image.new("RGB", (20000, 1))):
        with pytest.raises(UserError, match="strip"):
            m.embed(image)
    assert touched == []


def test_index_search_argument_types(tmp_path):
    with mlx_aimv2.Index(tmp_path / "lib.aimv2", model="demo-lit") as lib:
        lib.add([PHOTO])
        with pytest.raises(UserError, match="k = '5'"):
            lib.search(text="a person", k="5")
        with pytest.raises(UserError, match="text"):
            lib.search(text=5)


def test_the_library_prints_nothing_and_the_cli_restores_the_host(tmp_path, monkeypatch, capsys):
    """load() notes go through logging (never stdout); cli.main() leaves warnings/logging as it found them."""
    import huggingface_hub.constants as c

    from mlx_aimv2 import cli as cli_module
    from mlx_aimv2.api import load_default

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    notes = []
    handler = logging.Handler()
    handler.emit = lambda record: notes.append(record.getMessage())
    logging.getLogger("mlx_aimv2").addHandler(handler)
    try:
        load_default("lit")
    finally:
        logging.getLogger("mlx_aimv2").removeHandler(handler)
    assert capsys.readouterr().out == ""
    assert any("demo-lit" in n for n in notes), notes
    before = warnings.showwarning
    monkeypatch.setattr(sys, "argv", ["mlx-aimv2", "--version"])
    with pytest.raises(SystemExit):
        cli_module.main()
    assert warnings.showwarning is before
    assert logging.getLogger("mlx_aimv2").handlers == []


def test_without_mlx_the_command_says_so_in_one_line():
    code = (
        "import sys; sys.modules['mlx.core'] = None; sys.argv = ['/usr/bin/mlx-aimv2', '--version']\n"
        "from mlx_aimv2.cli import console; console()"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "mlx-aimv2[cpu]" in r.stderr
    lib = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['mlx.core'] = None; import mlx_aimv2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "ImportError" in lib.stderr  # a program importing the package gets an exception it can catch


def test_a_json_config_of_nan_is_refused(synth, tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"lr": float("nan")}))  # Python writes NaN, which json reads back
    one_line(cli("train", "--config", cfg, "--data", synth, "--out", tmp_path / "r"), "'lr' = nan")
    assert not (tmp_path / "r").exists()


def test_embed_into_a_pipe_that_closes_ends_quietly(tmp_path):
    shutil.copytree(SCENES, tmp_path / "photos")
    r = subprocess.run(f"{sys.executable} -m mlx_aimv2 embed photos --model demo | head -1", shell=True, cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.stdout.count("\n") == 1 and "embedding" in r.stdout
    assert "error" not in r.stderr and "Broken pipe" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr
    assert not list(tmp_path.glob("*.partial*"))


def test_one_progress_switch_silences_every_bar(three_shards, tmp_path, capfd):
    from mlx_aimv2.train.trainer import Trainer

    cfg = load_config(overrides=dict(data=str(three_shards), out=str(tmp_path / "run"), encoder="tiny", image_size=28,
                                     batch_size=4, steps=2, threads=1, vocab_size=300))  # fmt: skip
    Trainer(cfg, log=lambda *a: None, progress=False).run()
    out, err = capfd.readouterr()
    assert "it/s" not in err and "%|" not in err and "step" not in err, err


def test_dupes_watch_and_zeroshot_refuse_what_cannot_work(tmp_path):
    (tmp_path / "photos").mkdir()
    shutil.copy(PHOTO, tmp_path / "photos" / "a.jpg")
    db = tmp_path / "lib.aimv2"
    assert cli("index", tmp_path / "photos", "--db", db, "--model", "demo-lit", "--no-progress").exit_code == 0
    one_clear_line(cli("dupes", tmp_path / "nowhere.aimv2"), "no such index")
    one_clear_line(cli("dupes", db, "--grid", tmp_path), "is a folder")
    one_clear_line(cli("index", PHOTO, "--db", db, "--watch"), "folder")
    with read_only_folder(None, tmp_path / "ro") as ro:  # a read-only disk: refused before any work
        one_clear_line(cli("zeroshot", "--model", "demo-lit", "--data", tmp_path, "-o", ro / "z.json"), "z.json")


@pytest.fixture(scope="module")
def three_shards(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("three_shards"), 24, size=32, shards=3)
