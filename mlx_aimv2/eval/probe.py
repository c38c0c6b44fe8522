"""Frozen-trunk probes, as the paper measures an encoder: an attentive probe (a learned query
attending over the last layer's tokens, then a linear classifier; AdamW, warmup + cosine), a linear
probe on mean-pooled features, and k-nearest-neighbours. Features are computed once and cached."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from tqdm import tqdm

from .. import owner
from ..atomic import write_file
from ..data.synth import ATTRIBUTES
from ..errors import UserError
from ..models.classifier import AttentiveHead as AttentiveProbe
from ..models.decoder import init_weights
from ..paths import files_under, subfolders

METHODS = ("attentive", "linear", "knn")


# ------------------------------------------------------------------------------------ labels


@dataclass
class LabelledSet:
    files: list  # image paths
    labels: np.ndarray  # int class ids
    classes: list  # class names
    split: np.ndarray  # bool: True = train


def image_folder(root: Path, seed: int = 0) -> LabelledSet:
    """One subfolder per class; `train/` and `val/` subfolders give the split, else a seeded 80/20 split."""

    root = Path(root)
    if (root / "train").is_dir() and (root / "val").is_dir():
        parts = [(root / "train", True), (root / "val", False)]
    else:
        parts = [(root, None)]
    classes = sorted({d.name for base, _ in parts for d in subfolders(base)})
    if len(classes) < 2:
        raise UserError(f"{root}: an image-folder dataset needs one subfolder per class (found {len(classes)})")
    files, labels, split = [], [], []
    for base, is_train in parts:
        for ci, c in enumerate(classes):
            for f in files_under(base / c) if (base / c).is_dir() else []:
                files.append(str(f))
                labels.append(ci)
                split.append(is_train)
    split = np.array(split)
    if parts[0][1] is None:
        split = np.random.default_rng(seed).random(len(files)) < 0.8
    return LabelledSet(files, np.array(labels), classes, split.astype(bool))


def synthetic_attribute(folder: Path, attribute: str, seed: int = 0) -> LabelledSet:
    """The synthetic set's scene attributes as labels: count over all scenes; colour, shape, position
    and size over the one-object scenes."""

    if attribute not in ATTRIBUTES:
        raise UserError(f"unknown attribute '{attribute}'; use one of {', '.join(ATTRIBUTES)}")
    f = Path(folder) / "captions.jsonl"
    if not f.is_file():
        raise UserError(f"{folder}: no captions.jsonl; make one with `mlx-aimv2 data synth {folder}`")
    rows = [json.loads(l) for l in f.read_text().splitlines() if l.strip()]
    rows = [r for r in rows if isinstance(r.get("labels"), dict) and attribute in r["labels"]]
    if attribute != "count":  # an object's attribute is only well defined when the scene has one object
        rows = [r for r in rows if r["labels"].get("count") == 1]
    if not rows:
        raise UserError(f"{f}: no rows carry scene labels; it is not a synthetic set")
    classes = list(ATTRIBUTES[attribute])
    labels = np.array([classes.index(r["labels"][attribute]) for r in rows])
    split = np.random.default_rng(seed).random(len(rows)) < 0.8
    return LabelledSet([str(Path(folder) / r["image"]) for r in rows], labels, [str(c) for c in classes], split)


# ------------------------------------------------------------------------------------ features


def reinitialize(model, seed: int = 0):
    """The same architecture with fresh (pre-training) initial weights: the floor a probe must beat."""

    mx.random.seed(seed)
    init_weights(model.vision)
    mx.eval(model.vision.parameters())
    model.folder = None  # its features must not be cached under the trained weights' key
    return model


def features(
    model, files: list, cache_dir: Optional[Path] = None, batch_size: int = 32, progress: bool = True
) -> np.ndarray:
    """(n, N, D) float16 last-layer tokens for every file, cached by model weights and file list."""
    key = hashlib.sha1()
    wfile = Path(model.folder or ".") / "model.safetensors"
    key.update(str(wfile.resolve()).encode())
    key.update(str(wfile.stat().st_mtime_ns if wfile.is_file() else 0).encode())
    key.update("\n".join(files).encode())
    path = Path(cache_dir) / f"features-{key.hexdigest()[:16]}.npy" if cache_dir else None
    if path is not None and path.is_file():
        return np.load(path)

    out = [None] * len(files)
    index = {f: i for i, f in enumerate(files)}
    for f, feats in tqdm(
        model.iter_embed(files, pool="none", batch_size=batch_size),
        total=len(files),
        desc="features",
        unit="img",
        disable=not progress,
    ):
        out[index[f]] = feats["tokens"].astype(np.float16)
    tokens = np.stack(out)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file(path, lambda tmp: np.save(tmp, tokens))
    return tokens


# ------------------------------------------------------------------------------------ probes


class LinearProbe(nn.Module):
    def __init__(self, dim: int, classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, affine=False)
        self.head = nn.Linear(dim, classes)

    def __call__(self, x):
        return self.head(self.norm(x.mean(axis=1)))


MIN_STEPS = 500  # small sets get more epochs than asked for, so a probe has enough steps to converge


def effective_epochs(epochs: int, n: int, batch: int = 64) -> int:
    return max(epochs, -(-MIN_STEPS // max(1, n // batch)))


def _fit(
    model,
    x_train,
    y_train,
    epochs: int,
    lr: float,
    wd: float,
    batch: int,
    seed: int,
    desc: str = "fit",
    progress: bool = True,
):
    mx.random.seed(seed)
    n = len(x_train)
    epochs = effective_epochs(epochs, n, batch)
    steps = epochs * max(1, n // batch)
    warm = max(1, steps // 10)
    sched = optim.join_schedules(
        [optim.linear_schedule(0.0, lr, warm), optim.cosine_decay(lr, steps - warm, 1e-5)], [warm]
    )
    opt = optim.AdamW(learning_rate=sched, weight_decay=wd)
    loss_grad = nn.value_and_grad(model, lambda m, x, y: nn.losses.cross_entropy(m(x), y, reduction="mean"))
    state = [model.state, opt.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(x, y):
        loss, g = loss_grad(model, x, y)
        opt.update(model, g)
        return loss

    rng = np.random.default_rng(seed)

    for _ in tqdm(range(epochs), desc=desc, unit="epoch", leave=False, disable=not progress):
        order = rng.permutation(n)
        for i in range(0, n - batch + 1 if n >= batch else 1, batch):
            idx = order[i : i + batch]
            mx.eval(step(mx.array(x_train[idx].astype(np.float32)), mx.array(y_train[idx])), state)
    return model


def _predict(model, x, batch=256):
    return np.concatenate(
        [
            np.array(mx.argmax(model(mx.array(x[i : i + batch].astype(np.float32))), axis=-1))
            for i in range(0, len(x), batch)
        ]
    )


def knn(train_x, train_y, test_x, k: int = 20, classes: int = 0) -> np.ndarray:
    """Cosine k-NN on mean-pooled features, votes weighted by exp(sim / 0.07) (as in DINO)."""
    a = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    b = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    sim = b @ a.T
    top = np.argsort(-sim, axis=1)[:, :k]
    votes = np.zeros((len(b), classes or train_y.max() + 1))
    for i in range(len(b)):
        np.add.at(votes[i], train_y[top[i]], np.exp(sim[i, top[i]] / 0.07))
    return votes.argmax(axis=1)


@owner.owned  # the probes' fits are compiled MLX work: on the library's MLX thread
def run_probes(
    tokens: np.ndarray,
    ds: LabelledSet,
    methods=METHODS,
    epochs: int = 30,
    seed: int = 0,
    progress: bool = True,
    name: str = "",
) -> dict:
    """Top-1 accuracy (%) on the held-out split for each method."""
    tr, te = ds.split, ~ds.split
    if tr.sum() == 0 or te.sum() == 0:
        raise UserError("the probe needs both a train and a held-out split; add images")
    y = ds.labels.astype(np.int32)
    c = len(ds.classes)
    out = {}
    for m in methods:
        if m == "knn":
            pooled = tokens.astype(np.float32).mean(axis=1)
            pred = knn(pooled[tr], y[tr], pooled[te], classes=c)
        elif m == "linear":
            model = _fit(
                LinearProbe(tokens.shape[-1], c),
                tokens[tr],
                y[tr],
                epochs,
                1e-2,
                1e-4,
                64,
                seed,
                f"{name} linear".strip(),
                progress,
            )
            pred = _predict(model, tokens[te])
        elif m == "attentive":
            model = _fit(
                AttentiveProbe(tokens.shape[-1], c),
                tokens[tr],
                y[tr],
                epochs,
                1e-3,
                0.05,
                64,
                seed,
                f"{name} attentive".strip(),
                progress,
            )
            pred = _predict(model, tokens[te])
        else:
            raise UserError(f"unknown probe '{m}'; use {', '.join(METHODS)}")
        out[m] = round(float((pred == y[te]).mean() * 100), 2)
    return out


def probe_all(
    model,
    sets: dict,
    cache_dir: Optional[Path] = None,
    methods=METHODS,
    epochs: int = 30,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """{task: {method: top-1 %}}; features computed once for the union of the tasks' images."""
    files = list(dict.fromkeys(f for ds in sets.values() for f in ds.files))
    tokens = features(model, files, cache_dir, progress=progress)
    index = {f: i for i, f in enumerate(files)}
    return {
        t: run_probes(tokens[[index[f] for f in ds.files]], ds, methods, epochs, seed, progress, t)
        for t, ds in sets.items()
    }
