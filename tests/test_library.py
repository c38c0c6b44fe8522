"""The photo library beyond one query (issue 16): combined weighted queries equal numpy's sum of the
terms' embeddings; near-duplicate groups; the memory-mapped vectors file in step with SQLite;
`index --watch` following a folder."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import PHOTO, cli
from PIL import Image, ImageEnhance

import mlx_aimv2
from mlx_aimv2.data import write_synthetic
from mlx_aimv2.errors import UserError
from mlx_aimv2.index import vectors


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("library")
    synth = write_synthetic(root / "synth", 30, size=112, seed=7)
    photos = root / "photos"
    shutil.copytree(synth / "images", photos)
    db = root / "lib.aimv2"
    with mlx_aimv2.Index(db, model="demo-lit") as lib:
        lib.add([photos])
    return db, photos


def _unit(v):
    return v / np.linalg.norm(v)


def test_a_weighted_query_is_the_weighted_sum_of_its_terms(library):
    db, photos = library
    pool = sorted(photos.iterdir())[3]
    lit = mlx_aimv2.load("demo-lit")
    t1, t2 = lit.encode_text(["a red circle", "a blue square"])
    img = lit.embed(str(pool), pool="attn")
    q = 2 * _unit(t1) + _unit(img) - _unit(t2)  # numpy's reference of '2:a red circle + POOL - a blue square'
    with mlx_aimv2.Index(db) as lib:
        paths, matrix = lib._matrix()
        expected = np.argsort(-(matrix @ _unit(q)), kind="stable")[:5]
        for query in (
            f"2:a red circle + {pool} - a blue square",
            [("a red circle", 2), (pool, 1), ("a blue square", -1)],
        ):
            hits = lib.search(query=query, k=5)
            assert [h.path for h in hits] == [paths[i] for i in expected]
            np.testing.assert_allclose([h.score for h in hits], (matrix @ _unit(q))[expected], atol=2e-3)
    r = cli("search", db, "2:a red circle", "+", pool, "-", "a blue square", "-k", "5", "--json")
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout)
    assert [h["path"] for h in hits] == [paths[i] for i in expected]
    assert set(hits[0]) == {"path", "score"}  # the shape a plain query gives


def test_bad_queries_are_one_line(library):
    db, _ = library
    for words in (["a cat", "+"], ["0:a cat"], ["2:"]):
        r = cli("search", db, *words)
        assert r.exit_code == 1 and "Traceback" not in r.output, r.output
        assert "query" in r.output.strip().splitlines()[-1]
    with mlx_aimv2.Index(db) as lib, pytest.raises(UserError, match="one of"):
        lib.search(text="a", query="b")


def _edited_copies(src: Path, out: Path) -> list[Path]:
    """Five edits of one photo: a re-encode, a resize, a 2.5 % crop, brighter, and a PNG copy
    (benchmarks/dupes.py measures precision and recall on the same edits at scale)."""
    im = Image.open(src).convert("RGB")
    w, h = im.size
    edits = {
        "reencoded.jpg": (im, {"quality": 60}),
        "resized.jpg": (im.resize((w // 2, h // 2)), {}),
        "cropped.jpg": (im.crop((w // 40, h // 40, w - w // 40, h - h // 40)), {}),
        "brighter.jpg": (ImageEnhance.Brightness(im).enhance(1.15), {}),
        "copy.png": (im, {}),
    }
    files = []
    for name, (img, kw) in edits.items():
        f = out / f"{src.stem}-{name}"
        img.save(f, **kw)
        files.append(f)
    return files


def test_dupes_group_edited_copies_and_not_different_scenes(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    synth = write_synthetic(tmp_path / "synth", 12, size=160, seed=3)
    originals = sorted((synth / "images").iterdir())[:3]
    for f in originals:
        shutil.copy(f, photos / f.name)
        _edited_copies(f, photos)
    for f in sorted((synth / "images").iterdir())[3:]:  # other scenes of the same kind: no copies
        shutil.copy(f, photos / f.name)
    db = tmp_path / "lib.aimv2"
    with mlx_aimv2.Index(db, model="demo-lit") as lib:
        lib.add([photos])
        groups = lib.dupes()

    def origin(hit):
        return Path(hit.path).name.split("-")[0].split(".")[0]

    assert all(len({origin(h) for h in g}) == 1 for g in groups), "a group mixes different scenes"
    assert {origin(g[0]) for g in groups} == {f.stem for f in originals}
    assert sum(len(g) for g in groups) >= 16  # of 18: at most two edits missed (the crops are the hardest)
    with mlx_aimv2.Index(db) as lib:  # at a strict threshold only the lossless copy stays
        strict = lib.dupes(0.9999)
    assert sorted(sorted(Path(h.path).name for h in g) for g in strict) == [
        [f"{f.stem}-copy.png", f.name] for f in originals
    ]
    r = cli("dupes", db, "--json", "--grid", tmp_path / "dupes.png")
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)) == 3 and (tmp_path / "dupes.png").stat().st_size > 1000
    assert cli("dupes", db, "--threshold", "1.5").exit_code == 2


def test_the_vectors_file_follows_the_store(library, tmp_path):
    db, photos = library
    work = tmp_path / "lib.aimv2"
    shutil.copy(db, work)
    with mlx_aimv2.Index(work) as lib:
        from_sqlite = lib.search(text="a green triangle", k=5)  # no vectors file yet: read and written
    assert vectors.path_for(work).is_file()
    with mlx_aimv2.Index(work) as lib:
        generation = lib.store.generation()
        found = vectors.read(work, generation, lib.store.get_meta("model")["dim"])
        assert found is not None and len(found[0]) == len(lib)
        assert lib.search(text="a green triangle", k=5) == from_sqlite
        lib.add([PHOTO])  # a change: a new generation, the file rewritten with it
        assert lib.store.generation() > generation
        assert vectors.read(work, lib.store.generation(), found[1].shape[1])[0][-1] == str(PHOTO)
    vectors.path_for(work).write_bytes(b"AIMV2VEC garbage")  # damaged: ignored, SQLite answers
    with mlx_aimv2.Index(work) as lib:
        assert lib.search(image=PHOTO, k=1)[0].path == str(PHOTO)


def test_watch_picks_up_added_and_deleted_files_and_stops_on_sigterm(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(PHOTO, photos / "a.jpg")
    db = tmp_path / "lib.aimv2"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "mlx_aimv2", "index", str(photos), "--db", str(db), "-m", "demo-lit"]
    proc = subprocess.Popen(
        [*cmd, "--watch", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:

        def wait_for(count, deadline=60):
            t0 = time.time()
            while time.time() - t0 < deadline:
                if db.exists():
                    with mlx_aimv2.Index(db, read_only=True) as lib:
                        if len(lib) == count:
                            return
                time.sleep(0.3)
            pytest.fail(f"the index never held {count} images")

        wait_for(1)
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(photos / "b.png")
        shutil.copy(PHOTO, photos / "c.jpg")
        wait_for(3)
        (photos / "a.jpg").unlink()
        wait_for(2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "stopped watching; 2 images" in err and "Traceback" not in err, err


def test_watch_stops_with_one_line_when_the_folder_disappears(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(PHOTO, photos / "a.jpg")
    db = tmp_path / "lib.aimv2"
    cmd = [sys.executable, "-m", "mlx_aimv2", "index", str(photos), "--db", str(db), "-m", "demo-lit", "--watch"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while not db.exists() and time.time() - t0 < 60:
            time.sleep(0.3)
        time.sleep(1.0)
        shutil.rmtree(photos)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    assert "disappeared" in err.strip().splitlines()[-1] and "Traceback" not in err, err


def test_text_queries_read_only_the_text_side(library):
    """A LiT index answers a text query with the text tower alone (api.load(text_only=True)): the
    same hits as the full model, and the image tower is read only when an image term needs it."""
    db, photos = library
    full = mlx_aimv2.load("demo-lit")
    text = mlx_aimv2.load("demo-lit", text_only=True)
    np.testing.assert_array_equal(text.encode_text(["a red circle"]), full.encode_text(["a red circle"]))
    assert text.fingerprint() == full.fingerprint()
    with pytest.raises(UserError, match="text_only"):
        text.embed(str(PHOTO))
    with mlx_aimv2.Index(db) as lib:
        hits = lib.search(text="a red circle", k=3)
        assert lib._model is None and lib._text.text_only
        paths, matrix = lib._matrix()
        q = _unit(full.encode_text(["a red circle"])[0])
        assert [h.path for h in hits] == [paths[i] for i in np.argsort(-(matrix @ q), kind="stable")[:3]]
        lib.search(image=sorted(photos.iterdir())[0], k=1)  # an image term loads the whole model
        assert lib._model is not None and not lib._model.text_only


def test_a_reader_waits_for_an_index_another_process_is_creating(tmp_path):
    """`index --watch` and a search started together: the reader can find the SQLite file before the
    creator's one transaction has written its tables. It waits for them instead of calling it damaged."""
    import sqlite3
    import threading

    from mlx_aimv2.index.store import Store

    db = tmp_path / "lib.aimv2"
    con = sqlite3.connect(db)  # the file as the creator's first statement leaves it: a header, no tables
    con.execute("PRAGMA journal_mode=WAL")
    con.close()

    def create_later():
        time.sleep(0.5)
        Store(db, create=True).db.close()

    creator = threading.Thread(target=create_later)
    creator.start()
    try:
        reader = Store(db, read_only=True)
        assert reader.get_meta("schema") is not None
        reader.db.close()
    finally:
        creator.join()


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
