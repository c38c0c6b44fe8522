"""AIMv2's two pre-training losses (l3m's RasterPixelLoss and LLMCrossEntropyLoss)."""

import mlx.core as mx
import mlx.nn as nn


def patchify(images: mx.array, p: int) -> mx.array:
    """(B, H, W, C) -> (B, N, p*p*C), patches in row-major order, each ordered (row, column, channel)."""
    b, h, w, c = images.shape
    x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def normalize_patches(t: mx.array, eps: float = 1e-6) -> mx.array:
    """Each patch by its own mean and (unbiased) variance."""
    mean = t.mean(axis=-1, keepdims=True)
    var = mx.var(t, axis=-1, keepdims=True, ddof=1)
    return (t - mean) / mx.sqrt(var + eps)


def _identity(c):
    return c


def image_loss(pred: mx.array, images: mx.array, prefix_len: mx.array, patch: int, total=_identity) -> mx.array:
    """Next-patch MSE: the output at patch j predicts patch j+1, counted only for targets past the prefix.
    `total` maps this batch's count of counted patches to the divisor (data parallel: the global count)."""
    target = normalize_patches(patchify(images, patch))[:, 1:]
    mse = ((pred[:, :-1].astype(mx.float32) - target) ** 2).mean(axis=-1)  # (B, N-1)
    j = mx.arange(1, target.shape[1] + 1)
    m = (j[None] >= prefix_len[:, None]).astype(mx.float32)
    return (mse * m).sum() / mx.maximum(total(mx.stop_gradient(m.sum())), 1.0)


def text_loss(logits: mx.array, ids: mx.array, pad_id: int, total=_identity) -> mx.array:
    """Cross-entropy over non-pad tokens; logits[:, t] (BOS at t=0) predicts ids[:, t]."""
    logits = logits[:, : ids.shape[1]].astype(mx.float32)
    ce = nn.losses.cross_entropy(logits, ids, reduction="none")
    m = (ids != pad_id).astype(mx.float32)
    return (ce * m).sum() / mx.maximum(total(mx.stop_gradient(m.sum())), 1.0)


def clip_loss(img: mx.array, txt: mx.array, scale: mx.array) -> mx.array:
    """CLIP's symmetric contrastive loss: image i's caption is text i among the batch's texts, and back.
    img, txt: (B, D) L2-normalised; scale: the logit scale (not its log)."""
    logits = scale * img @ txt.T
    labels = mx.arange(img.shape[0])
    return 0.5 * (nn.losses.cross_entropy(logits, labels).mean() + nn.losses.cross_entropy(logits.T, labels).mean())


def sigmoid_loss(img: mx.array, txt: mx.array, scale: mx.array, bias: mx.array) -> mx.array:
    """SigLIP's pairwise loss: every (image, text) pair is a binary match / no-match, summed per image."""
    logits = scale * img @ txt.T + bias
    sign = 2.0 * mx.eye(img.shape[0]) - 1.0
    return -nn.log_sigmoid(sign * logits).sum() / img.shape[0]
