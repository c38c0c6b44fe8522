"""Quantized encoders: MLX's own quantized linear layers (nn.quantize), applied to the transformer
blocks only, and the spec that config.json carries so a folder loads back as it was written.

What stays in float, and why (docs/quantization.md has the measurements): the patch embedding (a
conv, 0.2 % of AIMv2-L), norms and positions (tiny, and every token passes through them), the LiT
attention-pool head, projections and text embedding (under 2 % of the LiT model, and they shape the
embedding space directly). The blocks' qkv / proj / fc1 / fc2 / fc3 hold 99 % of the weights.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten

from .errors import UserError

# mode: (allowed bits, allowed group sizes); MLX's CPU, Metal and CUDA backends run all four
MODES = {
    "affine": ((2, 3, 4, 5, 6, 8), (32, 64, 128)),
    "mxfp4": ((4,), (32,)),
    "mxfp8": ((8,), (32,)),
    "nvfp4": ((4,), (16,)),
}


def spec(bits: int = 8, group_size: int = 64, mode: str = "affine") -> dict:
    """A checked quantization spec, as config.json stores it."""
    if mode not in MODES:
        raise UserError(f"--q-mode {mode}: use one of {', '.join(MODES)}")
    ok_bits, ok_groups = MODES[mode]
    if bits not in ok_bits:
        raise UserError(f"--q-bits {bits}: {mode} takes {' or '.join(map(str, ok_bits))} bits")
    if group_size not in ok_groups:
        raise UserError(f"--q-group-size {group_size}: {mode} takes groups of {' or '.join(map(str, ok_groups))}")
    return {"bits": bits, "group_size": group_size, "mode": mode}


def read_spec(d, where: str) -> dict:
    """The `quantization` entry of a config.json, checked."""
    if not isinstance(d, dict) or set(d) != {"bits", "group_size", "mode"}:
        raise UserError(f"{where}: 'quantization' must hold bits, group_size and mode; re-convert the checkpoint")
    try:
        return spec(d["bits"], d["group_size"], d["mode"])
    except UserError as e:
        raise UserError(f"{where}: 'quantization' is invalid ({e})") from None


def _in_blocks(path: str, module) -> bool:
    return isinstance(module, nn.Linear) and ".blocks." in f".{path}"


def quantize(model: nn.Module, s: dict) -> nn.Module:
    """Replace the blocks' linear layers of `model` (float weights) by quantized ones, in place. Every
    one of them is quantized or none: a group size that does not divide a layer's width is refused."""
    widths = sorted({m.weight.shape[1] for p, m in model.named_modules() if _in_blocks(p, m)})
    bad = [w for w in widths if w % s["group_size"]]
    if bad:
        fits = [g for g in MODES[s["mode"]][1] if all(w % g == 0 for w in widths)]
        raise UserError(
            f"--q-group-size {s['group_size']} does not divide this model's {bad[0]}-wide layers; "
            + (f"use {' or '.join(map(str, fits))}" if fits else f"no {s['mode']} group size fits")
        )
    nn.quantize(model, s["group_size"], s["bits"], mode=s["mode"], class_predicate=_in_blocks)
    return model


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, nn.QuantizedLinear) for _, m in model.named_modules())


def dequantize(model: nn.Module) -> nn.Module:
    """Back to float linear and embedding layers (the model's float dtype), in place: for export,
    fine-tuning and the CPU (an Ovis2's language model has its embedding quantized, as mlx-lm does)."""
    swaps = []
    for path, m in model.named_modules():
        if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            w = mx.dequantize(m.weight, m.scales, m.get("biases"), m.group_size, m.bits, mode=m.mode)
            w = w.astype(m.scales.dtype) if mx.issubdtype(m.scales.dtype, mx.floating) else w
            if isinstance(m, nn.QuantizedEmbedding):
                layer = nn.Embedding(*w.shape)
            else:
                layer = nn.Linear(w.shape[1], w.shape[0], bias="bias" in m)
                if "bias" in m:
                    layer.bias = m.bias
            layer.weight = w
            swaps.append((path, layer))
    if swaps:
        model.update_modules(tree_unflatten(swaps))
    return model


def is_quantized_weight(key: str, weights: dict) -> bool:
    """A packed (uint32) weight of a quantized layer: its scales sit beside it."""
    return key.endswith(".weight") and key[: -len("weight")] + "scales" in weights
