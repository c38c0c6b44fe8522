"""The streaming loader (issue 18): start-up reads names, not samples; ranks read disjoint shards;
shard order changes each epoch; captions files split into ranges; the stream's state resumes
exactly (in process, and after kill -9 of a real run); a shard that vanishes mid-run is counted."""

import builtins
import gzip
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
from helpers import cli, one_clear_line, write_shard

from mlx_aimv2.data import TrainStream, find_sources, unpacked, write_synthetic
from mlx_aimv2.data import sources as src


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("synth"), 96, size=48, seed=3)


@pytest.fixture(scope="module")
def shards(synth, tmp_path_factory):
    """8 shards of 12 samples each; captions name their shard and key."""
    rows = [json.loads(l) for l in (synth / "captions.jsonl").read_text().splitlines()]
    out = tmp_path_factory.mktemp("shards")
    for s in range(8):
        members = []
        for i, r in enumerate(rows[s * 12 : (s + 1) * 12]):
            members.append(
                (f"{s}{i:03d}", {"jpg": (synth / r["image"]).read_bytes(), "txt": f"s{s} k{i} {r['caption']}".encode()})
            )
        write_shard(out / f"{s:05d}.tar", members)
    return out


def spell(texts):
    """A 'tokenizer' whose ids spell the caption, so a batch says which samples it holds."""
    return np.stack([np.frombuffer(t.encode().ljust(128)[:128], np.uint8).astype(np.int32) for t in texts])


def captions(batch):
    return [bytes(r.astype(np.uint8)).decode().rstrip() for r in batch["ids"]]


def draws(stream, epoch):
    """The samples a stream's reader hands this rank in one epoch (no decoding)."""
    out = []
    while True:
        e, n, s = stream.__dict__.pop("peeked", None) or stream._draw()
        if e > epoch:
            stream.peeked = (e, n, s)  # the next epoch's first draw
            return out
        out.append(s.caption)


def test_ranks_read_disjoint_shards_and_the_order_changes_each_epoch(shards):
    sources = find_sources(str(shards / "{00000..00007}.tar"))
    streams = [TrainStream(sources, spell, 32, 4, seed=5, rank=r, world=2, shuffle=8) for r in range(2)]
    assert all(s.by_shards for s in streams)
    e0 = [draws(s, 0) for s in streams]
    shards_of = [{c.split()[0] for c in e} for e in e0]
    assert not shards_of[0] & shards_of[1] and len(shards_of[0] | shards_of[1]) == 8  # disjoint, all read
    assert sorted(e0[0] + e0[1]) == sorted(s.caption for s in src.read_all(sources, "").samples)
    e1 = [draws(s, 1) for s in streams]
    assert [{c.split()[0] for c in e} for e in e1] != shards_of  # reshuffled: other shards per rank
    one = TrainStream(sources, spell, 32, 4, seed=5, shuffle=8)
    a, b = draws(one, 0), draws(one, 1)
    assert sorted(a) == sorted(b) and a != b
    # the buffer mixes shards: within the first 16 draws more than one shard appears
    assert len({c.split()[0] for c in a[:16]}) > 1


def test_fewer_shards_than_ranks_split_samples(synth):
    sources = find_sources(str(synth))  # one captions file: one range
    streams = [TrainStream(sources, spell, 32, 4, seed=1, rank=r, world=2) for r in range(2)]
    assert not streams[0].by_shards
    halves = [draws(s, 0) for s in streams]
    assert len(halves[0]) == len(halves[1]) == 48
    whole = draws(TrainStream(sources, spell, 32, 4, seed=1), 0)
    assert halves[0] == whole[0::2] and halves[1] == whole[1::2]  # one process's order, strided


