"""LoRA: a frozen linear layer (float or quantized, QLoRA-style) plus a trainable low-rank update,
y = base(x) + (alpha / r) * x A B, as mlx-lm adapts LLMs. B starts at zero, so an adapted model
starts as exactly its base. `merge` folds the update into plain float layers for inference."""

from __future__ import annotations

import math
from typing import Sequence

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten


def linear_shape(layer: nn.Module) -> tuple[int, int]:
    """(out, in) of a float or quantized linear layer."""
    out, packed = layer.weight.shape
    if isinstance(layer, nn.QuantizedLinear):
        return out, packed * 32 // layer.bits
    return out, packed


def float_weight(layer: nn.Module) -> mx.array:
    """A float or quantized linear layer's (out, in) weight as float32."""
    if isinstance(layer, nn.QuantizedLinear):
        m = layer
        return mx.dequantize(m.weight, m.scales, m.get("biases"), m.group_size, m.bits, mode=m.mode).astype(mx.float32)
    return layer.weight.astype(mx.float32)


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Module, rank: int, alpha: float):
        super().__init__()
        out_dims, in_dims = linear_shape(base)
        if rank > min(in_dims, out_dims):
            raise ValueError(
                f"rank {rank} exceeds this {in_dims}->{out_dims} layer's smaller side {min(in_dims, out_dims)}"
            )
        self.base = base
        self.scale = alpha / rank
        bound = 1 / math.sqrt(in_dims)
        self.lora_a = mx.random.uniform(-bound, bound, (in_dims, rank))
        self.lora_b = mx.zeros((rank, out_dims))

    def __call__(self, x: mx.array) -> mx.array:
        y = self.base(x)
        z = (x @ self.lora_a.astype(x.dtype)) @ self.lora_b.astype(x.dtype)
        return y + (self.scale * z).astype(y.dtype)

    def fused(self) -> nn.Linear:
        """A plain float linear layer computing the same function."""
        out_dims, in_dims = linear_shape(self.base)
        layer = nn.Linear(in_dims, out_dims, bias="bias" in self.base)
        layer.weight = float_weight(self.base) + self.scale * (self.lora_a @ self.lora_b).T
        if "bias" in self.base:
            layer.bias = self.base.bias.astype(mx.float32)
        return layer


def block_linears(encoder: nn.Module, layers: int, targets: Sequence[str]) -> list[tuple[str, nn.Module]]:
    """(path, layer) of the targeted linear layers in the encoder's last `layers` blocks (0: all)."""
    blocks = encoder.trunk.blocks
    first = 0 if layers == 0 else max(0, len(blocks) - layers)
    found = []
    for i in range(first, len(blocks)):
        for path, m in blocks[i].named_modules():
            if path.split(".")[-1] in targets and isinstance(m, (nn.Linear, nn.QuantizedLinear)):
                found.append((f"trunk.blocks.{i}.{path}", m))
    return found


def add_lora(encoder: nn.Module, rank: int, alpha: float, layers: int, targets: Sequence[str]) -> int:
    """Freeze the encoder and wrap its targeted linear layers with trainable adapters, in place.
    Returns how many layers were adapted. ValueError when the rank exceeds a layer."""
    encoder.freeze()
    chosen = block_linears(encoder, layers, targets)
    encoder.update_modules(tree_unflatten([(p, LoRALinear(m, rank, alpha)) for p, m in chosen]))
    return len(chosen)


def merge(module: nn.Module) -> nn.Module:
    """Fold every adapter into a plain float linear layer, in place."""
    fused = [(p, m.fused()) for p, m in module.named_modules() if isinstance(m, LoRALinear)]
    if fused:
        module.update_modules(tree_unflatten(fused))
    return module


def adapter_weights(module: nn.Module) -> dict[str, mx.array]:
    """The adapters' own weights, by their path in `module`."""
    return {k: v for k, v in tree_flatten(module.parameters()) if k.split(".")[-1] in ("lora_a", "lora_b")}


def base_weights(module: nn.Module) -> dict[str, mx.array]:
    """The weights without the adapters, under the paths an unadapted module has."""
    return {
        k.replace(".base.", "."): v
        for k, v in tree_flatten(module.parameters())
        if k.split(".")[-1] not in ("lora_a", "lora_b")
    }


def merged_weights(module: nn.Module) -> dict[str, mx.array]:
    """`module`'s weights as a plain float module has them: each adapter folded into its layer and
    quantized layers dequantized, without changing `module`."""
    weights = dict(tree_flatten(module.parameters()))
    adapted = [(p, m) for p, m in module.named_modules() if isinstance(m, LoRALinear)]
    inside = {f"{p}.base" for p, _ in adapted}
    for path, m in adapted:
        for k in [k for k in weights if k.startswith(path + ".")]:
            del weights[k]
        fused = m.fused()
        weights.update({f"{path}.{k}": v for k, v in tree_flatten(fused.parameters())})
    for path, m in module.named_modules():
        if isinstance(m, nn.QuantizedLinear) and path not in inside:
            for k in ("weight", "scales", "biases"):
                weights.pop(f"{path}.{k}", None)
            weights[f"{path}.weight"] = float_weight(m)
    return weights


def count_parameters(module: nn.Module) -> int:
    """Weights as a float model has them: a quantized layer counts its out x in weights, not its
    packed words, scales and biases."""
    total = sum(v.size for _, v in tree_flatten(module.parameters()))
    for _, m in module.named_modules():
        if isinstance(m, nn.QuantizedLinear):
            out, inp = linear_shape(m)
            total += out * inp - sum(m[k].size for k in ("weight", "scales", "biases") if k in m)
    return total
