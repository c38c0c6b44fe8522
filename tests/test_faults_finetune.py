"""Fault injection for fine-tuning and the commands that use its result: each bad input is one line
naming what to fix, exit 1, and no run folder left behind; bad images in a class folder are
skipped and counted."""

import json
import shutil
from pathlib import Path

import pytest
from helpers import cli

from mlx_aimv2.data.synth import write_labelled

DEMO = Path(__file__).parent.parent / "weights" / "demo"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_labelled(tmp_path_factory.mktemp("labelled"), 48, "colour", size=64, seed=4)


def err(*args):
    r = cli(*args)
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    return r.output.strip().splitlines()[-1]


def train(data, out, *sets, steps=2):
    args = ["train", "--objective", "classify", "--data", data, "--init", DEMO, "--out", out, "-b", "8"]
    args += ["--steps", steps]
    for s in sets:
        args += ["--set", s]
    return args


def test_a_folder_with_one_class(folder, tmp_path):
    one = tmp_path / "one"
    shutil.copytree(folder / "train" / "red", one / "red")
    line = err(*train(one, tmp_path / "r"))
    assert f"{one}: a classifier needs one subfolder of images per class, at least 2; found 1 (red)" in line
    assert not (tmp_path / "r").exists()


def test_a_class_folder_with_no_images(folder, tmp_path):
    data = tmp_path / "d"
    shutil.copytree(folder / "train", data)
    (data / "zebra").mkdir()
    (data / "zebra" / "notes.txt").write_text("no images here")
    line = err(*train(data, tmp_path / "r"))
    assert "class folder(s) with no images: zebra; add images" in line and not (tmp_path / "r").exists()


def test_unknown_labels_in_a_labels_file(folder, tmp_path):
    images = [sorted(d.glob("*.jpg"))[0] for d in sorted((folder / "train").iterdir())][:6]  # 6 classes
    rows = ["image,label"] + [f"{p},{p.parent.name}" for p in images] + [f"{images[0]},zebra"]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "classes.txt").write_text("\n".join(sorted({p.parent.name for p in images})) + "\n")
    line = err(*train(tmp_path / "labels.csv", tmp_path / "r", f"classes={tmp_path / 'classes.txt'}"))
    assert f"{tmp_path / 'labels.csv'}: unknown label 'zebra' (the row of {images[0]};" in line
    assert f"not in {tmp_path / 'classes.txt'}" in line and not (tmp_path / "r").exists()
    (tmp_path / "one.csv").write_text("image,label\n" + "".join(f"{p},cat\n" for p in images))
    assert "a classifier needs at least 2 classes; its rows name 1" in err(*train(tmp_path / "one.csv", tmp_path / "r"))


def test_a_lora_rank_larger_than_the_layer(folder, tmp_path):
    line = err(*train(folder, tmp_path / "r", "tune=lora", "lora_rank=500"))
    assert "lora_rank 500: rank 500 exceeds this 192->" in line and "lower lora_rank" in line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "sets, says",
    [
        (["tune=half"], "config key 'tune' = 'half': use one of full, lora, head"),
        (['lora_targets=["mlp"]'], "'lora_targets' = ['mlp']: name some of qkv, proj, fc1, fc2, fc3"),
        (["tune=lora", "layer_decay=0.7"], "layer_decay scales the encoder's learning rates; tune = 'lora'"),
        (["lora_rank=0"], "'lora_rank' = 0"),
    ],
)
def test_bad_fine_tuning_settings(folder, tmp_path, sets, says):
    assert says in err(*train(folder, tmp_path / "r", *sets))
    assert not (tmp_path / "r").exists()


def test_classify_without_init_or_with_captions_or_no_held_out(folder, tmp_path):
    line = err("train", "--objective", "classify", "--data", folder, "--out", tmp_path / "r")
    assert "objective 'classify' fine-tunes a trained encoder: set init" in line
    synth = Path(__file__).parent.parent / "examples" / "scenes"
    assert "not one subfolder per class" in err(*train(synth, tmp_path / "r"))
    flat = tmp_path / "flat"
    shutil.copytree(folder / "train", flat)
    line = err(*train(flat, tmp_path / "r", "eval_every=1"))
    assert f"eval_every = 1: {flat} has no held-out images; give eval_data" in line
    assert not (tmp_path / "r").exists()


def test_bad_images_in_a_class_folder_are_skipped_and_counted(folder, tmp_path):
    data = tmp_path / "d"
    shutil.copytree(folder, data)
    (data / "train" / "red" / "broken.jpg").write_bytes(b"not a jpeg")
    r = cli(*train(data, tmp_path / "r", "threads=1", steps=8))  # more than an epoch
    assert r.exit_code == 0, r.output
    assert "skipped 1" in r.output and "unreadable image" in r.output
    assert (tmp_path / "r" / "classifier" / "classifier.json").is_file()


def test_commands_given_the_wrong_model(folder, tmp_path):
    image = next((folder / "val").rglob("*.jpg"))
    line = err("classify", image, "--model", DEMO)
    assert "has no classifier head; fine-tune one with `mlx-aimv2 train --objective classify`" in line
    assert "give --labels" in err("classify", image)
    line = err("caption", image, "--model", DEMO / "model.safetensors")
    assert "not a pre-training run folder" in line and "decoder" in line


def test_a_damaged_classifier_folder(folder, tmp_path):
    r = cli(*train(folder, tmp_path / "r", "tune=lora", "merge_lora=false"))
    assert r.exit_code == 0, r.output
    done = tmp_path / "r" / "classifier"
    image = next((folder / "val").rglob("*.jpg"))
    (done / "classifier.json").write_text("{not json")
    assert f"{done / 'classifier.json'}: unreadable" in err("classify", image, "--model", done)
    (done / "classifier.json").write_text(json.dumps({"classes": ["a"], "heads": 4, "dim": 192}))
    assert "'classes' must list at least 2 names" in err("classify", image, "--model", done)
    spec = json.loads((done / "adapter_config.json").read_text())
    (done / "adapter_config.json").write_text(json.dumps({**spec, "rank": spec["rank"] * 2}))
    assert f"{done / 'adapters.safetensors'}: does not match" in err("embed", image, "--model", done)


def test_synth_classes_must_be_an_object_attribute(tmp_path):
    assert "--classes count: use one of colour, shape, position, size" in err(
        "data", "synth", tmp_path / "s", "--n", "4", "--classes", "count"
    )
