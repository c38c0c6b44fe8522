"""Fault cases of the photo library (issue 17): another program's SQLite file, a damaged index, a
read-only disk, non-UTF-8 file names, a failed first run, full disks, and the API's edge inputs.
Each ends in a valid result or one clear line, and nothing is lost or left behind."""

import hashlib
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import PHOTO, cli, read_only_folder
from helpers import one_clear_line as one_line
from PIL import Image

import mlx_aimv2
from mlx_aimv2.errors import UserError


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def photos(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return d


def _app_db(path: Path) -> Path:
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE contacts (name TEXT, phone TEXT)")
        c.execute("INSERT INTO contacts VALUES ('Ada', '555')")
    return path


def test_another_programs_sqlite_is_refused_untouched(photos, tmp_path):
    db = _app_db(tmp_path / "app.sqlite")
    before = _digest(db)
    one_line(cli("index", photos, "--db", db, "-m", "demo-lit", "--no-progress"), "another program", "untouched")
    one_line(cli("search", db, "a cat"), "another program")
    assert _digest(db) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.sqlite", "photos"]  # no -wal / -shm


def test_an_images_table_of_another_program_is_refused(photos, tmp_path):
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE meta (key TEXT, value TEXT)")
        c.execute("INSERT INTO meta VALUES ('schema', '1')")
        c.execute("CREATE TABLE images (id INTEGER, url TEXT)")
    before = _digest(db)
    one_line(cli("index", photos, "--db", db, "-m", "demo-lit", "--no-progress"), "another program")
    assert _digest(db) == before


def test_a_file_that_is_not_sqlite_is_refused_untouched(photos, tmp_path):
    db = tmp_path / "notes.txt"
    db.write_text("my notes\n" * 100)
    one_line(cli("index", photos, "--db", db, "-m", "demo-lit", "--no-progress"), "not a SQLite file")
    assert db.read_text() == "my notes\n" * 100


@pytest.fixture
def built(photos, tmp_path):
    db = tmp_path / "lib.aimv2"
    with mlx_aimv2.Index(db, model="demo-lit") as lib:
        lib.add([photos])
    return db


def test_garbage_pages_say_damaged_and_how_to_rebuild(built):
    data = bytearray(built.read_bytes())
    data[4096:8192] = os.urandom(4096)  # a page past the header: the schema may still read
    built.write_bytes(bytes(data))
    for p in built.parent.glob("lib.aimv2-*"):
        p.unlink()
    r = cli("search", built, "a cat")
    last = one_line(r)
    assert "damaged" in last and "rebuild" in last or "not an mlx-aimv2 index" in last, last


def test_a_meta_value_that_is_not_json_is_damage(built):
    with sqlite3.connect(built) as c:
        c.execute("UPDATE meta SET value = '{oops' WHERE key = 'model'")
    one_line(cli("search", built, "a cat"), "damaged", "rebuild")


def test_search_on_a_read_only_disk(built, tmp_path):
    with mlx_aimv2.Index(built) as lib:
        expected = lib.search(text="a red circle", k=2)
    with read_only_folder(built, tmp_path / "ro") as ro:
        before = _digest(ro / "lib.aimv2")
        r = cli("search", ro / "lib.aimv2", "a red circle", "-k", "2", "--json")
        assert r.exit_code == 0, r.output
        with mlx_aimv2.Index(ro / "lib.aimv2") as lib:  # read-only by itself: the disk says so
            assert lib.search(text="a red circle", k=2) == expected
            with pytest.raises(UserError, match="read-only"):
                lib.add([PHOTO])
        assert sorted(p.name for p in ro.iterdir()) == ["lib.aimv2"]  # no WAL written beside it
        assert _digest(ro / "lib.aimv2") == before


def test_non_utf8_file_names_are_stored_losslessly(photos, tmp_path):
    odd = os.fsdecode(b"caf\xe9.png")  # Latin-1 from an old camera: not UTF-8
    shutil.copy(photos / "0.png", photos / odd)
    db = tmp_path / "lib.aimv2"
    r = cli("index", photos, "--db", db, "-m", "demo-lit", "--no-progress")
    assert r.exit_code == 0 and "4 new" in r.output, r.output
    Image.fromarray(np.zeros((64, 80, 3), np.uint8)).save(photos / "later.png")
    r = cli("index", photos, "--db", db, "--no-progress")  # later runs still add new photos
    assert r.exit_code == 0 and "1 new" in r.output and "4 unchanged" in r.output, r.output
    with mlx_aimv2.Index(db) as lib:
        hits = lib.search(image=photos / odd, k=2)
    assert {h.path for h in hits} == {str(photos / odd), str(photos / "0.png")}
    assert os.path.exists(hits[0].path)  # the stored name opens the file
    r = cli("search", db, "--image", photos / "0.png", "-k", "5")
    assert r.exit_code == 0 and "caf\\xe9.png" in r.output, r.output


def test_a_failed_first_index_leaves_no_database(tmp_path):
    db = tmp_path / "new.aimv2"
    one_line(cli("index", tmp_path / "nowhere", "--db", db, "-m", "demo-lit", "--no-progress"), "nothing to index")
    assert not db.exists() and list(tmp_path.iterdir()) == []


def _limited(max_bytes):
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return limit


def _cli_limited(args, max_bytes, cwd):
    env = dict(os.environ, MLX_AIMV2_NO_RESTART="1")
    return subprocess.run(
        [sys.executable, "-m", "mlx_aimv2", *map(str, args)],
        preexec_fn=_limited(max_bytes),
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def _clean_failure(r, *words):
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    for w in words:
        assert w in last, last
    return last


def test_disk_full_writing_a_checkpoint_or_embeddings(tmp_path):
    """A file-size limit makes every write past 50 kB fail as a full disk does (EFBIG)."""
    for args in (
        ["convert", "demo", tmp_path / "conv"],
        ["convert", "demo", tmp_path / "q", "-q", "--q-bits", "8"],
        ["export", "demo", tmp_path / "exp", "--format", "transformers"],
        ["embed", PHOTO, PHOTO, "-o", tmp_path / "e.safetensors", "--pool", "none"],
    ):
        r = _cli_limited(args, 50_000, tmp_path)
        _clean_failure(r, "disk is full")
    left = [p.name for p in tmp_path.iterdir()]
    assert left == [], left  # nothing partial, no temporary files


def test_disk_full_at_a_training_checkpoint_keeps_the_earlier_ones(tmp_path):
    from mlx_aimv2.data import write_synthetic

    data = write_synthetic(tmp_path / "d", 16, size=64, seed=0)
    run = tmp_path / "run"
    args = ["train", "--data", data, "--out", run, "--set", "encoder=tiny", "--set", "image_size=56",
            "--batch-size", "8", "--set", "vocab_size=300", "--set", "log_every=1"]  # fmt: skip
    r = _cli_limited([*args, "--steps", "2", "--set", "save_every=1"], 2_000_000_000, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    weights = (run / "checkpoints" / "step_00000002" / "model.safetensors").stat().st_size
    r = _cli_limited([*args, "--steps", "4", "--resume"], weights + 4096, tmp_path)  # the optimizer file: no room
    _clean_failure(r, "disk is full")
    from mlx_aimv2 import kinds

    assert kinds.newest_checkpoint(run).name == "step_00000002"  # the earlier checkpoint is intact and newest
    assert not list(run.rglob(".tmp-mlx-aimv2-*"))


def test_disk_full_while_the_index_grows_keeps_earlier_batches(photos, tmp_path):
    db = tmp_path / "lib.aimv2"
    r = cli("index", photos, "--db", db, "-m", "demo-lit", "--no-progress")
    assert r.exit_code == 0
    rng = np.random.default_rng(1)
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(photos / f"n{i}.png")
    size = db.stat().st_size + sum(p.stat().st_size for p in tmp_path.glob("lib.aimv2-*"))
    r = _cli_limited(["index", photos, "--db", db, "--no-progress", "-b", "4"], size + 8192, tmp_path)
    if r.returncode == 0:
        pytest.skip("the limit left room for every batch")
    _clean_failure(r, "disk", "committed batches are kept")
    with mlx_aimv2.Index(db) as lib:
        assert len(lib) >= 3  # the first run's images are intact
        assert lib.search(image=photos / "0.png", k=1)[0].path.endswith("0.png")
