"""Bad input to caption, classify and complete: they go on past a bad or vanished file (exit 2),
take folders and a fine-tuning run, and refuse what cannot work (a model without a decoder, a run
not exported yet, an empty folder) in one line."""

import json
import shutil

import pytest
from helpers import PHOTO, ROOT, cli, one_clear_line

from mlx_aimv2.data.synth import write_labelled

DEMO = ROOT / "weights" / "demo"
SCENES = ROOT / "examples" / "scenes" / "images"


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


# -- says one thing, does another ------------------------------------------------------------------------


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
