"""Pre-training on the synthetic set: the losses fall, resume is exact, bad data is skipped,
training starts from a converted checkpoint and the exported encoder embeds."""

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from helpers import PHOTO, QUIET, cli, write_shard
from mlx.utils import tree_flatten

from mlx_aimv2 import cpu
from mlx_aimv2.config import load_config
from mlx_aimv2.data import write_synthetic
from mlx_aimv2.errors import UserError
from mlx_aimv2.train.trainer import Trainer


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("synth"), 192, size=64, seed=1)


def cfg(synth, out, **kw):
    base = dict(
        data=str(synth),
        out=str(out),
        encoder="tiny",
        image_size=56,
        batch_size=16,
        steps=100,
        warmup=10,
        lr=2e-3,
        log_every=1,
        save_every=1000,
        vocab_size=300,
        threads=2,
    )
    return load_config(overrides={**base, **kw})


def metrics(out):
    return [json.loads(l) for l in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_both_losses_fall_within_a_hundred_steps(synth, tmp_path):
    Trainer(cfg(synth, tmp_path / "run"), **QUIET).run(progress=False)
    m = metrics(tmp_path / "run")
    assert len(m) == 100
    for key in ("loss", "loss_image", "loss_text"):
        first = np.mean([r[key] for r in m[:10]])
        last = np.mean([r[key] for r in m[-10:]])
        assert last < 0.8 * first, (key, first, last)
    assert (tmp_path / "run" / "loss.png").is_file()
    assert (tmp_path / "run" / "encoder" / "model.safetensors").is_file()


def test_resume_continues_exactly(synth, tmp_path):
    c = dict(steps=16, save_every=4)
    Trainer(cfg(synth, tmp_path / "a", **c), **QUIET).run(progress=False)
    r = Trainer(cfg(synth, tmp_path / "b", **c), **QUIET).run(progress=False, until=10)
    assert r["interrupted"] and r["step"] == 10
    Trainer(cfg(synth, tmp_path / "b", **c), resume=True, **QUIET).run(progress=False)
    a, b = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert [x["step"] for x in b] == list(range(1, 17))
    for x, y in zip(a, b):
        for k in ("loss", "loss_image", "loss_text"):
            assert x[k] == y[k], (x["step"], k, x[k], y[k])
    wa = mx.load(str(tmp_path / "a" / "encoder" / "model.safetensors"))
    wb = mx.load(str(tmp_path / "b" / "encoder" / "model.safetensors"))
    assert all(mx.array_equal(wa[k], wb[k]).item() for k in wa)


def test_bad_rows_and_corrupt_images_are_skipped_and_reported(synth, tmp_path):
    import shutil

    d = tmp_path / "data"
    shutil.copytree(synth, d)
    rows = (d / "captions.jsonl").read_text().splitlines()
    (d / "images" / "000003.jpg").write_bytes(b"\xff\xd8\xff garbage")  # corrupt image
    (d / "images" / "000005.jpg").write_bytes((d / "images" / "000006.jpg").read_bytes()[:300])  # truncated
    rows[1] = "{not json"
    rows[2] = json.dumps({"image": "images/000002.jpg", "caption": ""})
    rows[4] = json.dumps({"image": "images/missing.jpg", "caption": "a red circle"})
    (d / "captions.jsonl").write_text("\n".join(rows) + "\n")
    logs = []
    t = Trainer(cfg(d, tmp_path / "run", steps=30), log=logs.append)
    r = t.run(progress=False)  # 480 samples: more than two passes over the set, each bad one counted once
    assert r["step"] == 30
    want = {"not valid JSON": 1, "empty or missing caption": 1, "image not found": 1, "unreadable image": 2}
    assert dict(t.skips.reasons) == want, t.skips.reasons
    line = next(l for l in logs if l.startswith("skipped 5: "))
    assert "2 unreadable image" in line and "image not found" in line, line
    state = json.loads(next((tmp_path / "run" / "checkpoints").glob("*/state.json")).read_text())
    assert state["skipped"]["reasons"] == want


def test_start_from_a_converted_checkpoint_then_embed_the_export(tmp_path):
    from helpers import hf_vision

    synth = write_synthetic(tmp_path / "synth", 48, size=64)
    _, hf = hf_vision(tmp_path)
    assert cli(*["convert", str(hf), str(tmp_path / "conv")]).exit_code == 0
    t = Trainer(cfg(synth, tmp_path / "run", init=str(tmp_path / "conv"), steps=3), **QUIET)
    src = mx.load(str(tmp_path / "conv" / "model.safetensors"))
    ours = dict(tree_flatten(t.model.encoder.parameters()))
    assert src.keys() == ours.keys()
    assert all(mx.array_equal(src[k], ours[k]).item() for k in src)
    t.run(progress=False)
    r = cli(*["embed", str(PHOTO), "--model", str(tmp_path / "run" / "encoder"), "-o", str(tmp_path / "e.npy")])
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "e.npy").shape == (1, 256)
    r = cli(*["export", str(tmp_path / "run"), str(tmp_path / "exp")])
    assert r.exit_code == 0, r.output
    a = mx.load(str(tmp_path / "exp" / "model.safetensors"))
    b = mx.load(str(tmp_path / "run" / "encoder" / "model.safetensors"))
    assert all(mx.array_equal(a[k], b[k]).item() for k in a)


