"""Transformer parts shared by the image encoder, the LiT text tower and the pre-training decoder.

Attribute names mirror ml-aim's checkpoint keys (norm_1, attn.qkv, attn.proj, norm_2,
mlp.fc1/fc2/fc3, post_trunk_norm) so Apple's mlx_model.safetensors loads with strict=True.
The layers call MLX's own ops through two class attributes, `sdpa` and `act`: the one place where
cpu.use_kernels puts faster CPU kernels in their place.
"""

from typing import Optional

import mlx.core as mx
import mlx.nn as nn


def causal_mask(n: int) -> mx.array:
    """Boolean (n, n): position i attends to positions j <= i."""
    i = mx.arange(n)
    return i[:, None] >= i[None, :]


def in_one_piece(fn, *batch):
    """The models' `per_stream` seam as MLX's Metal and CUDA backends run it: fn on the whole batch.
    cpu.use_kernels puts cpu.per_stream in its place on the CPU."""
    return fn(*batch)


def on_current_stream(fn):
    """fn, always run on the stream that is the default now, also when mx.checkpoint recomputes it in
    the backward pass: MLX recomputes on the default stream of the thread taking the gradient, which
    would put both of cpu.per_stream's halves on one stream, one after the other."""
    stream = mx.default_stream(mx.default_device())

    def run(*args):
        with mx.stream(stream):
            return fn(*args)

    return run


class Attention(nn.Module):
    sdpa = staticmethod(mx.fast.scaled_dot_product_attention)

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def __call__(self, x: mx.array, mask=None) -> mx.array:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.transpose(2, 0, 3, 1, 4)
        o = self.sdpa(q, k, v, scale=self.scale, mask=mask)
        return self.proj(o.transpose(0, 2, 1, 3).reshape(b, n, d))


class SwiGLUFFN(nn.Module):
    """fc2(silu(fc1(x)) * fc3(x)): fc1 is the gate, fc3 the up projection."""

    act = staticmethod(nn.silu)

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, dim, bias=False)
        self.fc3 = nn.Linear(dim, hidden, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.fc2(self.act(self.fc1(x)) * self.fc3(x))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, eps: float = 1e-5):
        super().__init__()
        self.norm_1 = nn.RMSNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.norm_2 = nn.RMSNorm(dim, eps=eps)
        self.mlp = SwiGLUFFN(dim, mlp_hidden)

    def __call__(self, x: mx.array, mask=None) -> mx.array:
        x = x + self.attn(self.norm_1(x), mask)
        return x + self.mlp(self.norm_2(x))


class Transformer(nn.Module):
    """Pre-norm blocks and a final RMSNorm. `checkpoint` recomputes each block in the backward pass."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_hidden: int, eps: float = 1e-5):
        super().__init__()
        self.blocks = [Block(dim, num_heads, mlp_hidden, eps) for _ in range(depth)]
        self.post_trunk_norm = nn.RMSNorm(dim, eps=eps)
        self._checkpoint = False

    def set_checkpointing(self, on: bool) -> None:
        self._checkpoint = on

    def __call__(self, x: mx.array, mask=None, output_layers: Optional[tuple] = None):
        """Returns the normed final tokens, and with `output_layers` also {i: block i's output}
        (before the final norm, as ml-aim's output_features)."""
        features = {}
        for i, block in enumerate(self.blocks):
            if self._checkpoint:
                # nn.utils.checkpoint passes the parameters explicitly; mx.checkpoint would zero their grads
                x = nn.utils.checkpoint(block, on_current_stream(block))(x, mask)
            else:
                x = block(x, mask)
            if output_layers is not None and i in output_layers:
                features[i] = x
        x = self.post_trunk_norm(x)
        return (x, features) if output_layers is not None else x
