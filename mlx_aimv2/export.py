"""Hand a model back to PyTorch: any checkpoint we load (float or quantized) or a training run, written
as a folder that transformers' `Aimv2VisionModel` / `Aimv2Model.from_pretrained` loads with no
missing or unexpected keys. Safetensors only; quantized layers are dequantized on the way out.

The key mapping is checkpoints.py's transformers table read backwards.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from .atomic import check_destination, write_folder
from .checkpoints import copy_files
from .config import ModelConfig
from .errors import UserError
from .quantize import dequantize

_BLOCK = {
    "norm_1.weight": "rms_norm1.weight",
    "norm_2.weight": "rms_norm2.weight",
    "attn.proj.weight": "attention.out_proj.weight",
    "mlp.fc1.weight": "ffn.gate_proj.weight",
    "mlp.fc3.weight": "ffn.up_proj.weight",
    "mlp.fc2.weight": "ffn.down_proj.weight",
}
_VISION = {
    "preprocessor.patchifier.proj.weight": "embeddings.patch_embed.weight",
    "preprocessor.patchifier.proj.bias": "embeddings.patch_embed.bias",
    "preprocessor.patchifier.norm.weight": "embeddings.rms_norm.weight",
    "preprocessor.pos_embed": "embeddings.position_embedding.weight",
    "trunk.post_trunk_norm.weight": "rms_norm.weight",
    "head.cls_token": "head.cls_token",
    "head.k.weight": "head.k_proj.weight",
    "head.v.weight": "head.v_proj.weight",
    "head.linear.weight": "head.output_proj.weight",
    "head.linear.bias": "head.output_proj.bias",
}
_TEXT = {
    "preprocessor.text_embedding.weight": "embeddings.token_embedding.weight",
    "preprocessor.positional_embedding": "embeddings.position_embedding.weight",
    "trunk.post_trunk_norm.weight": "rms_norm.weight",
}
_TOP = {
    "image_projector.weight": "visual_projection.weight",
    "text_projector.weight": "text_projection.weight",
    "log_logit_scale": "logit_scale",
}


def _tower(weights: dict, table: dict, out_prefix: str) -> dict:
    out = {}
    for key, v in weights.items():
        m = re.fullmatch(r"trunk\.blocks\.(\d+)\.(.*)", key)
        if m and m.group(2) == "attn.qkv.weight":
            q, k, vv = mx.split(v, 3, axis=0)
            for name, part in (("q_proj", q), ("k_proj", k), ("v_proj", vv)):
                out[f"{out_prefix}encoder.layers.{m.group(1)}.attention.{name}.weight"] = part
        elif m:
            out[f"{out_prefix}encoder.layers.{m.group(1)}.{_BLOCK[m.group(2)]}"] = v
        else:
            if key.endswith("patchifier.proj.weight"):
                v = v.transpose(0, 3, 1, 2)  # OHWI -> OIHW
            elif key == "preprocessor.pos_embed":
                v = v[0]
            out[out_prefix + table[key]] = v
    return out


def transformers_weights(module, config: ModelConfig) -> dict:
    """Our float module's parameters under transformers' names and layouts."""
    w = dict(tree_flatten(module.parameters()))
    if config.kind != "lit":
        return _tower(w, _VISION, "")
    out = _tower(
        {k[len("image_encoder.") :]: v for k, v in w.items() if k.startswith("image_encoder.")},
        _VISION,
        "vision_model.",
    )
    out.update(
        _tower(
            {k[len("text_encoder.") :]: v for k, v in w.items() if k.startswith("text_encoder.")}, _TEXT, "text_model."
        )
    )
    out.update({_TOP[k]: v for k, v in w.items() if k in _TOP})
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
    if config.kind != "lit":
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


def export_transformers(src: str, dst: Path, overwrite: bool = False) -> Path:
    """A checkpoint (any layout we read, quantized too) or a training run -> a transformers folder."""
    dst = check_destination(dst, overwrite)
    module, config, preprocessor, extra = _source(src)
    dequantize(module)
    weights = transformers_weights(module, config)
    dtype = {mx.float32: "float32", mx.bfloat16: "bfloat16", mx.float16: "float16"}.get(
        next(iter(weights.values())).dtype, "float32"
    )
    cfg = transformers_config(config, dtype)

    def write(tmp: Path):
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        (tmp / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
        copy_files(extra, tmp)

    return write_folder(dst, write, overwrite)


def _source(src: str):
    """(float or quantized module, config, preprocessor dict, extra files) of a run or a checkpoint."""
    from . import checkpoints
    from .train import checkpoint as run_checkpoints

    if run_checkpoints.latest(Path(src)) is not None:
        from .train import lit
        from .train.trainer import load_lit_run, load_run_encoder

        tuned = load_lit_run(Path(src))
        if tuned is not None:  # a LiT tuning run: the published LiT layout, built in memory
            frozen, tuner, name, files = tuned
            module, config = lit.lit_module(frozen, tuner, name)
            return module, config, lit.preprocessor_config(frozen), files
        enc, vision, pp, name = load_run_encoder(Path(src))
        return enc, ModelConfig(vision=vision, name=name), pp, []
    module, config, folder = checkpoints.load_checkpoint(src)
    f = folder / "preprocessor_config.json"
    pp = json.loads(f.read_text()) if f.is_file() else checkpoints.default_preprocessor(config)
    return module, config, pp, checkpoints.tokenizer_files(folder)
