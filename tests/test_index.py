"""The photo index: search equals numpy brute force over the model's own embeddings; a second run is
incremental; bad files are recorded and retried only when they change; a SIGKILLed run resumes
without redoing committed work and leaves a sound database; the CLI's index and search."""

import json
import os
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import PHOTO, ROOT
from helpers import cli as run
from PIL import Image

import mlx_aimv2
from mlx_aimv2.data import write_synthetic
from mlx_aimv2.errors import UserError
from mlx_aimv2.index.ranking import top_k


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A small library: synthetic scenes in two sub-folders and a photo."""
    root = tmp_path_factory.mktemp("lib")
    synth = write_synthetic(root / "src", 40, size=112, seed=11)
    lib = root / "photos"
    for i, p in enumerate(sorted((synth / "images").glob("*.jpg"))):
        dst = lib / ("a" if i % 2 else "b") / p.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dst)
    shutil.copy(PHOTO, lib / "grace.jpg")
    captions = {
        Path(json.loads(l)["image"]).name: json.loads(l)["caption"]
        for l in (synth / "captions.jsonl").read_text().splitlines()
    }
    return lib, captions


def fresh(photos, tmp_path):
    lib = tmp_path / "photos"
    shutil.copytree(photos[0], lib)
    return lib


def _png_header(path: Path, w: int, h: int) -> Path:
    """A PNG that claims w x h pixels: enough for the size check, which reads only the header."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )
    return path


def test_search_equals_numpy_brute_force(photos, tmp_path):
    lib, captions = photos
    with mlx_aimv2.Index(tmp_path / "lib.aimv2", model="demo-lit") as index:
        s = index.add([lib])
        assert (s.new, s.total, s.bad) == (41, 41, [])
        files = sorted(str(p) for p in lib.rglob("*.jpg"))
        model = mlx_aimv2.load("demo-lit")
        emb = model.embed(files, pool="attn")  # the model's own embeddings, outside the index
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        for query in ["one shape: a large red circle at the left", captions[Path(files[3]).name]]:
            q = model.encode_text([query])[0]
            scores = emb @ q
            order = np.argsort(-scores, kind="stable")[:7]
            hits = index.search(text=query, k=7)
            assert [h.path for h in hits] == [files[i] for i in order]
            assert np.allclose([h.score for h in hits], scores[order], atol=2e-3)  # stored as float16
        hits = index.search(image=files[5], k=3)  # by example: the image itself comes first
        assert hits[0].path == files[5] and hits[0].score > 0.999


def test_top_k_orders_and_breaks_ties_like_a_stable_sort():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(500, 16)).astype(np.float32)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    m[7] = m[3]  # a tie
    q = m[3] + 0.01
    idx, scores = top_k(m, q, 10)
    ref = np.argsort(-(m @ (q / np.linalg.norm(q))), kind="stable")[:10]
    assert idx.tolist() == ref.tolist() and idx[0] == 3 and idx[1] == 7
    assert top_k(m, q, 1000)[0].shape == (500,)


def test_second_run_is_incremental(photos, tmp_path):
    lib = fresh(photos, tmp_path)
    db = tmp_path / "lib.aimv2"
    with mlx_aimv2.Index(db, model="demo-lit") as index:
        assert index.add([lib]).new == 41
        s = index.add([lib])
        assert (s.new, s.changed, s.unchanged, s.removed) == (0, 0, 41, 0)
        victim = sorted((lib / "a").glob("*.jpg"))[0]
        Image.open(PHOTO).resize((120, 90)).save(victim)  # changed content
        (sorted((lib / "b").glob("*.jpg"))[0]).unlink()  # deleted
        shutil.copy(PHOTO, lib / "b" / "new.jpg")  # new
        s = index.add([lib])
        assert (s.new, s.changed, s.unchanged, s.removed, s.total) == (1, 1, 39, 1, 41)
        assert index.search(image=str(PHOTO), k=3)[0].score > 0.999
        # indexing one sub-folder drops nothing elsewhere
        s = index.add([lib / "a"])
        assert s.removed == 0 and s.total == 41
    with pytest.raises(UserError, match="was built with"):
        mlx_aimv2.Index(db, model="demo")
    with mlx_aimv2.Index(db, model=str(ROOT / "weights" / "demo-lit")) as same:  # the same weights by path
        assert same.add([lib]).unchanged == 41


def test_bad_files_are_recorded_and_retried_only_when_they_change(photos, tmp_path):
    lib = fresh(photos, tmp_path)
    (lib / "corrupt.jpg").write_bytes(b"not an image at all")
    (lib / "truncated.jpg").write_bytes(PHOTO.read_bytes()[:2000])
    (lib / "text.png").write_text("hello")
    _png_header(lib / "huge.png", 20000, 20000)
    (lib / "loop").symlink_to(lib, target_is_directory=True)  # a symlink loop is not followed
    os.mkfifo(lib / "pipe.jpg")  # a FIFO is not read (it would block)
    with mlx_aimv2.Index(tmp_path / "lib.aimv2", model="demo-lit") as index:
        s = index.add([lib])
        reasons = dict(s.bad)
        assert s.new == 41 and len(reasons) == 4, reasons
        assert "pixel limit" in reasons[str(lib / "huge.png")]
        assert all(why for why in reasons.values())
        s = index.add([lib])
        # the bad files are not counted as unchanged images (the summary said "45 unchanged; 41 images")
        assert s.bad == [] and (s.unchanged, s.still_bad, s.total) == (41, 4, 41) and index.info["bad_files"] == 4
        assert "41 unchanged" in str(s) and "4 bad file(s) unchanged since" in str(s)
        Image.open(PHOTO).save(lib / "corrupt.jpg")  # fixed: retried and embedded
        s = index.add([lib])
        assert s.changed == 1 and s.bad == [] and index.info["bad_files"] == 3 and s.total == 42


