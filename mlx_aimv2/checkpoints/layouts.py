"""Every foreign checkpoint layout onto ml-aim's key names (also our module names): ml-aim / the
legacy hub (conv OIHW), Apple's mlx_model.safetensors and our own files (conv OHWI), transformers
(split q/k/v, gate/up/down) and timm, each a table; `to_mlx` is the sanitize that applies them. The
transformers tables read backwards give the export, and PEFT's LoRA names the adapters'."""

from __future__ import annotations

import re
from typing import Optional

import mlx.core as mx
from mlx.utils import tree_flatten

from .. import kinds
from ..config import ModelConfig
from ..errors import UserError
from ..models import lora

# transformers-native names -> ours (ml-aim's), one table per part. Read both ways: to_mlx loads with
# them, export.py writes transformers' files with their inverse. A block's q/k/v projections are one
# fused qkv matrix here (HF_QKV), and LiT's towers sit under the prefixes of HF_TOWERS.
HF_BLOCK = {
    "rms_norm1.weight": "norm_1.weight",
    "rms_norm2.weight": "norm_2.weight",
    "attention.out_proj.weight": "attn.proj.weight",
    "ffn.gate_proj.weight": "mlp.fc1.weight",
    "ffn.up_proj.weight": "mlp.fc3.weight",
    "ffn.down_proj.weight": "mlp.fc2.weight",
}
HF_QKV = ("attention.q_proj.weight", "attention.k_proj.weight", "attention.v_proj.weight"), "attn.qkv.weight"
HF_VISION = {
    "embeddings.patch_embed.weight": "preprocessor.patchifier.proj.weight",
    "embeddings.patch_embed.bias": "preprocessor.patchifier.proj.bias",
    "embeddings.rms_norm.weight": "preprocessor.patchifier.norm.weight",
    "embeddings.position_embedding.weight": "preprocessor.pos_embed",
    "rms_norm.weight": "trunk.post_trunk_norm.weight",
    "head.k_proj.weight": "head.k.weight",
    "head.v_proj.weight": "head.v.weight",
    "head.output_proj.weight": "head.linear.weight",
    "head.output_proj.bias": "head.linear.bias",
    "head.cls_token": "head.cls_token",
}
HF_TEXT = {
    "embeddings.token_embedding.weight": "preprocessor.text_embedding.weight",
    "embeddings.position_embedding.weight": "preprocessor.positional_embedding",
    "rms_norm.weight": "trunk.post_trunk_norm.weight",
}
HF_TOP = {
    "visual_projection.weight": "image_projector.weight",
    "text_projection.weight": "text_projector.weight",
    "logit_scale": "log_logit_scale",
}
HF_TOWERS = {"vision_model.": ("image_encoder.", HF_VISION), "text_model.": ("text_encoder.", HF_TEXT)}
HF_LAYER = "encoder.layers.{}."  # transformers' block prefix; ours is trunk.blocks.{}.
_HF_LAYER_KEY = re.compile(re.escape(HF_LAYER).replace(r"\{\}", r"(\d+)") + "(.*)")  # HF_LAYER read back
_TIMM = [
    (r"patch_embed\.proj\.(weight|bias)", r"preprocessor.patchifier.proj.\1"),
    (r"patch_embed\.norm\.weight", "preprocessor.patchifier.norm.weight"),
    (r"pos_embed", "preprocessor.pos_embed"),
    (r"norm\.weight", "trunk.post_trunk_norm.weight"),
    (r"blocks\.(\d+)\.norm1\.weight", r"trunk.blocks.\1.norm_1.weight"),
    (r"blocks\.(\d+)\.norm2\.weight", r"trunk.blocks.\1.norm_2.weight"),
    (r"blocks\.(\d+)\.mlp\.fc1_g\.weight", r"trunk.blocks.\1.mlp.fc1.weight"),
    (r"blocks\.(\d+)\.mlp\.fc1_x\.weight", r"trunk.blocks.\1.mlp.fc3.weight"),
    (r"blocks\.(\d+)\.(attn\.qkv|attn\.proj|mlp\.fc2)\.weight", r"trunk.blocks.\1.\2.weight"),
]


def detect_layout(keys) -> str:
    """'ml-aim' (also Apple's MLX file and ours: the conv layout is told apart in to_mlx) |
    'transformers' | 'timm' | 'unknown'."""
    keys = set(keys)
    if any(k.endswith("preprocessor.patchifier.proj.weight") for k in keys):
        return "ml-aim"
    if any(k.endswith("embeddings.patch_embed.weight") for k in keys):
        return "transformers"
    if "patch_embed.proj.weight" in keys and any(k.startswith("blocks.") for k in keys):
        return "timm"
    return "unknown"


def _apply(table, key: str) -> Optional[str]:
    for pat, rep in table:
        if re.fullmatch(pat, key):
            return re.sub(pat, rep, key)
    return None


