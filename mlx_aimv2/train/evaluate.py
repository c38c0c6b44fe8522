"""Evaluation while pre-training (`eval_every`): a quick k-NN probe of the encoder on a held-out
labelled set, so a user sees whether the encoder is learning while the losses fall.

The set is decoded once, at the training resolution, and kept in memory (at most LIMIT images);
each evaluation is one forward pass over it and a cosine k-NN (eval/probe.knn) on the mean-pooled
tokens, train split against held-out split."""

from __future__ import annotations

import time
from pathlib import Path

import mlx.core as mx
import numpy as np
from PIL import Image

from ..errors import UserError
from ..eval.probe import image_folder, knn, synthetic_attribute
from ..preprocess import load_image, to_rgb

LIMIT = 2000  # images kept for the probe: enough for a stable accuracy, small enough to run often


class KnnProbe:
    def __init__(self, folder: str, image_size: int, mean, std):
        root = Path(folder)
        if not root.is_dir():
            raise UserError(
                f"eval_data {folder}: no such folder; give a labelled folder (one subfolder per class) "
                f"or a synthetic set (mlx-aimv2 data synth)"
            )
        synthetic = (root / "captions.jsonl").is_file()
        ds = synthetic_attribute(root, "shape") if synthetic else image_folder(root)
        self.task = "shape of one-object scenes" if synthetic else f"{len(ds.classes)} classes"
        keep = np.random.default_rng(0).permutation(len(ds.files))[:LIMIT]
        images, labels, split, bad = [], [], [], 0
        for i in keep.tolist():
            try:
                img = to_rgb(load_image(ds.files[i])).resize((image_size, image_size), Image.BICUBIC)
            except Exception:
                bad += 1
                continue
            images.append(np.asarray(img, np.uint8))
            labels.append(ds.labels[i])
            split.append(ds.split[i])
        self.split, self.labels, self.classes = np.array(split, bool), np.array(labels), len(ds.classes)
        if self.split.sum() < 1 or (~self.split).sum() < 1:
            raise UserError(f"eval_data {folder}: the k-NN probe needs images in both its train and held-out split")
        self.images = np.stack(images)
        self.seconds = 0.0
        self.mean = mx.array(mean, dtype=mx.float32) * 255.0
        self.std = mx.array(std, dtype=mx.float32) * 255.0
        self.about = f"{folder} ({self.task}: {len(self.images)} images{f', {bad} unreadable skipped' if bad else ''})"

    def __call__(self, encoder) -> float:
        """Top-1 accuracy (%) of the k-NN probe on the encoder's mean-pooled tokens."""
        t = time.perf_counter()
        feats = []
        for i in range(0, len(self.images), 64):
            x = (mx.array(self.images[i : i + 64]).astype(mx.float32) - self.mean) / self.std
            feats.append(np.array(encoder(x, None).mean(axis=1).astype(mx.float32)))
        f = np.concatenate(feats)
        tr, te = self.split, ~self.split
        pred = knn(f[tr], self.labels[tr], f[te], classes=self.classes)
        self.seconds = time.perf_counter() - t
        return round(float((pred == self.labels[te]).mean() * 100), 2)
