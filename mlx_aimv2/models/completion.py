"""The AIMv2 image objective made visible: given the first K patches of an image (prefix attention,
as in pre-training), the decoder predicts each following patch from the ones before it.

Targets are patches normalised by their own mean and variance (losses.normalize_patches), so a
prediction says a patch's pattern, not its brightness: to show it, each predicted patch gets the
true patch's mean and spread back.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from .decoder import AIMv2PreTrainer
from .losses import normalize_patches, patchify


def next_patches(model: AIMv2PreTrainer, pixels: mx.array, prefix: int) -> dict:
    """pixels (1, H, W, C), normalised as in training; prefix in [1, N-1]. Returns numpy:
    "predicted" (N, p*p*C): patches 0..K-1 as they are, K.. from the decoder, in the image's own
    scale; "error" (N,): each predicted patch's MSE against its normalised target (0 in the prefix);
    "mse": their mean over the predicted patches, what the image loss scores for this prefix."""
    p = model.patch
    tokens = model.encoder(pixels, mx.array([prefix]))
    pred, _ = model.decoder(tokens, None)
    patches = patchify(pixels, p)[0].astype(mx.float32)  # (N, D)
    target = normalize_patches(patches)
    guess = pred[0, :-1].astype(mx.float32)  # output j predicts patch j + 1
    err = ((guess - target[1:]) ** 2).mean(axis=-1)
    mean = patches.mean(axis=-1, keepdims=True)
    std = mx.sqrt(mx.var(patches, axis=-1, keepdims=True, ddof=1) + 1e-6)
    shown = mx.concatenate([patches[:1], guess * std[1:] + mean[1:]])
    keep = (mx.arange(patches.shape[0]) < prefix)[:, None]
    predicted = mx.where(keep, patches, shown)
    error = mx.concatenate([mx.zeros((1,)), err]) * (mx.arange(patches.shape[0]) >= prefix)
    mse = err[prefix - 1 :].mean()
    mx.eval(predicted, error, mse)
    return {"predicted": np.array(predicted), "error": np.array(error), "mse": float(mse.item())}


def unpatchify(patches: np.ndarray, h: int, w: int, p: int, c: int = 3) -> np.ndarray:
    """(N, p*p*C) row-major patches -> (H, W, C)."""
    return patches.reshape(h // p, w // p, p, p, c).transpose(0, 2, 1, 3, 4).reshape(h, w, c)