def _from_transformers(w: dict) -> dict:
    out, unmapped = {}, []
    qkv: dict[str, dict] = {}
    towers = [(src, dst, table) for src, (dst, table) in HF_TOWERS.items()] + [("", "", HF_VISION)]
    for key, v in w.items():
        if key in HF_TOP:
            out[HF_TOP[key]] = v.reshape(()) if key == "logit_scale" else v
            continue
        src, dst, table = next(t for t in towers if key.startswith(t[0]))
        rest = key[len(src) :]
        m = _HF_LAYER_KEY.fullmatch(rest)
        if m and m.group(2) in HF_QKV[0]:
            qkv.setdefault(f"{dst}trunk.blocks.{m.group(1)}.{HF_QKV[1]}", {})[m.group(2)] = v
        elif m and m.group(2) in HF_BLOCK:
            out[f"{dst}trunk.blocks.{m.group(1)}.{HF_BLOCK[m.group(2)]}"] = v
        elif not m and rest in table:
            new = dst + table[rest]
            out[new] = v[None] if new.endswith("preprocessor.pos_embed") and v.ndim == 2 else v
        else:
            unmapped.append(key)
    for key, parts in qkv.items():
        if set(parts) != set(HF_QKV[0]):
            raise UserError(f"checkpoint has an incomplete q/k/v set for {key}")
        out[key] = mx.concatenate([parts[name] for name in HF_QKV[0]], axis=0)
    for key in unmapped:  # keep them, so strict loading names them
        out[key] = w[key]
    return out


