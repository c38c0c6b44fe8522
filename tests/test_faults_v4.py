"""Issue 35's bad input that still got a traceback or silence: sharded indexes that are not one,
a shard size past any disk, zero-shot templates under one rule for classify and zeroshot, a shard
folder that mixes plain and compressed shards, and Ctrl-C in `index --watch`."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from helpers import PHOTO, cli, one_clear_line

import mlx_aimv2
from mlx_aimv2.errors import UserError


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
    one_clear_line(cli("embed", PHOTO, "--model", folder), "model.safetensors.index.json")


@pytest.mark.parametrize("size", ["1" + "0" * 400, "1e400GB", "-5MB", "0"])
def test_a_shard_size_past_any_disk_or_below_a_byte_is_one_line(tmp_path, size):
    """1 followed by 400 zeros gave OverflowError."""
    one_clear_line(cli("convert", "demo", tmp_path / "out", "--max-shard-size", size), "--max-shard-size")
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    from mlx_aimv2.data.synth import write_labelled

    return write_labelled(tmp_path_factory.mktemp("colours"), 60, "colour", size=32, seed=0) / "val"


BAD_TEMPLATES = ["a {} and a {}", "a {x} photo of a {}.", "a photo of a {} {", "a photo of {{}}.", "{0!r}", "{:>9}"]


@pytest.mark.parametrize("template", BAD_TEMPLATES)
def test_one_rule_for_templates_in_classify_and_zeroshot(colours, tmp_path, template):
    """IndexError, KeyError and ValueError tracebacks, and `{{}}` scoring every class with one prompt
    (top-1 21.43 %, exit 0); classify and zeroshot followed different rules."""
    one_clear_line(cli("classify", PHOTO, "--labels", "cat,dog", "-m", "demo-lit", "--template", template), "template")
    (tmp_path / "t.txt").write_text("a photo of a {}.\n" + template + "\n")
    last = one_clear_line(cli("zeroshot", "--model", "demo-lit", "--data", colours, "--templates", tmp_path / "t.txt"))
    assert "t.txt: line 2" in last and "'{}'" in last, last


@pytest.mark.parametrize("template", ["a photo of a {}.", "a photo of a {0}.", "{{a}} {}"])
def test_both_accept_the_same_good_templates(colours, tmp_path, template):
    assert cli("classify", PHOTO, "--labels", "cat,dog", "-m", "demo-lit", "--template", template).exit_code == 0
    (tmp_path / "t.txt").write_text(template + "\n")
    r = cli("zeroshot", "--model", "demo-lit", "--data", colours, "--templates", tmp_path / "t.txt")
    assert r.exit_code == 0, r.output


def test_a_shard_folder_with_a_compressed_shard_beside_plain_ones_names_it(tmp_path):
    """0.tar and 1.tar.gz: it trained on the .tar and never mentioned the .gz."""
    from mlx_aimv2.data import write_synthetic

    shards = write_synthetic(tmp_path / "s", 16, size=32, shards=2)
    (shards / "00001.tar").rename(shards / "00001.tar.gz")
    last = one_clear_line(cli("train", "--data", shards, "--out", tmp_path / "run", "--steps", "1"), "00001.tar.gz")
    assert "unpack" in last and not (tmp_path / "run").exists()


@pytest.mark.parametrize("when", ["between passes", "in the first pass"])
def test_ctrl_c_ends_index_watch_with_130_and_keeps_what_was_committed(tmp_path, when):
    """It exited 0, also in the middle of its first pass; every command exits 130 at Ctrl-C."""
    photos = tmp_path / "photos"
    photos.mkdir()
    n = 40
    for i in range(n):
        shutil.copy(PHOTO, photos / f"{i:03d}.jpg")
    db = tmp_path / "lib.aimv2"
    cmd = [sys.executable, "-m", "mlx_aimv2", "index", str(photos), "--db", str(db), "-m", "demo", "--watch",
           "--no-progress", "-b", "2"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        want = n if when == "between passes" else 1
        t0 = time.time()
        while time.time() - t0 < 120:
            if db.exists():
                with mlx_aimv2.Index(db, read_only=True) as lib:
                    if len(lib) >= want:
                        break
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "kept" in err.strip().splitlines()[-1], err
    with mlx_aimv2.Index(db, read_only=True) as lib:
        assert len(lib) >= want and len(lib) % 2 == 0 or len(lib) == n  # whole batches only
    assert os.path.getsize(db) > 0
