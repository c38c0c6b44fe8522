"""The last faults (issue 28): a 100-million-shard brace range answers at once, caption and classify
go on past a bad file (exit 2), `embed | head -1` ends quietly, `lora_rank` alone is refused,
compressed shards are refused in one line, one progress switch, and the cases a careless or hostile
user tries on the surfaces added last (caption, classify, complete, train's config)."""

import json
import shutil
import subprocess
import sys

import pytest
from helpers import PHOTO, ROOT, cli, one_clear_line, read_only_folder

from mlx_aimv2.config import load_config
from mlx_aimv2.data.synth import write_labelled, write_synthetic
from mlx_aimv2.errors import UserError

DEMO = ROOT / "weights" / "demo"
SCENES = ROOT / "examples" / "scenes" / "images"


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("synth"), 24, size=32, shards=3)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Two good images around a corrupt one and an empty one."""
    folder = tmp_path_factory.mktemp("mixed")
    shutil.copy(PHOTO, folder / "a_good.jpg")
    (folder / "b_bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "c_empty.jpg").write_bytes(b"")
    shutil.copy(SCENES / "000001.jpg", folder / "d_good.jpg")
    return folder


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("classify")
    data = write_labelled(tmp / "data", 32, "colour", size=64, seed=1)
    r = cli("train", "--objective", "classify", "--data", data, "--init", DEMO, "--out", tmp / "run", "-b", "8",
            "--steps", "2", "--no-progress", "--set", "tune=head")  # fmt: skip
    assert r.exit_code == 0, r.output
    return tmp / "run", data


# -- wrong or stuck ----------------------------------------------------------------------------------


def test_a_hundred_million_shard_brace_range_answers_in_seconds(synth, tmp_path, monkeypatch):
    """Matched against the disk: the 100 million names are never spelled out one by one."""
    from mlx_aimv2.data import sources

    def spelled(pattern):
        raise AssertionError(f"{pattern}: the brace range was expanded name by name")

    monkeypatch.setattr(sources, "braces", spelled)
    r = cli("train", "--data", f"{synth}/{{00000..99999999}}.tar", "--out", tmp_path / "run", "--steps", "1")
    last = one_clear_line(r, "100,000,000", "3 exist")
    assert "00000.tar" in last and "00002.tar" in last
    assert not (tmp_path / "run").exists()


def test_caption_goes_past_bad_files_and_exits_2(mixed):
    r = cli("caption", mixed / "a_good.jpg", mixed / "b_bad.jpg", mixed / "c_empty.jpg", mixed / "d_good.jpg",
            "--model", "demo", "--json")  # fmt: skip
    assert r.exit_code == 2, r.output
    rows = json.loads(r.stdout)
    assert [row["path"].rsplit("/", 1)[1] for row in rows] == ["a_good.jpg", "d_good.jpg"]
    assert all(row["caption"] for row in rows)
    assert "b_bad.jpg" in r.stderr and "c_empty.jpg" in r.stderr and "Traceback" not in r.output
    r = cli("caption", mixed / "b_bad.jpg", "--model", "demo")
    assert r.exit_code == 1 and "b_bad.jpg" in r.stderr


def test_embed_into_a_pipe_that_closes_ends_quietly(tmp_path):
    shutil.copytree(SCENES, tmp_path / "photos")
    r = subprocess.run(f"{sys.executable} -m mlx_aimv2 embed photos --model demo | head -1", shell=True, cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.stdout.count("\n") == 1 and "embedding" in r.stdout
    assert "error" not in r.stderr and "Broken pipe" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr
    assert not list(tmp_path.glob("*.partial*"))


# -- says one thing, does another ------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["lora_rank=8", "lora_alpha=32", "lora_layers=2", "merge_lora=false"])
def test_a_lora_key_without_tune_lora_is_refused(key, tmp_path):
    k, v = key.split("=")
    with pytest.raises(UserError, match="add --set tune=lora"):
        load_config(overrides={"data": "x", "out": str(tmp_path), "init": "demo", "objective": "classify"}, sets=[key])
    assert load_config(overrides={"data": "x", "init": "demo", "objective": "classify"}, sets=["tune=lora", key])


def test_a_key_of_another_objective_is_refused(tmp_path):
    with pytest.raises(UserError, match="read only by objective lit"):
        load_config(overrides={"data": "x", "out": str(tmp_path)}, sets=["lit_loss=sigmoid"])


def test_one_progress_switch_silences_every_bar(synth, tmp_path, capfd):
    from mlx_aimv2.train.trainer import Trainer

    cfg = load_config(overrides=dict(data=str(synth), out=str(tmp_path / "run"), encoder="tiny", image_size=28,
                                     batch_size=4, steps=2, threads=1, vocab_size=300))  # fmt: skip
    Trainer(cfg, log=lambda *a: None, progress=False).run()
    out, err = capfd.readouterr()
    assert "it/s" not in err and "%|" not in err and "step" not in err, err


def test_classify_takes_folders_and_a_run_and_says_json(classifier_run, mixed):
    run, data = classifier_run
    r = cli("classify", data / "val", "--model", run, "--json", "--top-k", "2")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    n = len(list((data / "val").rglob("*.jpg")))
    assert len(rows) == n and all(len(row["labels"]) == 2 and len(row["probabilities"]) == 2 for row in rows)
    assert all(row["probabilities"][0] >= row["probabilities"][1] for row in rows)
    r = cli("classify", mixed, "--model", run / "classifier")  # bad files among good: each good one, exit 2
    assert r.exit_code == 2 and r.stdout.count("\n") == 2 and "b_bad.jpg" in r.stderr, r.output


def test_classify_bad_inputs_are_one_line(classifier_run, tmp_path):
    run, data = classifier_run
    one_clear_line(cli("classify", tmp_path / "missing.jpg", "--model", run), "missing.jpg", "no such file")
    one_clear_line(cli("classify", PHOTO, "--model", run, "--labels", "a,b"), "own classes", "drop --labels")
    one_clear_line(cli("classify", PHOTO, "--model", "demo"), "no classifier head")
    one_clear_line(cli("classify", PHOTO, "--model", "demo", "--labels", "a,b"), "LiT")
    one_clear_line(cli("classify", PHOTO), "--labels")
    one_clear_line(cli("classify", PHOTO, "--labels", " , "), "--labels is empty")
    stopped = tmp_path / "stopped"
    shutil.copytree(run, stopped)
    shutil.rmtree(stopped / "classifier")
    one_clear_line(cli("classify", PHOTO, "--model", stopped), "not exported", "export")


# -- conventions the stream misses ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["00000.tar.gz", "00000.tgz", "00000.tar.zst"])
def test_a_compressed_shard_is_refused_in_one_line(synth, tmp_path, name):
    packed = tmp_path / "packed"
    packed.mkdir()
    (packed / name).write_bytes((synth / "00000.tar").read_bytes())
    for data in (packed / name, packed, f"{packed}/{{00000..00000}}.{name.split('.', 1)[1]}"):
        one_clear_line(cli("train", "--data", data, "--out", tmp_path / "run", "--steps", "1"), "compressed", "unpack")
    assert not (tmp_path / "run").exists()


# -- the careless and the hostile ---------------------------------------------------------------------------


def test_caption_and_complete_refuse_what_cannot_work(tmp_path):
    (tmp_path / "empty").mkdir()
    one_clear_line(cli("caption", tmp_path / "empty", "--model", "demo"), "no images to caption")
    one_clear_line(cli("caption", PHOTO, "--model", "demo-lit"), "decoder")
    one_clear_line(cli("caption", PHOTO, "--model", tmp_path / "nowhere"), "nowhere")
    one_clear_line(cli("complete", PHOTO, "--model", "demo", "--prefix", "3"), "learned only text")
    one_clear_line(cli("complete", PHOTO, "--model", "demo", "--prefix", "3", "--out", tmp_path), "is a folder")
    one_clear_line(cli("complete", tmp_path / "nope.jpg", "--model", "demo", "--prefix", "3", "-o", tmp_path / "c.png"),
                   "nope.jpg")  # fmt: skip
    assert not (tmp_path / "c.png").exists()


def test_config_values_of_the_wrong_type_are_one_line(tmp_path):
    for bad, word in (("lora_rank=x", "lora_rank"), ("steps=-3", "steps"), ("lr=nan", "lr"), ("tune=most", "tune"),
                      ("crop_scale=[0.9,0.1]", "crop_scale"), ("betas=1", "betas")):  # fmt: skip
        sets = [bad, "tune=lora"] if bad.startswith("lora") else [bad]
        with pytest.raises(UserError, match=word):
            load_config(
                overrides={"data": "x", "out": str(tmp_path), "init": "demo", "objective": "classify"}, sets=sets
            )


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


def test_a_file_that_vanishes_before_its_caption_is_counted_not_fatal(mixed, tmp_path, monkeypatch):
    from mlx_aimv2 import paths

    folder = tmp_path / "photos"
    shutil.copytree(mixed, folder)
    real = paths.expand_paths

    def then_delete(args):  # listed, then gone before it is read (a sync client, another program)
        found = real(args)
        (folder / "d_good.jpg").unlink()
        return found

    monkeypatch.setattr("mlx_aimv2.cli.images.expand_paths", then_delete)
    r = cli("caption", folder, "--model", "demo", "--json")
    assert r.exit_code == 2 and "d_good.jpg" in r.stderr and len(json.loads(r.stdout)) == 1, r.output
