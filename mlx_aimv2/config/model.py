"""Model configurations (vision, text, LiT, decoder) and the named presets of every published AIMv2 checkpoint.

Configs are plain dataclasses; `to_dict` / `from_dict` round-trip through the
`config.json` that sits next to a converted checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional

from .. import kinds
from ..errors import UserError


def swiglu_hidden(dim: int) -> int:
    """l3m's GatedFFN rule: round int(2 * 4D / 3) up to a multiple of 256."""
    return int(math.ceil(int(2 * 4 * dim / 3) / 256) * 256)


def _from_dict(cls, d: dict, what: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise UserError(
            f"unknown {what} config key(s): {', '.join(sorted(unknown))}; valid keys are {', '.join(sorted(names))}"
        )
    return cls(**d)


@dataclass
class VisionConfig:
    hidden_size: int = 1024
    depth: int = 24
    num_heads: int = 8
    mlp_hidden: int = 2816
    patch_size: int = 14
    image_size: Optional[int] = 224  # None: native resolution (2D sin-cos positions)
    num_channels: int = 3
    eps: float = 1e-5
    use_head: bool = False  # LiT attention-pool head
    head_bias: bool = True

    @property
    def native(self) -> bool:
        return self.image_size is None

    @property
    def num_patches(self) -> int:
        if self.native:
            raise ValueError("a native-resolution model has no fixed patch count")
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "VisionConfig":
        return _from_dict(cls, d, "vision")


@dataclass
class TextConfig:
    vocab_size: int = 49408
    hidden_size: int = 768
    depth: int = 12
    num_heads: int = 6
    mlp_hidden: int = 2048
    context_length: int = 77
    eos_token_id: int = 49407
    eps: float = 1e-5

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TextConfig":
        return _from_dict(cls, d, "text")


@dataclass
class ModelConfig:
    """What a checkpoint folder's config.json describes: a vision encoder, or the LiT pair."""

    kind: str = kinds.VISION_MODEL  # kinds.VISION_MODEL | kinds.LIT_MODEL
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: Optional[TextConfig] = None
    projection_dim: int = 768
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0
    name: str = ""
    quantization: Optional[dict] = None  # {"bits", "group_size", "mode"} when the blocks are quantized

    def to_dict(self) -> dict:
        d = {"format": "mlx_aimv2", "kind": self.kind, "name": self.name, "vision": self.vision.to_dict()}
        if self.quantization:
            d["quantization"] = dict(self.quantization)
        if kinds.is_lit(self):
            d.update(
                text=self.text.to_dict(),
                projection_dim=self.projection_dim,
                init_temperature=self.init_temperature,
                max_logit_scale=self.max_logit_scale,
            )
        return d


# --- the pre-training decoder ---------------------------------------------------------------

PRETRAINING_OBJECTIVES = ("aimv2", "image", "text")  # which of the decoder's two losses train


@dataclass
class DecoderConfig:
    width: int = 1024
    depth: int = 12
    num_heads: int = 8
    mlp_hidden: Optional[int] = None  # default: the SwiGLU rule for `width`
    vocab_size: int = 32000
    context_length: int = 77
    ratio: Optional[float] = None  # size the decoder as this fraction of the encoder's parameters

    def resolved(self, enc: VisionConfig) -> "DecoderConfig":
        """Fill in width / mlp from `ratio` (depth and head size kept) and the SwiGLU rule."""
        c = dataclasses.replace(self)
        if c.ratio is not None:
            # blocks dominate both towers: params ~ depth * (4 w^2 + 3 w h(w)) ~ depth * 12 w^2.
            # Width in steps of 32 (heads of 64, or of 32 where 64 does not divide it) so that
            # small encoders still get distinct 1/2, 1/4, 1/8 decoders.
            w = enc.hidden_size * (c.ratio * enc.depth / c.depth) ** 0.5
            c.width = max(32, int(round(w / 32)) * 32)
            c.num_heads = c.width // 64 if c.width % 64 == 0 else c.width // 32
            c.mlp_hidden = None
        if c.mlp_hidden is None:
            c.mlp_hidden = swiglu_hidden(c.width)
        return c


# --- encoder sizes: the published ones and smaller ones to train here ----------------------

ENCODERS = {  # name: ((hidden, depth, heads), the decoder it gets by default in pre-training)
    "tiny": ((64, 2, 2), dict(width=64, depth=1, num_heads=2)),
    "small": ((128, 4, 2), dict(width=128, depth=2, num_heads=2, ratio=0.5)),
    "demo": ((192, 6, 3), dict(width=192, depth=3, num_heads=3, ratio=0.5)),
    "vit-s": ((384, 12, 6), dict(width=384, depth=6, num_heads=6, ratio=0.5)),
    "vit-b": ((768, 12, 6), dict(width=768, depth=6, num_heads=6, ratio=0.5)),
    "large": ((1024, 24, 8), {}),
    "huge": ((1536, 24, 12), {}),
    "1B": ((2048, 24, 16), {}),
    "3B": ((3072, 24, 24), {}),
}
PUBLISHED_SIZES = ("large", "huge", "1B", "3B")


def vision_preset(size: str, image_size: Optional[int] = 224, patch_size: int = 14) -> VisionConfig:
    (d, depth, h), _ = ENCODERS[size]
    return VisionConfig(
        hidden_size=d,
        depth=depth,
        num_heads=h,
        mlp_hidden=swiglu_hidden(d),
        patch_size=patch_size,
        image_size=image_size,
    )


# --- the published checkpoints -------------------------------------------------------------


def _published() -> dict[str, ModelConfig]:
    out = {}
    for size in PUBLISHED_SIZES:
        for res in (224, 336, 448):
            name = f"aimv2-{size}-patch14-{res}"
            out[name] = ModelConfig(vision=vision_preset(size, res), name=name)
    for res in (224, 336):
        name = f"aimv2-large-patch14-{res}-distilled"
        out[name] = ModelConfig(vision=vision_preset("large", res), name=name)
    out["aimv2-large-patch14-native"] = ModelConfig(
        vision=vision_preset("large", None), name="aimv2-large-patch14-native"
    )
    lit_vision = dataclasses.replace(vision_preset("large", 224), use_head=True)
    out["aimv2-large-patch14-224-lit"] = ModelConfig(
        kind=kinds.LIT_MODEL, vision=lit_vision, text=TextConfig(), name="aimv2-large-patch14-224-lit"
    )
    return out


PRESETS: dict[str, ModelConfig] = _published()


def architecture_name(c: ModelConfig) -> str:
    """The published name a config matches (e.g. aimv2-large-patch14-224), else its shape in words."""
    for name, p in PRESETS.items():
        if p.kind == c.kind and p.vision == c.vision and p.text == c.text and "distilled" not in name:
            return name
    v = c.vision
    res = v.image_size if v.image_size else "native"
    return f"aimv2{'-lit' if kinds.is_lit(c) else ''} {v.hidden_size}-wide {v.depth}-block patch{v.patch_size}-{res}"


def preset(name: str) -> ModelConfig:
    key = name.removeprefix("apple/")
    if key not in PRESETS:
        raise UserError(f"unknown model name '{name}'; known: {', '.join(PRESETS)} (or give a local folder / file)")
    return PRESETS[key]


# --- parameter counts without building anything --------------------------------------------


def _block_params(d: int, hidden: int) -> int:
    return 2 * d + 3 * d * d + d * d + 3 * d * hidden  # 2 norms, qkv, proj, fc1/fc2/fc3


def count_vision_params(c: VisionConfig, num_patches: Optional[int] = None) -> int:
    d = c.hidden_size
    n = 0
    n += d * c.num_channels * c.patch_size**2 + d + d  # conv weight, bias, patch norm
    if not c.native:
        n += (num_patches or c.num_patches) * d
    n += c.depth * _block_params(d, c.mlp_hidden) + d  # blocks + post-trunk norm
    if c.use_head:
        n += d + 2 * d * d + d * d + (d if c.head_bias else 0)
    return n


def count_params(c: ModelConfig) -> int:
    n = count_vision_params(c.vision)
    if kinds.is_lit(c):
        t = c.text
        n += t.vocab_size * t.hidden_size + t.context_length * t.hidden_size
        n += t.depth * _block_params(t.hidden_size, t.mlp_hidden) + t.hidden_size
        n += c.vision.hidden_size * c.projection_dim + t.hidden_size * c.projection_dim + 1
    return n


def block_linear_params(c: ModelConfig) -> int:
    """Weights in the transformer blocks' linear layers: what quantization packs."""
    n = c.vision.depth * (4 * c.vision.hidden_size**2 + 3 * c.vision.hidden_size * c.vision.mlp_hidden)
    if kinds.is_lit(c):
        t = c.text
        n += t.depth * (4 * t.hidden_size**2 + 3 * t.hidden_size * t.mlp_hidden)
    return n


def checkpoint_bytes(c: ModelConfig, float_bytes: int = 4, bits: Optional[int] = None, group_size: int = 64) -> int:
    """A converted checkpoint's size: everything in `float_bytes`, or with the blocks packed to `bits`
    (plus a scale and a bias of `float_bytes` each per group), as convert -q writes it."""
    total = count_params(c)
    if bits is None:
        return total * float_bytes
    blocks = block_linear_params(c)
    return (total - blocks) * float_bytes + blocks * bits // 8 + blocks // group_size * 2 * float_bytes