def test_user_errors(synth, tmp_path):

    def err(*args):
        r = cli(*[str(a) for a in args])
        assert r.exit_code == 1, r.output
        assert "Traceback" not in r.output
        return r.output.strip().splitlines()[-1]

    assert "unknown encoder preset 'giant'" in err("train", "--data", synth, "--encoder", "giant")
    assert "unknown config key" in err("train", "--data", synth, "--set", "learning_rate=1")
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = 10\nwarmpu = 3\n")
    assert "bad.toml: unknown config key(s): warmpu" in err("train", "--config", bad, "--data", synth)
    assert "no such dataset" in err("train", "--data", tmp_path / "nothing")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert "empty.jsonl: no usable image + caption pair, 0 bad entries" in err("train", "--data", empty)
    # resume from a checkpoint of another architecture
    Trainer(cfg(synth, tmp_path / "r", steps=2), **QUIET).run(progress=False)
    line = err(
        "train",
        "--data",
        synth,
        "--out",
        tmp_path / "r",
        "--encoder",
        "demo",
        "--image-size",
        56,
        "--set",
        "vocab_size=300",
        "--resume",
    )
    assert "a resumed run keeps its encoder;" in line
    assert "--resume" in err("train", "--data", synth, "--out", tmp_path / "r", "--encoder", "tiny")


def test_nan_loss_stops_with_a_clear_message(synth, tmp_path, monkeypatch):
    from mlx_aimv2.models import decoder

    orig = decoder.AIMv2PreTrainer.losses

    def poisoned(self, images, ids, prefix, total=lambda c: c):
        out = orig(self, images, ids, prefix, total)
        out["loss"] = out["loss"] * mx.array(float("nan"))
        return out

    monkeypatch.setattr(decoder.AIMv2PreTrainer, "losses", poisoned)
    with pytest.raises(UserError, match="loss became nan at step 1"):
        Trainer(cfg(synth, tmp_path / "n", steps=5), **QUIET).run(progress=False)


def test_config_file_toml_and_yaml(synth, tmp_path):
    (tmp_path / "c.toml").write_text(f'data = "{synth}"\nsteps = 7\n[decoder]\ndepth = 2\n')
    (tmp_path / "c.yaml").write_text(f"data: {synth}\nsteps: 7\ndecoder:\n  depth: 2\n")
    for f in ("c.toml", "c.yaml"):
        c = load_config(tmp_path / f, {"lr": 3e-4}, ["warmup=3"])
        assert (c.steps, c.lr, c.warmup, c.decoder) == (7, 3e-4, 3, {"depth": 2})


def test_a_dataset_of_only_unreadable_images_stops_clearly(tmp_path):
    d = write_synthetic(tmp_path / "d", 20, size=64)
    for f in (d / "images").iterdir():
        f.write_bytes(b"broken")
    with pytest.raises(UserError, match="no readable image"):
        Trainer(cfg(d, tmp_path / "run", batch_size=4, steps=2), **QUIET).run(progress=False)


def test_flipped_images_get_mirrored_captions(synth):
    from mlx_aimv2.data import TrainStream, find_sources
    from mlx_aimv2.data.stream import mirror_caption

    assert (
        mirror_caption("a cat at the left, Right side, bright light") == "a cat at the right, Left side, bright light"
    )

    def spell(texts):  # a "tokenizer" whose ids are the caption's bytes, so a batch says its captions
        return np.stack([np.frombuffer(t.encode().ljust(256)[:256], np.uint8).astype(np.int32) for t in texts])

    def read(ids):
        return [bytes(r.astype(np.uint8)).decode().rstrip() for r in ids]

    sources = find_sources(str(synth))
    got = next(iter(TrainStream(sources, spell, 56, 64, mirror=True)))
    plain = next(iter(TrainStream(sources, spell, 56, 64)))
    assert (got["images"] == plain["images"]).all()  # the same samples and (flipped) pixels
    swapped = [a != b for a, b in zip(read(got["ids"]), read(plain["ids"]))]
    assert 0 < sum(swapped) < 64  # some flipped images had a side in their caption
    for a, b in zip(read(got["ids"]), read(plain["ids"])):
        assert a in (b, mirror_caption(b))


