"""name -> local files -> layout -> module: the walk `load()` takes, each step in its module."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import mlx.core as mx

from .. import finetuned, hub, kinds
from ..config import architecture_name
from ..errors import UserError
from ..models import build
from ..quantize import is_quantized_weight, quantize, read_spec
from .configs import infer_config
from .files import find_weights, read_config_json, read_weights
from .layouts import to_mlx
from .mlx_io import load_into


def load_checkpoint(name_or_path: str, revision: Optional[str] = None, dtype=None, local: Optional[Path] = None):
    """(module, config, folder) for any supported checkpoint, converted in memory. local: where
    hub.resolve already found it (a caller that looked first resolves the name once). An Ovis2 folder
    is refused in one line: every AIMv2-only path (embed, an index, export, training's init) walks here."""
    path = local or hub.resolve(str(name_or_path), revision)
    if kinds.is_ovis2(path):
        raise UserError(
            f"{name_or_path}: an Ovis2 vision-language model, not an AIMv2 encoder; ask it about images with "
            f"`mlx-aimv2 chat IMAGE QUESTION --model {name_or_path}` (or load() and serve it)"
        )
    file = find_weights(path)
    folder = file.parent
    weights = to_mlx(read_weights(file))
    hints = read_config_json(folder) or {}
    config = infer_config(weights, hints, str(folder / "config.json"))
    packed = any(is_quantized_weight(k, weights) for k in weights)
    if hints.get("format") == kinds.FORMAT and "quantization" in hints:
        config.quantization = read_spec(hints["quantization"], str(folder / "config.json"))
    elif packed:
        raise UserError(
            f"{file}: holds quantized weights but {folder / 'config.json'} does not say how they were "
            f"quantized; keep the config.json that convert -q wrote beside it"
        )
    given = hints.get("name") if hints.get("format") == kinds.FORMAT and isinstance(hints.get("name"), str) else None
    config.name = given or (str(name_or_path) if hub.is_hub_id(str(name_or_path)) else architecture_name(config))
    module = build(config)
    if config.quantization:
        quantize(module, config.quantization)  # the layers' shapes, before the weights go in
    load_into(module, weights, str(file), dtype)
    if not kinds.is_lit(config) and finetuned.apply_adapter(module, folder):  # LoRA kept beside the encoder
        mx.eval(module.parameters())
    return module, config, folder
