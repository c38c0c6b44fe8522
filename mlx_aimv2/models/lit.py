"""AIMv2-LiT: the image encoder with its attention-pool head, a causal text tower, projections."""

import math

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..config import ModelConfig, TextConfig
from .encoder import AIMv2VisionEncoder, AttentionPoolingClassifier
from .layers import Transformer
from .losses import clip_loss, sigmoid_loss


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
        return self.embed_tokens(self.image_encoder(pixels), normalize)

    def embed_tokens(self, tokens: mx.array, normalize: bool = True) -> mx.array:
        """The image encoder's tokens (B, N, D) -> the shared embedding: attention-pooled, projected."""
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


class LiTTuner(nn.Module):
    """LiT tuning: the image side starts from a frozen encoder's tokens (computed once, outside), and
    the attention-pool head, both projections, the text tower and the logit scale learn the
    contrastive loss. Names are AIMv2LiT's without `image_encoder.`, except the head (`head.*` there
    is `image_encoder.head.*`), so a tuned model drops into the published LiT layout."""

    def __init__(self, vision_width: int, vision_heads: int, config: ModelConfig, loss: str = "softmax"):
        super().__init__()
        self.config, self.loss = config, loss
        self.head = AttentionPoolingClassifier(vision_width, vision_heads, bias=True)
        self.text_encoder = AIMv2TextEncoder(config.text)
        self.image_projector = nn.Linear(vision_width, config.projection_dim, bias=False)
        self.text_projector = nn.Linear(config.text.hidden_size, config.projection_dim, bias=False)
        # SigLIP starts at scale 10, bias -10 (its paper); CLIP at 1 / init_temperature
        self.log_logit_scale = mx.array(math.log(10.0 if loss == "sigmoid" else 1 / config.init_temperature))
        if loss == "sigmoid":
            self.logit_bias = mx.array(-10.0)  # training only: a shift that no ranking or softmax sees
        # the learned queries start small and random, not at zero, so heads and positions differ from step 0
        self.head.cls_token = mx.random.normal(self.head.cls_token.shape) * 0.02
        pe = self.text_encoder.preprocessor.positional_embedding
        self.text_encoder.preprocessor.positional_embedding = mx.random.normal(pe.shape) * 0.01

    def logit_scale(self) -> mx.array:
        return mx.exp(mx.clip(self.log_logit_scale, 0.0, math.log(self.config.max_logit_scale)))

    def losses(self, tokens: mx.array, ids: mx.array, gather=lambda x: x) -> dict:
        """tokens (B, N, D) from the frozen encoder, ids (B, L). `gather`: every rank's rows in rank
        order, this rank's own keeping their gradient (data parallel; identity on one process)."""
        img = gather(_l2(self.image_projector(self.head(tokens))))
        txt = gather(_l2(self.text_projector(self.text_encoder(ids))))
        scale = self.logit_scale()
        if self.loss == "sigmoid":
            loss = sigmoid_loss(img, txt, scale, self.logit_bias)
        else:
            loss = clip_loss(img, txt, scale)
        hits = (mx.argmax(img @ txt.T, axis=1) == mx.arange(img.shape[0])).astype(mx.float32).mean()
        return {"loss": loss, "batch_top1": mx.stop_gradient(hits), "logit_scale": mx.stop_gradient(scale)}

    def load_from_lit(self, lit: "AIMv2LiT") -> None:
        """Start from a LiT model's own head, projections, text tower and logit scale."""
        mine = {k for k, _ in tree_flatten(self.parameters())}
        theirs = {
            k.removeprefix("image_encoder."): v
            for k, v in tree_flatten(lit.parameters())
            if not k.startswith("image_encoder.") or k.startswith("image_encoder.head.")
        }
        self.load_weights([(k, v) for k, v in theirs.items() if k in mine], strict=False)

    def lit_weights(self) -> dict:
        """This tuner's weights under AIMv2LiT's names (the frozen encoder's come separately)."""
        out = {}
        for k, v in tree_flatten(self.parameters()):
            if k == "logit_bias":
                continue
            out[f"image_encoder.{k}" if k.startswith("head.") else k] = v
        return out


def _l2(x: mx.array) -> mx.array:
    return x / mx.linalg.norm(x, axis=-1, keepdims=True)