def test_tar_shards_and_csv_tsv_sources(synth, tmp_path):
    """webdataset-style shards (key.jpg + key.txt) and csv / tsv captions give the same samples."""
    import csv
    import tarfile

    from mlx_aimv2.data import open_dataset

    rows = [json.loads(l) for l in (synth / "captions.jsonl").read_text().splitlines()][:40]
    shards = tmp_path / "shards"
    shards.mkdir()
    for s in range(2):
        with tarfile.open(shards / f"shard-{s:03d}.tar", "w") as tf:
            for i, r in enumerate(rows[s * 20 : (s + 1) * 20]):
                key = f"{s:03d}{i:04d}"
                tf.add(synth / r["image"], arcname=f"{key}.jpg")
                txt = tmp_path / "cap.txt"
                txt.write_text(r["caption"])
                tf.add(txt, arcname=f"{key}.txt")
            txt.write_text("orphan caption")
            tf.add(txt, arcname="orphan.txt")  # no image: skipped and counted
    ds = open_dataset(str(shards / "*.tar"))
    assert len(ds) == 40 and len(ds.bad) == 2
    assert sorted(s.caption for s in ds.samples) == sorted(r["caption"] for r in rows)
    for ext, delim in ((".csv", ","), (".tsv", "\t")):
        f = synth / f"caps{ext}"
        with open(f, "w", newline="") as fh:
            w = csv.writer(fh, delimiter=delim)
            w.writerow(["image", "caption"])
            for r in rows:
                w.writerow([r["image"], r["caption"]])
            w.writerow(["images/nope.jpg", "missing image"])
        ds2 = open_dataset(str(f))
        assert [s.caption for s in ds2.samples] == [r["caption"] for r in rows] and len(ds2.bad) == 1
        f.unlink()
    r = Trainer(cfg(shards / "*.tar", tmp_path / "run", steps=3, batch_size=8), **QUIET).run(progress=False)
    assert r["step"] == 3 and np.isfinite(r["last"]["loss"])


def test_shards_by_brace_pattern_list_file_json_captions_and_bad_members(synth, tmp_path):
    """Issue 18's sources: brace patterns and shard lists, captions in key.json, webdataset keys with
    dots, and every bad member or shard skipped and counted by reason."""
    import tarfile

    from mlx_aimv2.data import open_dataset
    from mlx_aimv2.data.sources import braces

    assert list(braces("s/{000..002}.tar")) == ["s/000.tar", "s/001.tar", "s/002.tar"]
    assert list(braces("{a,b}-{8..10}.tar")) == ["a-8.tar", "a-9.tar", "a-10.tar", "b-8.tar", "b-9.tar", "b-10.tar"]
    img = (synth / json.loads((synth / "captions.jsonl").read_text().splitlines()[0])["image"]).read_bytes()
    shards = tmp_path / "shards"
    shards.mkdir()
    write_shard(shards / "00000.tar", [
        ("a", {"jpg": img, "txt": b"a red circle"}),
        ("b", {"jpg": img, "json": json.dumps({"caption": "a blue square", "url": "x"}).encode()}),
        ("c.v2", {"jpg": img, "txt": b"a dotted key"}),  # webdataset: key "c", suffixes "v2.jpg", "v2.txt"
        ("d", {"jpg": img, "txt": "caf\xe9".encode("latin-1")}),  # not UTF-8
        ("e", {"jpg": img}),  # no caption
        ("f", {"txt": b"no image"}),
        ("g", {"jpg": img, "json": b"{broken"}),
    ])  # fmt: skip
    write_shard(shards / "00001.tar", [("h", {"png": img, "txt": b"a png key"})])
    (shards / "00003.tar").write_bytes(b"not a tar file at all" * 100)
    whole = write_shard(tmp_path / "whole.tar", [(f"t{i}", {"txt": b"kept %d" % i, "jpg": img}) for i in range(3)])
    with tarfile.open(whole) as tf:
        cut = tf.getmember("t2.jpg").offset_data + len(img) // 2
    (shards / "00004.tar").write_bytes(whole.read_bytes()[:cut])  # cut inside t2's image
    ds = open_dataset(str(shards / "{00000..00004}.tar"))  # 00002 is missing
    assert sorted(s.caption for s in ds.samples) == ["a blue square", "a png key", "a red circle", "kept 0", "kept 1"]
    reasons = sorted(b.reason for b in ds.bad)
    assert reasons == sorted(
        [
            "no caption",
            "caption is not UTF-8",
            "no image member",
            "its .json is not valid JSON",
            "no such shard",
            "unreadable tar shard",
            "no image member",  # t2: its caption came before the cut, its image did not
            "truncated tar shard",
        ]
    ), reasons  # fmt: skip  ("c.v2": suffixes v2.jpg and v2.txt are neither image nor caption: no sample)
    listing = tmp_path / "shards.txt"
    listing.write_text("shards/00000.tar\n# a comment\nshards/00001.tar\n")
    assert len(open_dataset(str(listing))) == 3