def _count(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as c:
            return c.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_a_killed_run_resumes_without_redoing_committed_work(tmp_path):
    lib = tmp_path / "photos"
    lib.mkdir()
    big = tmp_path / "big.jpg"
    Image.open(PHOTO).resize((1600, 1200)).save(big, quality=90)  # slow enough to decode to kill mid-run
    for i in range(300):
        shutil.copy(big, lib / f"{i:04d}.jpg")
    db = tmp_path / "lib.aimv2"
    cmd = [
        sys.executable,
        "-m",
        "mlx_aimv2",
        "index",
        str(lib),
        "--db",
        str(db),
        "-m",
        "demo-lit",
        "--batch-size",
        "4",
        "--no-progress",
    ]
    env = dict(os.environ, MLX_AIMV2_NO_RESTART="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while _count(db) < 8 and proc.poll() is None and time.time() - t0 < 120:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = _count(db)
    assert 8 <= done < 300, f"the run was not killed mid-way ({done} rows)"
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{300 - done} new, 0 changed, {done} unchanged" in again.stdout, (done, again.stdout)
    assert _count(db) == 300


def test_cli_index_then_search_by_text_and_image(photos, tmp_path):
    lib, captions = photos
    db = tmp_path / "lib.aimv2"
    r = run("index", lib, "--db", db, "-m", "demo-lit", "--no-progress")
    assert r.exit_code == 0 and "41 new" in r.output, r.output
    r = run(
        "search",
        db,
        "one shape: a small blue square at the top right",
        "-k",
        "4",
        "--json",
        "--grid",
        tmp_path / "g.png",
    )
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout)
    assert len(hits) == 4 and hits[0]["score"] >= hits[-1]["score"]
    assert Image.open(tmp_path / "g.png").size[0] > 400
    r = run("search", db, "--image", PHOTO, "-k", "1")
    assert r.exit_code == 0 and "grace.jpg" in r.output and "1.0000" in r.output, r.output


@pytest.mark.parametrize(
    "args, words",
    [
        (["search", "{tmp}/none.aimv2", "x"], "no such index"),
        (["search", "{db}"], "give a text query"),
        (["search", "{db}", "x", "+"], "no term after it"),
        (["search", "{img_db}", "a red circle"], "image-only model"),
        (["search", "{photo}", "x"], "not an mlx-aimv2 index"),
        (["index", "{tmp}/nowhere", "--db", "{tmp}/n.aimv2", "-m", "demo-lit"], "no such file or folder"),
    ],
)
def test_cli_errors_are_one_line(photos, tmp_path, args, words):
    lib = photos[0]
    db, img_db = tmp_path / "t.aimv2", tmp_path / "i.aimv2"
    assert run("index", lib / "a", "--db", db, "-m", "demo-lit", "--no-progress").exit_code == 0
    assert run("index", lib / "a", "--db", img_db, "-m", "demo", "--no-progress").exit_code == 0
    r = run(*[a.format(tmp=tmp_path, db=db, img_db=img_db, photo=PHOTO) for a in args])
    assert r.exit_code == 1 and words in r.output and "Traceback" not in r.output, r.output


def test_ctrl_c_keeps_the_committed_batches(photos, tmp_path, monkeypatch):
    from mlx_aimv2 import api

    real = api.AIMv2.iter_embed

    def interrupted_after_ten(self, items, *a, **k):
        for i, row in enumerate(real(self, items, *a, **k)):
            if i == 10:
                raise KeyboardInterrupt
            yield row

    monkeypatch.setattr(api.AIMv2, "iter_embed", interrupted_after_ten)
    db = tmp_path / "lib.aimv2"
    r = run("index", photos[0], "--db", db, "-m", "demo-lit", "-b", "4", "--no-progress")
    assert r.exit_code == 130 and "the 8 images committed" in r.output, r.output
    monkeypatch.setattr(api.AIMv2, "iter_embed", real)
    r = run("index", photos[0], "--db", db, "--no-progress")
    assert r.exit_code == 0 and "33 new, 0 changed, 8 unchanged" in r.output, r.output
    r = run("search", db, "a red circle", "--grid", tmp_path / "g.txt")
    assert r.exit_code == 1 and "--grid" in r.output


def test_moved_files_keep_their_vectors_without_the_model(photos, tmp_path, monkeypatch):
    lib = fresh(photos, tmp_path)
    with mlx_aimv2.Index(tmp_path / "lib.aimv2", model="demo-lit") as index:
        index.add([lib])
        before = {Path(h.path).name: h.score for h in index.search(text="a red circle", k=41)}
        (lib / "b").rename(lib / "c")  # a folder renamed: 20 files at new paths
        shutil.copy(PHOTO, lib / "c" / "another.jpg")  # and one truly new file
        from mlx_aimv2 import api

        real, calls = api.AIMv2.iter_embed, []
        monkeypatch.setattr(
            api.AIMv2,
            "iter_embed",
            lambda self, items, *a, **k: calls.append(list(items)) or real(self, calls[-1], *a, **k),
        )
        s = index.add([lib])
        assert (s.new, s.moved, s.removed, s.total) == (1, 20, 0, 42), s
        assert [Path(p).name for p in calls[0]] == ["another.jpg"]  # the model saw only the new file
        after = {Path(h.path).name: h.score for h in index.search(text="a red circle", k=42)}
        assert all(abs(after[n] - v) < 1e-6 for n, v in before.items())
        paths = [h.path for h in index.search(text="a red circle", k=42)]
        assert sum("/c/" in p for p in paths) == 21 and not any("/b/" in p for p in paths)
