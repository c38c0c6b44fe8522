"""A short pre-training run's features beat a random-init encoder of the same architecture under
the same probes; the probe command writes its JSON; an image-folder dataset works too."""

import json
import shutil
from pathlib import Path

import numpy as np
from helpers import cli

from mlx_aimv2.config import load_config
from mlx_aimv2.data import write_synthetic
from mlx_aimv2.eval.probe import image_folder, knn
from mlx_aimv2.train.trainer import Trainer


def test_trained_encoder_beats_random_init(tmp_path):
    train = write_synthetic(tmp_path / "train", 1000, size=64, seed=1)
    evalset = write_synthetic(tmp_path / "eval", 500, size=64, seed=2, max_objects=1)
    cfg = load_config(
        overrides=dict(
            data=str(train),
            out=str(tmp_path / "run"),
            encoder="tiny",
            image_size=56,
            batch_size=32,
            steps=300,
            warmup=20,
            lr=3e-3,
            vocab_size=300,
            log_every=50,
        )
    )
    Trainer(cfg, log=lambda *a: None).run(progress=False)
    scores = {}
    for name, extra in (("trained", []), ("random", ["--random-init"])):
        out = tmp_path / f"{name}.json"
        r = cli(
            *[
                "probe",
                "-m",
                str(tmp_path / "run" / "encoder"),
                "--data",
                str(evalset),
                "--attributes",
                "colour,size",
                "--methods",
                "linear,knn",
                "--epochs",
                "20",
                "--cache",
                str(tmp_path / "cache"),
                "-o",
                str(out),
                *extra,
            ],
        )
        assert r.exit_code == 0, r.output
        scores[name] = json.loads(out.read_text())["top1"]
    t, f = scores["trained"], scores["random"]
    assert t["colour"]["linear"] >= f["colour"]["linear"] + 20, scores  # a clear margin
    assert t["colour"]["knn"] > f["colour"]["knn"], scores
    assert np.mean([t[a][m] for a in t for m in t[a]]) > np.mean([f[a][m] for a in f for m in f[a]]) + 10
    assert list((tmp_path / "cache").glob("features-*.npy"))  # trained features were cached


def test_image_folder_dataset_and_knn(tmp_path):
    src = write_synthetic(tmp_path / "s", 60, size=32, max_objects=1)
    rows = [json.loads(l) for l in (src / "captions.jsonl").read_text().splitlines()]
    for r in rows:
        d = tmp_path / "folder" / r["labels"]["shape"]
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / r["image"], d / Path(r["image"]).name)
    ds = image_folder(tmp_path / "folder")
    assert sorted(ds.classes) == ds.classes and len(ds.files) == 60 and ds.split.any() and (~ds.split).any()
    x = np.eye(4)[[0, 1, 2, 3, 0, 1]] + 0.01
    assert (knn(x[:4], np.array([0, 1, 2, 3]), x[4:], k=1) == [0, 1]).all()
