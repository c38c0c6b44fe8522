"""Image-text retrieval: recall@k in both directions for a LiT model on a captioned set.

A hit is any item whose caption is the query's own caption word for word, so that scenes with
identical captions (frequent in small synthetic sets) count as the same answer, as COCO counts
any of an image's captions.
"""

from __future__ import annotations

from typing import Optional, Sequence

import mlx.core as mx
import numpy as np

from ..data import open_dataset
from ..data.stream import sample_image
from ..errors import UserError
from ..models.decoder import init_weights
from ..models.lit import LiTTuner


def recall_at_k(sim: np.ndarray, captions: Sequence[str], ks=(1, 5)) -> dict:
    """sim (n, n): image i against caption j, pair i = (image i, caption i).
    Returns {"i2t@k", "t2i@k"} as percentages, plus "chance@k" (the expected recall of a random ranking)."""
    caps = np.asarray(captions, dtype=object)
    same = caps[:, None] == caps[None, :]  # (n, n): caption i equals caption j
    out = {}
    for k in ks:
        top_t = np.argsort(-sim, axis=1, kind="stable")[:, :k]  # texts for each image
        top_i = np.argsort(-sim.T, axis=1, kind="stable")[:, :k]  # images for each text
        rows = np.arange(len(caps))[:, None]
        out[f"i2t@{k}"] = round(100 * same[rows, top_t].any(axis=1).mean(), 2)
        out[f"t2i@{k}"] = round(100 * same[rows, top_i].any(axis=1).mean(), 2)
        out[f"chance@{k}"] = round(100 * _chance(same.sum(axis=1), len(caps), k).mean(), 2)
    return out


def _chance(m: np.ndarray, n: int, k: int) -> np.ndarray:
    """P(at least one of m right answers among k drawn without replacement from n)."""
    miss = np.ones(len(m))
    for j in range(k):
        miss *= np.clip((n - m - j) / (n - j), 0, 1)
    return 1 - miss


def evaluate(model, data: str, limit: Optional[int] = None, batch_size: int = 32, ks=(1, 5)) -> dict:
    """Recall@k of a LiT model (api.AIMv2) on a captions file / folder (the trainer's formats)."""

    samples = open_dataset(data).samples[:limit]
    if len(samples) < 2:
        raise UserError(f"{data}: retrieval needs at least 2 captioned images")
    images, captions = [], []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i : i + batch_size]
        images.append(model.encode_image([sample_image(s) for s in chunk]))
        captions += [s.caption for s in chunk]
    texts = np.concatenate(
        [model.encode_text(captions[i : i + batch_size]) for i in range(0, len(captions), batch_size)]
    )
    sim = np.concatenate(images) @ texts.T
    return {"n": len(samples), "distinct_captions": len(set(captions)), **recall_at_k(sim, captions, ks)}


def randomize_text_side(model, seed: int = 0) -> None:
    """The floor: the same frozen encoder with a freshly initialised head, projections and text tower."""

    m, c = model.module, model.config
    mx.random.seed(seed)
    fresh = LiTTuner(c.vision.hidden_size, c.vision.num_heads, c)
    init_weights(fresh)
    m.load_weights(list(fresh.lit_weights().items()), strict=False)
    mx.eval(m.parameters())
