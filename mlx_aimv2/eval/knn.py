"""Evaluation while training (`eval_every`): while pre-training, a quick k-NN probe of the encoder on
a held-out labelled set, so a user sees whether the encoder is learning while the losses fall; while
fine-tuning, the classifier's top-1 accuracy on the held-out images.

The set is decoded once and kept in memory (at most LIMIT images); each evaluation is one forward
pass over it. Each evaluator returns {metric: value} for metrics.jsonl."""

from __future__ import annotations

import time
from pathlib import Path

import mlx.core as mx
import numpy as np
from PIL import Image

from ..data.sources import Sample, entries
from ..errors import UserError
from ..preprocess import Preprocessor, load_image, to_rgb
from .probe import image_folder, knn, synthetic_attribute

LIMIT = 2000  # images kept for the probe: enough for a stable accuracy, small enough to run often
MEMORY = 256 << 20  # and at most this many bytes of preprocessed held-out images


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
        self.about = f"k-NN top-1 on {folder} ({self.task}: {len(self.images)} images{f', {bad} unreadable skipped' if bad else ''})"

    def measure(self, model) -> dict:
        return {"knn_top1": self(model.encoder)}

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


class HeldOut:
    """A classifier's top-1 accuracy (%) on held-out images, preprocessed as inference does them
    (resize, centre crop): the number a user of the exported model will see."""

    def __init__(self, sources: list, classes: list, preprocessor: dict, image_size: int, about: str):
        pre = Preprocessor.from_config(preprocessor, None, "the encoder's preprocessor_config.json", image_size)
        index = {c: i for i, c in enumerate(classes)}
        samples = [e for e in entries(sources) if isinstance(e, Sample)]
        limit = min(LIMIT, MEMORY // (image_size * image_size * 3 * 2))  # float16 images
        keep = np.random.default_rng(0).permutation(len(samples))[:limit]
        images, labels, bad, unknown = [], [], 0, set()
        for i in sorted(keep.tolist()):
            s = samples[i]
            if s.caption not in index:
                unknown.add(s.caption)
                continue
            try:
                images.append(pre(s.path).astype(np.float16))
            except Exception:
                bad += 1
                continue
            labels.append(index[s.caption])
        if unknown:
            raise UserError(
                f"eval_data {about}: label(s) {', '.join(sorted(unknown)[:5])} are not among the training classes"
            )
        if not images:
            raise UserError(f"eval_data {about}: no readable held-out image")
        self.images, self.labels = np.stack(images), np.array(labels)
        self.seconds = 0.0
        self.about = f"held-out top-1 on {about}: {len(images)} images{f', {bad} unreadable skipped' if bad else ''}"

    def measure(self, model) -> dict:
        t = time.perf_counter()
        pred = []
        for i in range(0, len(self.images), 64):
            logits = model(mx.array(self.images[i : i + 64]).astype(mx.float32))
            pred.append(np.array(mx.argmax(logits, axis=-1)))
        self.seconds = time.perf_counter() - t
        return {"val_top1": round(float((np.concatenate(pred) == self.labels).mean() * 100), 2)}
