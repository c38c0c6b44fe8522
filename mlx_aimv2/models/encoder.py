"""The AIMv2 image encoder: patchify + RMSNorm, positions, a pre-norm ViT trunk, a final RMSNorm.

Input is NHWC (MLX's conv layout). With `prefix_len` the trunk uses the pre-training prefix
mask; without it attention is bidirectional, as at inference.
"""

import collections
from typing import Optional, Sequence

import mlx.core as mx
import mlx.nn as nn

from ..config import VisionConfig
from .layers import Transformer, causal_mask

POSITION_SHAPES = 8  # image shapes whose 2-D positions a native-resolution encoder keeps (cheap to remake)


def sincos_2d(h: int, w: int, dim: int) -> mx.array:
    """AIMv2-native positions (h*w, dim): [sin(col), cos(col), sin(row), cos(row)], each dim/4 wide.
    The column (x) half comes first: the MAE meshgrid convention the checkpoint was trained with."""
    q = dim // 4
    omega = 1.0 / (10000.0 ** (mx.arange(q, dtype=mx.float32) / q))
    rows = mx.repeat(mx.arange(h, dtype=mx.float32), w)
    cols = mx.tile(mx.arange(w, dtype=mx.float32), h)
    ec, er = cols[:, None] * omega[None], rows[:, None] * omega[None]
    return mx.concatenate([mx.sin(ec), mx.cos(ec), mx.sin(er), mx.cos(er)], axis=1)


def prefix_mask(prefix_len: mx.array, n: int) -> mx.array:
    """Boolean (B, 1, n, n): token i sees token j when j <= i or j < prefix_len[b]."""
    j = mx.arange(n)[None, None, :]
    return (causal_mask(n)[None] | (j < prefix_len[:, None, None]))[:, None]


class PatchEmbed(nn.Module):
    def __init__(self, c: VisionConfig):
        super().__init__()
        self.proj = nn.Conv2d(c.num_channels, c.hidden_size, c.patch_size, stride=c.patch_size, bias=True)
        self.norm = nn.RMSNorm(c.hidden_size, eps=c.eps)

    def __call__(self, x: mx.array) -> mx.array:
        x = self.proj(x)  # (B, h, w, D)
        b, h, w, d = x.shape
        return self.norm(x.reshape(b, h * w, d))


class ViTPreprocessor(nn.Module):
    def __init__(self, c: VisionConfig):
        super().__init__()
        self.patch_size = c.patch_size
        self.patchifier = PatchEmbed(c)
        if not c.native:
            self.pos_embed = mx.zeros((1, c.num_patches, c.hidden_size))
        self._sincos_cache = collections.OrderedDict()  # (h, w) -> positions, the POSITION_SHAPES latest

    def _positions(self, h: int, w: int, dim: int) -> mx.array:
        if "pos_embed" in self:
            n = self.pos_embed.shape[1]
            if h * w != n:
                raise ValueError(
                    f"this checkpoint has {n} learned positions; the image gives {h}x{w} "
                    f"patches. Resize to {int(n**0.5) * self.patch_size} px."
                )
            return self.pos_embed
        # a native model sees a new shape with nearly every photo: the cache is bounded, so a long-lived
        # process (an index of thousands of photos, a server) holds memory flat
        cache = self._sincos_cache
        if (h, w) in cache:
            cache.move_to_end((h, w))
        else:
            cache[(h, w)] = sincos_2d(h, w, dim)[None]
            while len(cache) > POSITION_SHAPES:
                cache.popitem(last=False)
        return cache[(h, w)]

    def __call__(self, x: mx.array) -> mx.array:
        _, hh, ww, _ = x.shape
        p = self.patch_size
        if hh % p or ww % p:
            raise ValueError(f"image size {hh}x{ww} is not a multiple of the patch size {p}")
        tokens = self.patchifier(x)
        return tokens + self._positions(hh // p, ww // p, tokens.shape[-1]).astype(tokens.dtype)


class AttentionPoolingClassifier(nn.Module):
    """LiT's pooling head: a learned query attends over the tokens (no query projection), then a linear."""

    sdpa = staticmethod(mx.fast.scaled_dot_product_attention)

    def __init__(self, dim: int, num_heads: int, bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.cls_token = mx.zeros((1, 1, dim))
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.linear = nn.Linear(dim, dim, bias=bias)

    def __call__(self, x: mx.array) -> mx.array:
        b, n, d = x.shape
        h, hd = self.num_heads, d // self.num_heads
        q = mx.broadcast_to(self.cls_token, (b, 1, d)).reshape(b, 1, h, hd).transpose(0, 2, 1, 3)
        k = self.k(x).reshape(b, n, h, hd).transpose(0, 2, 1, 3)
        v = self.v(x).reshape(b, n, h, hd).transpose(0, 2, 1, 3)
        o = self.sdpa(q, k, v, scale=hd**-0.5)
        return self.linear(o.transpose(0, 2, 1, 3).reshape(b, 1, d).mean(axis=1))


class AIMv2VisionEncoder(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        c = config
        self.preprocessor = ViTPreprocessor(c)
        self.trunk = Transformer(c.hidden_size, c.depth, c.num_heads, c.mlp_hidden, c.eps)
        if c.use_head:
            self.head = AttentionPoolingClassifier(c.hidden_size, c.num_heads, c.head_bias)

    def __call__(
        self, x: mx.array, prefix_len: Optional[mx.array] = None, output_layers: Optional[Sequence[int]] = None
    ):
        """x: (B, H, W, C) normalised pixels. Returns (B, N, D) tokens after the final norm,
        plus {block index: (B, N, D)} when `output_layers` is given (negative indices count back)."""
        x = self.preprocessor(x)
        mask = prefix_mask(prefix_len, x.shape[1]) if prefix_len is not None else None
        if output_layers is not None:
            output_layers = self.block_indices(output_layers)
        return self.trunk(x, mask, output_layers)

    def block_indices(self, layers: Sequence[int]) -> tuple:
        """Block indices (negative ones count back) made absolute; ValueError when one is out of range.
        Block k's output is before the final norm: transformers' hidden_states[k + 1]."""
        depth = len(self.trunk.blocks)
        bad = [i for i in layers if not -depth <= i < depth]
        if bad:
            raise ValueError(
                f"layer(s) {', '.join(map(str, bad))} out of range: this model has {depth} blocks "
                f"(0..{depth - 1}, or -1..-{depth} counting back)"
            )
        return tuple(i % depth for i in layers)

    def pool(self, tokens: mx.array) -> mx.array:
        """The pooled image embedding: the attention-pool head where there is one, else the mean."""
        return self.head(tokens) if "head" in self else tokens.mean(axis=1)