def to_mlx(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """Any supported layout -> our (ml-aim key, OHWI conv) layout. Idempotent."""
    layout = detect_layout(weights)
    if layout == "transformers":
        weights = _from_transformers(weights)
    elif layout == "timm":
        weights = {(_apply(_TIMM, k) or k): v for k, v in weights.items()}
    elif layout == "unknown":
        sample = ", ".join(sorted(weights)[:3])
        raise UserError(f"not an AIMv2 checkpoint: unrecognised keys ({sample}, ...)")
    weights = {k: v for k, v in weights.items() if not k.endswith("num_batches_tracked")}
    for key in [k for k in weights if k.endswith("patchifier.proj.weight")]:
        w = weights[key]
        if w.ndim == 4 and w.shape[1] in (1, 3) and w.shape[-1] not in (1, 3):  # OIHW -> OHWI
            weights[key] = w.transpose(0, 2, 3, 1)
    if "log_logit_scale" in weights:
        weights["log_logit_scale"] = weights["log_logit_scale"].reshape(())
    return weights


# -- backwards: our names onto transformers', for the export


def _inverse(table: dict) -> dict:
    return {ours: theirs for theirs, ours in table.items()}


def _tower(weights: dict, table: dict, out_prefix: str) -> dict:
    """One tower's weights (our names, without its prefix) under transformers' names and layouts."""
    block, names = _inverse(HF_BLOCK), _inverse(table)
    qkv_names, qkv = HF_QKV
    out = {}
    for key, v in weights.items():
        m = re.fullmatch(r"trunk\.blocks\.(\d+)\.(.*)", key)
        if m:
            layer = out_prefix + HF_LAYER.format(m.group(1))
            if m.group(2) == qkv:
                out.update({layer + name: part for name, part in zip(qkv_names, mx.split(v, 3, axis=0))})
            else:
                out[layer + block[m.group(2)]] = v
            continue
        if key.endswith("patchifier.proj.weight"):
            v = v.transpose(0, 3, 1, 2)  # OHWI -> OIHW
        elif key == "preprocessor.pos_embed":
            v = v[0]
        out[out_prefix + names[key]] = v
    return out


def transformers_weights(module, config: ModelConfig) -> dict:
    """Our float module's parameters under transformers' names and layouts."""
    w = dict(tree_flatten(module.parameters()))
    if not kinds.is_lit(config):
        return _tower(w, HF_VISION, "")
    out = {}
    for theirs, (ours, table) in HF_TOWERS.items():
        out.update(_tower({k[len(ours) :]: v for k, v in w.items() if k.startswith(ours)}, table, theirs))
    out.update({name: w[key] for name, key in HF_TOP.items()})
    return out


def _vision_config(c, dtype: str) -> dict:
    return {
        "architectures": ["Aimv2VisionModel"],
        "model_type": "aimv2_vision_model",
        "dtype": dtype,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.mlp_hidden,
        "num_hidden_layers": c.depth,
        "num_attention_heads": c.num_heads,
        "num_channels": c.num_channels,
        "patch_size": c.patch_size,
        "image_size": c.image_size or 224,
        "is_native": c.native,
        "use_head": c.use_head,
        "rms_norm_eps": c.eps,
        "qkv_bias": False,
        "mlp_bias": False,
        "hidden_act": "silu",
    }


def transformers_config(config: ModelConfig, dtype: str) -> dict:
    v = config.vision
    if v.use_head and not v.head_bias:
        raise UserError("transformers' AIMv2 pooling head always has an output bias; this model has none")
    if not kinds.is_lit(config):
        return _vision_config(v, dtype)
    t = config.text
    text = {
        "model_type": "aimv2_text_model",
        "vocab_size": t.vocab_size,
        "hidden_size": t.hidden_size,
        "intermediate_size": t.mlp_hidden,
        "num_hidden_layers": t.depth,
        "num_attention_heads": t.num_heads,
        "max_position_embeddings": t.context_length,
        "eos_token_id": t.eos_token_id,
        "rms_norm_eps": t.eps,
        "qkv_bias": False,
        "mlp_bias": False,
        "hidden_act": "silu",
    }
    vision = {k: val for k, val in _vision_config(v, dtype).items() if k not in ("architectures", "dtype")}
    return {
        "architectures": ["Aimv2Model"],
        "model_type": "aimv2",
        "dtype": dtype,
        "projection_dim": config.projection_dim,
        "max_logit_scale": config.max_logit_scale,
        "vision_config": vision,
        "text_config": text,
    }


# -- LoRA adapters as PEFT writes them ---------------------------------------------------------------

# our block's linear layers -> transformers' Aimv2 module names (HF_BLOCK's, without ".weight"); the
# fused qkv becomes q_proj / k_proj / v_proj, each with the same A and its third of B
_PEFT_MODULES = {"attn.proj": ["attention.out_proj"], "mlp.fc1": ["ffn.gate_proj"], "mlp.fc3": ["ffn.up_proj"],
                 "mlp.fc2": ["ffn.down_proj"], "attn.qkv": ["attention.q_proj", "attention.k_proj", "attention.v_proj"]}  # fmt: skip


def peft_adapter(module) -> tuple[dict, dict]:
    """(PEFT's adapter_model weights, its LoraConfig fields) for an encoder whose layers carry LoRA
    adapters: keys for transformers' Aimv2VisionModel, lora_A (r, in) and lora_B (out, r), the same
    update (alpha / r) x B A that this package's LoRALinear adds."""
    weights, names, rank, alpha = {}, [], None, None
    for path, m in module.named_modules():
        if not isinstance(m, lora.LoRALinear):
            continue
        block, _, layer = path.removeprefix("trunk.blocks.").partition(".")
        theirs = _PEFT_MODULES[layer]
        a, b = m.lora_a.T.astype(mx.float32), m.lora_b.T.astype(mx.float32)
        rank = a.shape[0]
        alpha = m.scale * rank
        for part, name in zip(mx.split(b, len(theirs), axis=0), theirs):
            full = HF_LAYER.format(block) + name
            weights[f"base_model.model.{full}.lora_A.weight"] = a
            weights[f"base_model.model.{full}.lora_B.weight"] = part
            names.append(full)
    if not weights:
        return {}, {}
    pattern = "|".join(re.escape(n) for n in sorted(names))
    config = {
        "peft_type": "LORA", "task_type": None, "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0,
        "target_modules": f"^({pattern})$", "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
        # what PEFT writes for a model of no task type, so that AutoPeftModel knows the base's class
        "auto_mapping": {"base_model_class": "Aimv2VisionModel", "parent_library": "transformers.models.aimv2.modeling_aimv2"},
    }  # fmt: skip
    return weights, config


# -- Ovis2 (transformers' layout): its visual tokenizer's AIMv2 tower is transformers' AIMv2 but for
# one name; its head and the visual embedding table are its own

OVIS2_TOWER = "model.vision_tower."
OVIS2_TABLE = "model.visual_embeddings_table.weight"


def ovis2_visual_tokenizer(w: dict) -> tuple[dict, mx.array]:
    """An Ovis2 checkpoint's tensors -> (the VisualTokenizer's weights in our names, the visual
    embedding table). The language model's tensors are left to mlx-lm."""
    ours = {}
    tower = {}
    for key, v in w.items():
        if not key.startswith(OVIS2_TOWER):
            continue
        rest = key[len(OVIS2_TOWER) :]
        if rest.startswith("transformer."):
            rest = rest[len("transformer.") :].replace("embeddings.patch_embedding.", "embeddings.patch_embed.")
            tower[rest] = v
        else:  # head_linear, head_norm
            ours[rest] = v
    if not tower or OVIS2_TABLE not in w:
        raise UserError("not an Ovis2 checkpoint in transformers' layout: no vision tower or visual embedding table")
    ours.update({f"encoder.{k}": v for k, v in to_mlx(tower).items()})
    return ours, w[OVIS2_TABLE]


OVIS2_LANGUAGE = {"model.language_model.": "language_model.model.", "lm_head.": "language_model.lm_head."}


def ovis2_weights(w: dict, tied: bool) -> dict:
    """An Ovis2 checkpoint in transformers' layout -> vlm.Ovis2's names: the visual tokenizer's (ours),
    the visual embedding table, and the language model's as mlx-lm's Qwen2 names them (its lm_head only
    when untied)."""
    tokenizer, table = ovis2_visual_tokenizer(w)
    out = {f"visual_tokenizer.{k}": v for k, v in tokenizer.items()}
    out["visual_embeddings_table"] = table
    for key, v in w.items():
        for theirs, mine in OVIS2_LANGUAGE.items():
            if key.startswith(theirs) and not (tied and theirs == "lm_head."):
                out[mine + key[len(theirs) :]] = v
    return out
