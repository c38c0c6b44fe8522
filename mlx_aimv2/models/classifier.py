"""An image classifier on an AIMv2 encoder: the attentive-pool head of the paper's probes (a learned
query attending over the last layer's tokens, then a linear layer), on a trainable or frozen trunk."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .layers import in_one_piece


class AttentiveHead(nn.Module):
    """A learned query attends over the tokens (with key/value projections), then a linear classifier."""

    def __init__(self, dim: int, classes: int, heads: int = 4):
        super().__init__()
        self.heads = heads if dim % heads == 0 else 1
        self.query = mx.random.normal((1, 1, dim)) * 0.02
        self.norm = nn.LayerNorm(dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, classes)

    def __call__(self, x):
        b, n, d = x.shape
        h, hd = self.heads, d // self.heads
        x = self.norm(x)
        q = mx.broadcast_to(self.query, (b, 1, d)).reshape(b, 1, h, hd).transpose(0, 2, 1, 3)
        k = self.k(x).reshape(b, n, h, hd).transpose(0, 2, 1, 3)
        v = self.v(x).reshape(b, n, h, hd).transpose(0, 2, 1, 3)
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=hd**-0.5)
        return self.head(o.transpose(0, 2, 1, 3).reshape(b, d))


class Classifier(nn.Module):
    """encoder (B, H, W, C) normalised pixels -> tokens -> head -> (B, classes) logits."""

    def __init__(self, encoder: nn.Module, classes: int):
        super().__init__()
        self.encoder = encoder
        self.classifier = AttentiveHead(encoder.config.hidden_size, classes)

    # Replaced by cpu.use_kernels, as on the pre-training model: per_stream(fn, *batch) computes a
    # training batch's forward; on MLX's CPU backend cpu.per_stream spreads it over the CPU streams.
    per_stream = staticmethod(in_one_piece)

    def __call__(self, x: mx.array) -> mx.array:
        return self.classifier(self.encoder(x))

    def training_logits(self, x: mx.array) -> mx.array:
        """The logits of a training batch, spread over the CPU streams where that applies."""
        return self.per_stream(lambda part: (self(part),), x)[0]
