"""The architecture from the tensors' shapes; a config.json adds only what shapes cannot tell (head
counts, eps, eos id), checked against them."""

from __future__ import annotations

import math
import re
from typing import Optional

import mlx.core as mx

from .. import kinds
from ..config import ModelConfig, TextConfig, VisionConfig
from ..errors import UserError
from ..quantize import is_quantized_weight


def _depth(weights: dict, prefix: str) -> int:
    idx = [int(m.group(1)) for k in weights if (m := re.match(re.escape(prefix) + r"trunk\.blocks\.(\d+)\.", k))]
    return max(idx) + 1 if idx else 0


def infer_config(weights: dict[str, mx.array], hints: Optional[dict] = None, where: str = "config.json") -> ModelConfig:
    """The architecture from tensor shapes (our layout); `hints` (a config.json) gives head counts etc.
    and must agree with the shapes."""
    hints = hints or {}
    odd = sorted(
        k
        for k, v in weights.items()
        if not mx.issubdtype(v.dtype, mx.floating) and not is_quantized_weight(k, weights) and not k.endswith(".scales")
    )
    if odd:
        raise UserError(
            f"{where.rsplit('/', 1)[0]}: tensor {odd[0]} is {str(weights[odd[0]].dtype).split('.')[-1]}; AIMv2 weights are "
            f"floating point - the file is damaged or not a model"
        )
    lit = any(k.startswith("image_encoder.") for k in weights)
    vp = "image_encoder." if lit else ""
    try:
        conv = weights[f"{vp}preprocessor.patchifier.proj.weight"]
        d, patch = conv.shape[0], conv.shape[1]
        pos = weights.get(f"{vp}preprocessor.pos_embed")
        mlp = weights[f"{vp}trunk.blocks.0.mlp.fc1.weight"].shape[0]
    except KeyError as e:
        raise UserError(f"checkpoint lacks the tensor {e.args[0]}; is it an AIMv2 encoder?") from None
    vh = _hints(hints, "vision", "vision_config", where)
    image_size = None
    if pos is not None:
        side = int(round(pos.shape[1] ** 0.5)) if pos.ndim == 3 else 0
        if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != d or side * side != pos.shape[1]:
            raise UserError(
                f"{where.rsplit('/', 1)[0]}: the position table has shape {tuple(pos.shape)}; it must be "
                f"(1, n*n, {d}) - the checkpoint is damaged"
            )
        image_size = side * patch
    vision = VisionConfig(
        hidden_size=d,
        depth=_depth(weights, vp),
        num_heads=vh.get("heads", max(d // 128, 1)),
        mlp_hidden=mlp,
        patch_size=patch,
        image_size=image_size,
        num_channels=conv.shape[-1],
        eps=vh.get("eps", 1e-5),
        use_head=f"{vp}head.cls_token" in weights,
        head_bias=f"{vp}head.linear.bias" in weights,
    )
    _check_against(vision, vh, where)
    if not lit:
        return ModelConfig(kind=kinds.VISION_MODEL, vision=vision)
    tp = "text_encoder."
    emb = weights[f"{tp}preprocessor.text_embedding.weight"]
    th = _hints(hints, "text", "text_config", where)
    text = TextConfig(
        vocab_size=emb.shape[0],
        hidden_size=emb.shape[1],
        depth=_depth(weights, tp),
        num_heads=th.get("heads", max(emb.shape[1] // 128, 1)),
        mlp_hidden=weights[f"{tp}trunk.blocks.0.mlp.fc1.weight"].shape[0],
        context_length=weights[f"{tp}preprocessor.positional_embedding"].shape[0],
        eos_token_id=th.get("eos", 49407),
        eps=th.get("eps", 1e-5),
    )
    _check_against(text, th, where)
    return ModelConfig(
        kind=kinds.LIT_MODEL,
        vision=vision,
        text=text,
        projection_dim=weights["image_projector.weight"].shape[0],
        max_logit_scale=float(hints.get("max_logit_scale", 100.0)),
    )


def _field(d: dict, key: str, kind, where: str, low=None):
    """d[key] checked: an int / float (not a bool) / bool, at least `low`; one clear line otherwise."""
    v = d[key]
    if kind is float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    else:
        ok = isinstance(v, kind) and (kind is bool or not isinstance(v, bool))
    if not ok or (low is not None and v < low):
        want = {int: "an integer", float: "a number", bool: "true or false"}[kind]
        raise UserError(f"{where}: '{key}' is {v!r}; it must be {want}" + (f" >= {low}" if low is not None else ""))
    return v


# config.json keys that the tensors also tell: (ours, transformers') -> VisionConfig / TextConfig field
_VISION_KEYS = [
    ("hidden_size", "hidden_size", "hidden_size"),
    ("depth", "num_hidden_layers", "depth"),
    ("mlp_hidden", "intermediate_size", "mlp_hidden"),
    ("patch_size", "patch_size", "patch_size"),
]
_TEXT_KEYS = [
    ("vocab_size", "vocab_size", "vocab_size"),
    ("hidden_size", "hidden_size", "hidden_size"),
    ("depth", "num_hidden_layers", "depth"),
    ("mlp_hidden", "intermediate_size", "mlp_hidden"),
]


def _section(h: dict, ours: str, theirs: str, where: str) -> tuple[dict, bool]:
    """The vision / text part of a config.json (ours or transformers'), and whether it is ours."""
    mine = h.get("format") == kinds.FORMAT
    sec = h.get(ours) if mine else (h.get(theirs) or (h if ours == "vision" else {}))
    if not isinstance(sec, dict) or (mine and not sec):
        raise UserError(f"{where}: '{ours if mine else theirs}' must be a table of keys; re-convert the checkpoint")
    return sec, mine


def _hints(h: dict, ours: str, theirs: str, where: str) -> dict:
    """Head count, eps (and eos) from a config.json, checked; plus the shape keys to compare."""
    sec, mine = _section(h, ours, theirs, where)
    names = {"heads": "num_heads" if mine else "num_attention_heads", "eps": "eps" if mine else "rms_norm_eps"}
    out = {}
    if names["heads"] in sec:
        out["heads"] = _field(sec, names["heads"], int, where, 1)
    if names["eps"] in sec:
        out["eps"] = _field(sec, names["eps"], float, where)
        if not 0 < out["eps"] < 1:
            raise UserError(f"{where}: '{names['eps']}' is {out['eps']}; it must lie between 0 and 1")
    if ours == "text" and sec.get("eos_token_id") is not None:
        out["eos"] = _field(sec, "eos_token_id", int, where, 0)
    keys = _VISION_KEYS if ours == "vision" else _TEXT_KEYS
    out["shape"] = {
        field: (key, _field(sec, key, int, where, 1))
        for mine_key, their_key, field in keys
        for key in [mine_key if mine else their_key]
        if key in sec
    }
    return out


def _check_against(cfg, hints: dict, where: str) -> None:
    """What config.json says about the architecture must be what the tensors hold."""
    for field, (key, said) in hints["shape"].items():
        if getattr(cfg, field) != said:
            raise UserError(
                f"{where}: '{key}' says {said} but the weights hold {getattr(cfg, field)}; "
                f"the checkpoint is incomplete or the config belongs to another model"
            )
    if cfg.num_heads < 1 or cfg.hidden_size % cfg.num_heads:
        raise UserError(f"{where}: {cfg.num_heads} heads do not divide the width {cfg.hidden_size}")
