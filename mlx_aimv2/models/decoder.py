"""The pre-training side: a causal multimodal decoder over [image tokens; BOS; text] and the
wrapper that runs encoder -> decoder -> losses. Apple never released decoder weights; this follows
the l3m recipe (width 1024, 12 blocks, 8 heads by default)."""

from __future__ import annotations

from typing import Optional

import mlx.core as mx
import mlx.nn as nn

from ..config import PRETRAINING_OBJECTIVES, DecoderConfig, VisionConfig
from .encoder import AIMv2VisionEncoder
from .layers import Transformer, in_one_piece
from .losses import image_loss, text_loss


class MultimodalDecoder(nn.Module):
    def __init__(self, c: DecoderConfig, enc_dim: int, patch: int, channels: int = 3):
        super().__init__()
        self.vision_proj = nn.Linear(enc_dim, c.width, bias=True)
        self.text_embedding = nn.Embedding(c.vocab_size, c.width)
        self.cls_token = mx.random.normal((1, 1, c.width)) * 0.02  # acts as BOS
        self.pos_embed = mx.random.normal((1, c.context_length + 1, c.width)) * 0.01
        self.trunk = Transformer(c.width, c.depth, c.num_heads, c.mlp_hidden)
        self.pixel_head = nn.Linear(c.width, patch * patch * channels, bias=False)
        self.text_head = nn.Linear(c.width, c.vocab_size, bias=False)

    def __call__(self, enc_tokens: Optional[mx.array], ids: Optional[mx.array]):
        """enc_tokens (B, N, D_enc) and/or ids (B, L) -> (pixel predictions (B, N, p*p*C), text logits (B, L+1, V))."""
        parts = []
        if enc_tokens is not None:
            parts.append(self.vision_proj(enc_tokens))
        if ids is not None:
            b = ids.shape[0]
            t = mx.concatenate(
                [mx.broadcast_to(self.cls_token, (b, 1, self.cls_token.shape[-1])), self.text_embedding(ids)], axis=1
            )
            parts.append(t + self.pos_embed[:, : t.shape[1]])
        x = mx.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        x = self.trunk(x, mask="causal")
        n = enc_tokens.shape[1] if enc_tokens is not None else 0
        pixels = self.pixel_head(x[:, :n]) if enc_tokens is not None else None
        logits = self.text_head(x[:, n:]) if ids is not None else None
        return pixels, logits


class AIMv2PreTrainer(nn.Module):
    """Encoder (prefix attention) + decoder + the two losses. `objective`: aimv2 | image | text."""

    # Replaced by cpu.use_kernels: per_stream(fn, *batch) computes a batch's forward; on MLX's CPU
    # backend cpu.per_stream spreads its samples over one stream per core. The losses stay whole.
    per_stream = staticmethod(in_one_piece)

    def __init__(
        self,
        enc: VisionConfig,
        dec: DecoderConfig,
        pad_id: int = 0,
        alpha: float = 0.4,
        objective: str = "aimv2",
        prefix_attention: bool = True,
    ):
        super().__init__()
        if objective not in PRETRAINING_OBJECTIVES:
            raise ValueError(f"objective must be one of {PRETRAINING_OBJECTIVES}")
        self.encoder = AIMv2VisionEncoder(enc)
        self.decoder = MultimodalDecoder(dec.resolved(enc), enc.hidden_size, enc.patch_size, enc.num_channels)
        self.patch, self.pad_id, self.alpha = enc.patch_size, pad_id, alpha
        self.objective, self.prefix_attention = objective, prefix_attention

    def losses(self, images: mx.array, ids: mx.array, prefix_len: mx.array, total=lambda c: c) -> dict:
        """images (B, H, W, C) normalised, ids (B, L), prefix_len (B,) in [1, N-1]. `total` turns this
        batch's counts of scored patches / tokens into the divisor (data parallel: all ranks' counts)."""
        use_img, use_txt = self.objective in ("aimv2", "image"), self.objective in ("aimv2", "text")
        prefix = prefix_len if self.prefix_attention else None
        pixels, logits = self.per_stream(self._forward, images, ids if use_txt else None, prefix)
        out = {}
        loss = mx.array(0.0)
        if use_img:
            out["loss_image"] = image_loss(pixels, images, prefix_len, self.patch, total)
            loss = loss + (self.alpha if use_txt else 1.0) * out["loss_image"]
        if use_txt:
            out["loss_text"] = text_loss(logits, ids, self.pad_id, total)
            loss = loss + out["loss_text"]
        out["loss"] = loss
        return out

    def _forward(self, images: mx.array, ids: Optional[mx.array], prefix_len: Optional[mx.array]) -> tuple:
        return self.decoder(self.encoder(images, prefix_len), ids)


def init_weights(model: nn.Module) -> None:
    """l3m's initialisation: xavier-uniform linears (and the patch conv viewed as a matrix), zero biases."""
    init = nn.init.glorot_uniform()
    for _, m in model.named_modules():
        if isinstance(m, nn.Linear):
            m.weight = init(m.weight)
            if "bias" in m:
                m.bias = mx.zeros_like(m.bias)
        elif isinstance(m, nn.Conv2d):
            o = m.weight.shape[0]
            m.weight = init(m.weight.reshape(o, -1)).reshape(m.weight.shape)
            m.bias = mx.zeros_like(m.bias)
    enc = model.encoder if "encoder" in model else model
    if "preprocessor" in enc and "pos_embed" in enc.preprocessor:
        enc.preprocessor.pos_embed = mx.random.normal(enc.preprocessor.pos_embed.shape) * 0.02