def test_start_up_reads_names_not_samples(synth, tmp_path, monkeypatch):
    img = next((synth / "images").iterdir()).read_bytes()
    for s in range(60):
        write_shard(tmp_path / f"{s:05d}.tar", [(f"k{i}", {"jpg": img, "txt": b"a scene"}) for i in range(12)])
    files = []  # every file opened while the sources are named: none (a name costs no read)
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: (files.append(f), real_open(f, *a, **k))[1])
    sources = find_sources(str(tmp_path / "{00000..99999}.tar"))  # 100,000 names, 60 of which exist
    monkeypatch.setattr(builtins, "open", real_open)
    assert len(sources) == 100_000 and files == []
    opened = []
    real = src.TarShard.entries
    monkeypatch.setattr(src.TarShard, "entries", lambda self: (opened.append(self.path), real(self))[1])
    batch = next(iter(TrainStream(find_sources(str(tmp_path / "*.tar")), spell, 32, 4, shuffle=6)))
    assert batch["images"].shape == (4, 32, 32, 3)
    # the first batch: a buffer of 6 and a chunk of 32 drawn ahead of decoding: 4 shards of 60
    assert len(opened) <= 4, opened


def test_captions_files_are_read_as_byte_ranges(synth, tmp_path, monkeypatch):
    import csv

    rows = [json.loads(l) for l in (synth / "captions.jsonl").read_text().splitlines()]
    monkeypatch.setattr(src, "CHUNK_BYTES", 500)
    ranges = find_sources(str(synth))
    assert len(ranges) > 10
    got = [s.caption for s in src.read_all(ranges, "").samples]
    assert got == [r["caption"] for r in rows]  # every row exactly once, in order
    f = tmp_path / "caps.csv"
    with open(f, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["caption", "image"])
        for r in rows:
            w.writerow([r["caption"], str(synth / r["image"])])
    ranges = find_sources(str(f))
    assert len(ranges) > 5 and [s.caption for s in src.read_all(ranges, "").samples] == [r["caption"] for r in rows]


def test_state_resumes_exactly_mid_buffer_and_mid_shard(shards):
    sources = find_sources(str(shards / "*.tar"))

    def make():
        return TrainStream(sources, spell, 32, 8, seed=2, shuffle=10, threads=2)

    a = iter(make())
    for _ in range(5):  # 40 samples: inside shard 4 of 8, the buffer full, samples in flight
        next(a)
    stream_a = a.gi_frame.f_locals["self"]
    state = json.loads(json.dumps(stream_a.state()))  # what a checkpoint stores
    assert state["pending"] and state["reader"]["buffer"]
    rest = [next(a) for _ in range(14)]  # across the epoch boundary (96 samples)
    older = json.loads(json.dumps(state))  # a checkpoint written before the cursor's keys were named
    reader = older["reader"]
    reader["k"], reader["j"], reader["n"] = reader.pop("shard"), reader.pop("entry"), reader.pop("drawn")
    for saved in (state, older):
        b = make()
        assert b.restore(saved) is None
        resumed = iter(b)
        for want in rest:
            got = next(resumed)
            assert captions(got) == captions(want)
            assert (got["images"] == want["images"]).all()


def test_a_shard_that_vanishes_mid_run_is_counted_once(shards, tmp_path):
    import shutil

    d = tmp_path / "s"
    shutil.copytree(shards, d)
    stream = TrainStream(find_sources(str(d / "*.tar")), spell, 32, 8, seed=0, shuffle=4)
    it = iter(stream)
    next(it)
    (d / "00003.tar").unlink()
    for _ in range(40):  # over three more epochs
        next(it)
    assert stream.skipped.reasons["no such shard"] == 1, stream.skipped.reasons


def _train(data, out, *extra):
    args = [
        sys.executable, "-m", "mlx_aimv2", "train", "--data", str(data), "--out", str(out), "--encoder", "tiny",
        "--image-size", "28", "--batch-size", "8", "--steps", "14", "--set", "warmup=2", "--set", "save_every=2",
        "--set", "vocab_size=300", "--set", "shuffle_buffer=10", "--set", "log_every=1", "--no-progress", *extra,
    ]  # fmt: skip
    # one BLAS thread: two processes sharing two cores then sum in the same order, so losses compare exactly
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def test_kill_9_mid_run_then_resume_sees_the_same_batches(shards, tmp_path):
    """A real run killed with SIGKILL after a checkpoint, resumed, logs exactly the losses of a run
    never interrupted: the stream restarts inside a shard with its buffer and in-flight samples."""
    whole = _train(shards / "*.tar", tmp_path / "whole")
    killed = _train(shards / "*.tar", tmp_path / "killed")
    deadline = time.time() + 120
    while not (tmp_path / "killed" / "checkpoints" / "step_00000006" / "state.json").exists():
        assert killed.poll() is None, killed.stdout.read()
        if time.time() > deadline:  # a hang guard, not a measure
            pytest.fail("the run wrote no checkpoint at step 6")
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert whole.wait(timeout=300) == 0, whole.stdout.read()
    resumed = _train(shards / "*.tar", tmp_path / "killed", "--resume")
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out
    a = [json.loads(l) for l in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(l) for l in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in b] == list(range(1, 15))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]


