"""Ovis2's visual tokenizer (AIDC-AI, 2025; transformers' Ovis2VisionModel) on this package's AIMv2
encoder: what turns an image into the probabilistic visual tokens Ovis2's language model reads.

    tokens (n, g*g, d)  -> the hidden-stride merge: s x s neighbours side by side, (n, (g/s)^2, s*s*d),
                           the grid zero-padded first when g is not a multiple of s
    -> head_linear (no bias) onto V - 5 visual words -> head_norm (LayerNorm) -> softmax
    -> 5 zeros appended (the visual indicator tokens' rows of the table): (n, T, V)
    visual_embeddings(p) = p @ the visual embedding table (V, hidden): the language model's inputs
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ..config import VisionConfig
from .encoder import AIMv2VisionEncoder

INDICATORS = 5  # <IMG_START>, <IMG_GRID>, <IMG_COL>, <IMG_ROW>, <IMG_END>: the table's last rows


class VisualTokenizer(nn.Module):
    def __init__(self, vision: VisionConfig, vocab_size: int, hidden_stride: int = 1):
        super().__init__()
        self.vocab_size, self.hidden_stride = vocab_size, hidden_stride
        self.encoder = AIMv2VisionEncoder(vision)
        d = vision.hidden_size * hidden_stride * hidden_stride
        self.head_linear = nn.Linear(d, vocab_size - INDICATORS, bias=False)
        self.head_norm = nn.LayerNorm(vocab_size - INDICATORS)

    def merge(self, tokens: mx.array) -> mx.array:
        """(n, g*g, d) -> (n, (g/s)^2, s*s*d): each s x s block of the token grid as one token."""
        s = self.hidden_stride
        if s == 1:
            return tokens
        n, length, d = tokens.shape
        g = int(round(length**0.5))
        if g * g != length:
            raise ValueError(f"{length} tokens are not a square grid")
        pad = (s - g % s) % s
        grid = tokens.reshape(n, g, g, d)
        if pad:
            grid = mx.pad(grid, [(0, 0), (0, pad), (0, pad), (0, 0)])
            g += pad
        grid = grid.reshape(n, g // s, s, g // s, s, d).transpose(0, 1, 3, 2, 4, 5)
        return grid.reshape(n, (g // s) ** 2, s * s * d)

    def __call__(self, pixels: mx.array) -> mx.array:
        """pixels (n, H, W, 3), normalised -> probabilistic visual tokens (n, T, vocab_size)."""
        logits = self.head_norm(self.head_linear(self.merge(self.encoder(pixels))))
        probs = mx.softmax(logits.astype(mx.float32), axis=-1).astype(logits.dtype)
        return mx.concatenate([probs, mx.zeros((*probs.shape[:-1], INDICATORS), probs.dtype)], axis=-1)


def visual_embeddings(probs: mx.array, table: mx.array) -> mx.array:
    """Probabilistic visual tokens (n, T, V) -> the language model's input embeddings (n, T, hidden)."""
    return probs @ table
