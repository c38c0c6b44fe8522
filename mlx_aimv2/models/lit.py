"""AIMv2-LiT: the image encoder with its attention-pool head, a causal text tower, projections."""
import math

import mlx.core as mx
import mlx.nn as nn

from ..config import ModelConfig, TextConfig
from .encoder import AIMv2VisionEncoder
from .layers import Transformer


class TextPreprocessor(nn.Module):
    def __init__(self, c: TextConfig):
        super().__init__()
        self.text_embedding = nn.Embedding(c.vocab_size, c.hidden_size)
        self.positional_embedding = mx.zeros((c.context_length, c.hidden_size))

    def __call__(self, ids: mx.array) -> mx.array:
        return self.text_embedding(ids) + self.positional_embedding[: ids.shape[1]]


class AIMv2TextEncoder(nn.Module):
    def __init__(self, c: TextConfig):
        super().__init__()
        self.config = c
        self.preprocessor = TextPreprocessor(c)
        self.trunk = Transformer(c.hidden_size, c.depth, c.num_heads, c.mlp_hidden, c.eps)

    def __call__(self, ids: mx.array) -> mx.array:
        """(B, L) token ids -> (B, D): the hidden state at the first end-of-text token."""
        x = self.trunk(self.preprocessor(ids), mask="causal")
        eos = mx.argmax((ids == self.config.eos_token_id).astype(mx.int32), axis=1)
        return mx.take_along_axis(x, eos[:, None, None], axis=1)[:, 0]


class AIMv2LiT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.image_encoder = AIMv2VisionEncoder(config.vision)
        self.text_encoder = AIMv2TextEncoder(config.text)
        self.image_projector = nn.Linear(config.vision.hidden_size, config.projection_dim, bias=False)
        self.text_projector = nn.Linear(config.text.hidden_size, config.projection_dim, bias=False)
        self.log_logit_scale = mx.array(math.log(1 / config.init_temperature))

    def encode_image(self, pixels: mx.array, normalize: bool = True) -> mx.array:
        tokens = self.image_encoder(pixels)
        e = self.image_projector(self.image_encoder.pool(tokens))
        return _l2(e) if normalize else e

    def encode_text(self, ids: mx.array, normalize: bool = True) -> mx.array:
        e = self.text_projector(self.text_encoder(ids))
        return _l2(e) if normalize else e

    def logit_scale(self) -> mx.array:
        return mx.exp(mx.clip(self.log_logit_scale, 0.0, math.log(self.config.max_logit_scale)))

    def __call__(self, pixels: mx.array, ids: mx.array) -> mx.array:
        """logits_per_image (B_img, B_text)."""
        return self.logit_scale() * self.encode_image(pixels) @ self.encode_text(ids).T


def _l2(x: mx.array) -> mx.array:
    return x / mx.linalg.norm(x, axis=-1, keepdims=True)