def test_a_run_over_a_corpus_with_bad_shards_mixed_in_trains_and_counts_them(shards, tmp_path):
    import shutil

    from mlx_aimv2.config import load_config
    from mlx_aimv2.train.trainer import Trainer

    d = tmp_path / "corpus"
    shutil.copytree(shards, d)
    (d / "00002.tar").write_bytes(b"not a tar" * 100)  # garbage
    (d / "00005.tar").write_bytes((shards / "00005.tar").read_bytes()[:9000])  # truncated mid-shard
    (d / "00006.tar").unlink()  # named by the pattern, missing
    said = []
    cfg = dict(data=str(d / "{00000..00007}.tar"), out=str(tmp_path / "run"), encoder="tiny", image_size=28)
    cfg.update(batch_size=8, steps=20, warmup=2, vocab_size=300, log_every=5, save_every=1000)
    r = Trainer(load_config(overrides=cfg), log=said.append).run(progress=False)
    assert r["step"] == 20
    line = next(l for l in said if l.startswith("skipped "))
    for reason in ("1 unreadable tar shard", "1 truncated tar shard", "1 no such shard"):
        assert reason in line, line


def test_hflip_off_keeps_the_crops_and_never_mirrors(synth):
    """hflip = false (labels a flip would change): the same crops as with flips, none of them mirrored."""
    sources = find_sources(str(synth))
    flipped = next(iter(TrainStream(sources, spell, 32, 16, seed=3, shuffle=8)))
    plain = next(iter(TrainStream(sources, spell, 32, 16, seed=3, shuffle=8, hflip=False)))
    assert captions(flipped) == captions(plain)
    same = [np.array_equal(a, b) for a, b in zip(flipped["images"], plain["images"])]
    mirrored = [np.array_equal(a[:, ::-1], b) for a, b in zip(flipped["images"], plain["images"])]
    assert all(s or m for s, m in zip(same, mirrored)) and any(mirrored) and any(same)


def test_a_hundred_million_shard_brace_range_answers_in_seconds(three_shards, tmp_path, monkeypatch):
    """Matched against the disk: the 100 million names are never spelled out one by one."""
    from mlx_aimv2.data import sources

    def spelled(pattern):
        raise AssertionError(f"{pattern}: the brace range was expanded name by name")

    monkeypatch.setattr(sources, "braces", spelled)
    r = cli("train", "--data", f"{three_shards}/{{00000..99999999}}.tar", "--out", tmp_path / "run", "--steps", "1")
    last = one_clear_line(r, "100,000,000", "3 exist")
    assert "00000.tar" in last and "00002.tar" in last
    assert not (tmp_path / "run").exists()


