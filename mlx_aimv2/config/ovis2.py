"""The published Ovis2 models' shapes (AIDC-AI's model cards and config.json files): each one's AIMv2
tower (a preset of model.py) and Qwen2.5 language model, and what their weights take in memory,
derived from the shapes: `mlx-aimv2 models` lists them, benchmarks/ovis2.py tables them."""

from __future__ import annotations

from dataclasses import dataclass

from .model import PRESETS, VisionConfig, count_vision_params

VISUAL_VOCAB, HIDDEN_STRIDE, INDICATORS = 65536, 2, 5


@dataclass(frozen=True)
class Qwen:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    mlp: int
    vocab: int
    tied: bool


QWEN = {
    "0.5B": Qwen(896, 24, 14, 2, 4864, 151936, True), "1.5B": Qwen(1536, 28, 12, 2, 8960, 151936, True),
    "3B": Qwen(2048, 36, 16, 2, 11008, 151936, True), "7B": Qwen(3584, 28, 28, 4, 18944, 152064, False),
    "14B": Qwen(5120, 48, 40, 8, 13824, 152064, False), "32B": Qwen(5120, 64, 40, 8, 27648, 152064, False),
}  # fmt: skip
OVIS2 = {  # published name -> (its AIMv2 tower, its Qwen2.5)
    "AIDC-AI/Ovis2-1B": ("aimv2-large-patch14-448", "0.5B"), "AIDC-AI/Ovis2-2B": ("aimv2-large-patch14-448", "1.5B"),
    "AIDC-AI/Ovis2-4B": ("aimv2-huge-patch14-448", "3B"), "AIDC-AI/Ovis2-8B": ("aimv2-huge-patch14-448", "7B"),
    "AIDC-AI/Ovis2-16B": ("aimv2-huge-patch14-448", "14B"), "AIDC-AI/Ovis2-34B": ("aimv2-1B-patch14-448", "32B"),
}  # fmt: skip


def language_params(q: Qwen) -> tuple[int, int]:
    """(all of a Qwen2's parameters, those in its linear layers and embedding: what mlx-lm quantizes)."""
    head_dim = q.hidden // q.heads
    attention = 2 * q.hidden * q.hidden + 2 * q.hidden * q.kv_heads * head_dim
    linear = q.layers * (attention + 3 * q.hidden * q.mlp) + (0 if q.tied else q.vocab * q.hidden)
    small = q.layers * (2 * q.hidden + q.hidden + 2 * q.kv_heads * head_dim) + q.hidden  # norms, q/k/v biases
    return linear + q.vocab * q.hidden + small, linear + q.vocab * q.hidden


def ovis2_params(tower: str, lm: str) -> tuple[int, int]:
    """(all of a published-shape Ovis2's parameters, those `convert -q` quantizes)."""
    return params_of(PRESETS[tower].vision, QWEN[lm])


def params_of(vision: VisionConfig, q: Qwen, visual_vocab: int = VISUAL_VOCAB, stride: int = HIDDEN_STRIDE):
    """(all of an Ovis2's parameters, those `convert -q` quantizes: the language model's linears and
    embedding, the tower's blocks). The visual head and the visual embedding table stay in float."""
    d = vision.hidden_size
    words = visual_vocab - INDICATORS
    head = d * stride * stride * words + 2 * words  # the head onto the visual words, and its LayerNorm
    lm_all, lm_quantized = language_params(q)
    total = count_vision_params(vision) + head + visual_vocab * q.hidden + lm_all
    blocks = vision.depth * (4 * d * d + 3 * d * vision.mlp_hidden)
    return total, lm_quantized + blocks


def ovis2_bytes(tower: str, lm: str, bits=None, group_size: int = 64, float_bytes: int = 2) -> float:
    """Its weights' bytes in bf16, or quantized to `bits` (a scale and a bias per group, in bf16)."""
    total, quantized = ovis2_params(tower, lm)
    if bits is None:
        return total * float_bytes
    return (total - quantized) * float_bytes + quantized * (bits / 8 + 2 * float_bytes / group_size)


def kv_cache_bytes(lm: str, tokens: int, float_bytes: int = 2) -> int:
    q = QWEN[lm]
    return 2 * q.layers * q.kv_heads * (q.hidden // q.heads) * float_bytes * tokens