def test_the_runs_own_bpe_learns_from_a_bounded_sample(synth, tmp_path, monkeypatch):
    """Millions of captions would take the BPE minutes before step 1: it sees at most BPE_SAMPLE of
    them, an equal share from shards spread over the corpus, and says how many."""
    from mlx_aimv2.train.objectives import base

    img = next((synth / "images").iterdir()).read_bytes()
    (tmp_path / "shards").mkdir()
    for s in range(16):
        write_shard(
            tmp_path / "shards" / f"{s:02d}.tar",
            [(f"k{i}", {"jpg": img, "txt": b"shard %d row %d" % (s, i)}) for i in range(5)],
        )
    monkeypatch.setattr(base, "BPE_SAMPLE", 8)
    seen = []
    real = base.train_bpe
    monkeypatch.setattr(base, "train_bpe", lambda texts, *a: real(list(seen.extend(texts) or seen), *a))
    said = []
    Trainer(cfg(tmp_path / "shards", tmp_path / "run", steps=1, batch_size=4), log=said.append, progress=False)
    assert seen == [f"shard {s} row 0" for s in (0, 2, 4, 6, 9, 11, 13, 15)]  # one from each of 8 spread shards
    assert any("BPE on 8 captions from 8 of 16 shard(s)" in line for line in said), said


def test_eval_every_logs_a_knn_probe_in_metrics_and_the_plot(synth, tmp_path):
    from mlx_aimv2.eval.knn import KnnProbe

    held = write_synthetic(tmp_path / "held", 60, size=64, seed=9, max_objects=1)
    logs = []
    t = Trainer(cfg(synth, tmp_path / "run", steps=12, log_every=5, eval_every=4, eval_data=str(held)), log=logs.append)
    t.run(progress=False)
    m = metrics(tmp_path / "run")
    probed = [(r["step"], r["knn_top1"]) for r in m if "knn_top1" in r]
    assert [s for s, _ in probed] == [4, 8, 12] and all(0 <= a <= 100 for _, a in probed)
    assert [r["step"] for r in m if "loss" in r] == [5, 10, 12]  # probe rows between log rows
    # the logged figure is the probe of the final encoder, computed again from scratch
    again = KnnProbe(str(held), 56, t.cfg.mean, t.cfg.std)(t.model.encoder)
    assert again == probed[-1][1]
    assert any("eval: k-NN top-1 on" in l and "every 4 steps" in l for l in logs), logs
    assert (tmp_path / "run" / "loss.png").is_file()


def test_eval_settings_are_checked(synth, tmp_path):
    from helpers import cli, one_clear_line

    r = cli("train", "--data", synth, "--out", tmp_path / "a", "--set", "eval_every=5")
    one_clear_line(r, "eval_every = 5 needs eval_data")
    r = cli("train", "--data", synth, "--out", tmp_path / "b", "--set", "eval_every=5", "--set", "eval_data=nowhere")
    one_clear_line(r, "eval_data nowhere: no such folder")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.skipif(
    cpu.streams() < 2 or "(preloaded)" not in cpu.loaded_blas(), reason="needs two cores and a preloaded OpenBLAS"
)
def test_the_trainer_holds_the_blas_threads_its_step_needs(synth, tmp_path, monkeypatch):
    """A spread step runs with OpenBLAS at one thread per CPU stream (two threaded matmuls at once
    would oversubscribe the cores), the same count at every step (test_resume_continues_exactly checks
    that the run repeats itself bit for bit). mlx-data's loader threads set OpenBLAS's process-wide
    count to 1 as they start: after the run the default is back, for what the process computes next."""
    import ctypes

    from mlx_aimv2.train import trainer as trainer_module

    blas = ctypes.CDLL(cpu.loaded_blas().split()[0])
    seen = []
    real = trainer_module.make_step

    def recording(*args, **kw):
        step = real(*args, **kw)

        def watched(*inputs):
            seen.append(blas.openblas_get_num_threads())
            return step(*inputs)

        return watched

    monkeypatch.setattr(trainer_module, "make_step", recording)
    t = Trainer(cfg(synth, tmp_path / "run", steps=2), **QUIET)
    assert cpu.spreads(t.model)
    t.run(progress=False)
    assert seen == [1, 1]
    assert blas.openblas_get_num_threads() == cpu.default_blas_threads()