@pytest.fixture
def shard_cache(tmp_path, monkeypatch):
    """Compressed shards unpack into this test's own cache folder (data/unpacked.py)."""
    monkeypatch.setenv("MLX_AIMV2_SHARD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(unpacked, "_known", {})
    return tmp_path / "cache"


def _webdataset_shards(synth, out: Path, pattern: str) -> Path:
    """The synthetic set as webdataset's own ShardWriter writes it (its compression by the name's)."""
    wds = pytest.importorskip("webdataset")
    out.mkdir()
    rows = [json.loads(l) for l in (synth / "captions.jsonl").read_text().splitlines()]
    with wds.ShardWriter(str(out / pattern), maxcount=24, verbose=0) as sink:
        for i, r in enumerate(rows):
            sink.write({"__key__": f"{i:05d}", "jpg": (synth / r["image"]).read_bytes(), "txt": r["caption"]})
    return out


@pytest.mark.parametrize("ext", ["tar.gz", "tgz", "tar.xz"])
def test_compressed_shards_stream_as_the_plain_ones_and_resume_exactly(synth, tmp_path, shard_cache, ext):
    """webdataset's ShardWriter("out-%05d.tar.gz") wrote shards that `train` refused ("unpack them
    first"): they stream as plain ones do, batch for batch, and a stream restored mid-shard goes on as
    the uninterrupted one, even after its unpacked copies are gone."""
    plain = _webdataset_shards(synth, tmp_path / "plain", "s-%05d.tar")
    packed = _webdataset_shards(synth, tmp_path / "packed", f"s-%05d.{ext}")
    assert len(list(packed.iterdir())) == 4 and not list(packed.glob("*.tar"))

    def make(folder):
        return TrainStream(find_sources(str(folder)), spell, 32, 8, seed=2, shuffle=10, threads=2)

    want = iter(make(plain))
    want = [next(want) for _ in range(16)]
    a = iter(make(packed))
    got = [next(a) for _ in range(5)]
    state = json.loads(json.dumps(a.gi_frame.f_locals["self"].state()))
    got += [next(a) for _ in range(11)]
    for g, w in zip(got, want):
        assert captions(g) == captions(w) and (g["images"] == w["images"]).all()
    shutil.rmtree(shard_cache)  # evicted: the copies are made again, byte for byte
    unpacked._known.clear()
    b = make(packed)
    assert b.restore(state) is None
    resumed = iter(b)
    for w in want[5:]:
        g = next(resumed)
        assert captions(g) == captions(w) and (g["images"] == w["images"]).all()


def test_train_takes_a_folder_of_plain_and_compressed_shards(synth, tmp_path, shard_cache):
    """0.tar beside 1.tar.gz trained on the .tar alone and never mentioned the .gz: both are read."""
    mixed = _webdataset_shards(synth, tmp_path / "mixed", "s-%05d.tar.gz")
    (mixed / "s-00000.tar.gz").unlink()
    _webdataset_shards(synth, tmp_path / "one", "s-%05d.tar")
    shutil.copy(tmp_path / "one" / "s-00000.tar", mixed / "s-00000.tar")
    sources = find_sources(str(mixed))
    assert [Path(s.path).name for s in sources] == ["s-00000.tar", "s-00001.tar.gz", "s-00002.tar.gz", "s-00003.tar.gz"]
    assert len(src.read_all(sources, "").samples) == 96
    r = cli("train", "--data", mixed, "--out", tmp_path / "run", "--steps", "2", "--encoder", "tiny",
            "--image-size", "28", "--batch-size", "8", "--no-progress", "--set", "vocab_size=300")  # fmt: skip
    assert r.exit_code == 0, r.output


def test_a_damaged_compressed_shard_is_counted_and_an_unreadable_compression_is_one_line(
    three_shards, tmp_path, shard_cache
):
    packed = tmp_path / "packed"
    packed.mkdir()
    (packed / "00000.tar.gz").write_bytes((three_shards / "00000.tar").read_bytes())  # not gzip at all
    found = list(src.entries(find_sources(str(packed))))
    assert len(found) == 1 and found[0].why.startswith("unreadable tar shard")
    whole = gzip.compress((three_shards / "00001.tar").read_bytes())
    (packed / "00001.tar.gz").write_bytes(whole[: len(whole) * 2 // 3])  # cut off: what came before is read
    found = list(src.entries(find_sources(str(packed / "00001.tar.gz"))))
    samples = [e for e in found if isinstance(e, src.Sample)]
    assert 0 < len(samples) < 8 and found[-1].why.startswith("truncated tar shard")
    (packed / "00002.tar.zst").write_bytes(b"\x28\xb5\x2f\xfd")
    if unpacked._zstd_reader() is None:
        last = one_clear_line(cli("train", "--data", packed / "00002.tar.zst", "--out", tmp_path / "run"), "zstd")
        assert "pip install zstandard" in last and not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def three_shards(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("three_shards"), 24, size=32, shards=3)
