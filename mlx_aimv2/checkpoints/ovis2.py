"""Ovis2 model folders (imported through vlm/extra.py: it needs mlx-lm): read in AIDC-AI's original remote-code layout (AIDC-AI/Ovis2-*, translated
as transformers' conversion does), transformers' (the `*-hf` folders) or ours, and written by
`convert` as ours: vlm.Ovis2's own tensor names in
safetensors, the transformers config.json with our format and kind recorded, the tokenizer and
processor files copied. `-q` quantizes the language model as mlx-lm does (every linear and embedding
layer whose width the group size divides) and the AIMv2 encoder as this package does (its blocks);
the visual head and the visual embedding table stay in float: they shape the visual tokens directly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.utils import quantize_model
from tokenizers import AddedToken, Tokenizer

from .. import cpu, kinds, modelcard
from ..atomic import check_destination, write_folder
from ..errors import UserError
from ..quantize import quantize, read_spec
from ..vlm.ovis2 import build
from .files import find_weights, read_weights
from .layouts import OVIS2_TABLE, OVIS2_TOWER, ovis2_weights
from .mlx_io import copy_files, drop_stale_weights, load_into, write_weights

# what an Ovis2 folder carries beside its weights, copied as they are
CARRIED = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
           "added_tokens.json", "chat_template.jinja", "chat_template.json", "preprocessor_config.json",
           "processor_config.json", "generation_config.json")  # fmt: skip


@dataclass
class Ovis2Folder:
    """An Ovis2 folder read once: its config as transformers' Ovis2Config reads it (an original one
    translated), which layout it is in, and its tokenizer (an original one's with the image tokens)."""

    path: Path
    config: dict
    layout: str  # OURS, ORIGINAL or TRANSFORMERS
    tokenizer: Optional[Tokenizer]  # None where the folder has none (weights alone: convert, a benchmark)


OURS, ORIGINAL, TRANSFORMERS = "ours", "original", "transformers"


def open_folder(folder: Path) -> Ovis2Folder:
    """The folder's config.json and tokenizer.json, read and checked, each fault in one line."""
    folder = Path(folder)
    try:
        cfg = json.loads((folder / "config.json").read_text())
        layout = _layout(folder, cfg)
        tok = tokenizer(folder, layout == ORIGINAL) if (folder / "tokenizer.json").is_file() else None
        if layout == ORIGINAL:  # its image tokens' ids are the ones added to its tokenizer
            needs_tokenizer(folder, tok)
            cfg = original_config(cfg, tok)
        for key in ("vision_config", "text_config", "image_token_id", "visual_indicator_token_ids"):
            cfg[key]
        cfg["vision_config"]["image_size"], cfg["text_config"]["hidden_size"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(
            f"{folder}: not an Ovis2 model folder (its config.json has no vision_config, text_config and image "
            f"tokens); give a folder of an Ovis2 model (AIDC-AI/Ovis2-*, or thisisiron/Ovis2-*-hf in "
            f"transformers' layout), or one `mlx-aimv2 convert` wrote"
        ) from None
    return Ovis2Folder(folder, cfg, layout, tok)


def _layout(folder: Path, cfg: dict) -> str:
    if kinds.is_original_ovis2(cfg):
        return ORIGINAL
    return OURS if kinds.model_kind(folder) == kinds.OVIS2 else TRANSFORMERS


def needs_tokenizer(folder: Path, tok) -> Tokenizer:
    if tok is None:
        raise UserError(f"{folder}: no tokenizer.json; an Ovis2 folder carries its language model's tokenizer")
    return tok


# -- AIDC-AI's original remote-code folders (AIDC-AI/Ovis2-*): their config, tensor names and tokenizer,
# translated as transformers' convert_ovis2_weights_to_hf.py does

IMAGE_TOKENS = ("<IMG_ATOM>", "<IMG_START>", "<IMG_GRID>", "<IMG_COL>", "<IMG_ROW>", "<IMG_END>")
ORIGINAL_NAMES = {"llm.model.": "model.language_model.", "llm.lm_head.": "lm_head.", "vte.weight": OVIS2_TABLE,
                  "visual_tokenizer.head.0.": OVIS2_TOWER + "head_linear.",
                  "visual_tokenizer.head.1.": OVIS2_TOWER + "head_norm.",
                  "visual_tokenizer.backbone.": OVIS2_TOWER + "transformer."}  # fmt: skip


def tokenizer(folder: Path, original: bool):
    """The folder's tokenizer; an original folder's gets Ovis2's image tokens added after its own
    (they are not in it: the remote code used negative ids), as transformers' conversion adds them."""
    try:
        tok = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
    except Exception as e:  # tokenizers raises a bare Exception for a file it cannot parse
        raise UserError(
            f"{Path(folder) / 'tokenizer.json'}: not a tokenizer it can read ({e}); copy it again"
        ) from None
    if original:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in IMAGE_TOKENS])
    return tok


def original_config(cfg: dict, tok) -> dict:
    """An original config.json (llm_config, visual_tokenizer_config with its AIMv2 backbone_config)
    as transformers' Ovis2Config."""
    vt, llm = cfg["visual_tokenizer_config"], cfg["llm_config"]
    backbone = vt["backbone_config"]
    vision = {k: backbone[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                       "image_size", "patch_size", "rms_norm_eps") if k in backbone}  # fmt: skip
    vision.update(hidden_stride=int(vt.get("hidden_stride", 1)), vocab_size=int(vt["vocab_size"]))
    ids = [tok.token_to_id(t) for t in IMAGE_TOKENS]
    return {"model_type": "ovis2", "vision_config": vision, "text_config": llm, "image_token_id": ids[0],
            "visual_indicator_token_ids": ids[1:], "tie_word_embeddings": bool(llm.get("tie_word_embeddings", True)),
            "converted_from": "AIDC-AI's original layout"}  # fmt: skip


def original_weights(w: dict) -> dict:
    """An original checkpoint's tensors under transformers' Ovis2 names (the tower's stay ml-aim's,
    which layouts.to_mlx reads)."""
    out = {}
    for key, v in w.items():
        for theirs, mine in ORIGINAL_NAMES.items():
            if key.startswith(theirs):
                out[mine + key[len(theirs) :]] = v
                break
        else:
            out[key] = v
    return out


def load_ovis2(folder: Ovis2Folder, dtype=None):
    """vlm.Ovis2 with its weights, from an Ovis2 folder in any layout. dtype: the source's own float
    type by default (bfloat16 for the published folders)."""
    cfg, where = folder.config, str(folder.path / "config.json")
    file = find_weights(folder.path)
    weights = read_weights(file)
    if folder.layout != OURS:
        tied = bool(cfg.get("tie_word_embeddings", cfg["text_config"].get("tie_word_embeddings", True)))
        weights = ovis2_weights(original_weights(weights) if folder.layout == ORIGINAL else weights, tied)
    model = build(cfg, weights, where)
    if folder.layout == OURS and cfg.get("quantization"):
        s = read_spec(cfg["quantization"], where)
        # the layers convert quantized are those whose scales the file holds (as mlx-lm's loader tells them)
        nn.quantize(model, s["group_size"], s["bits"], mode=s["mode"],
                    class_predicate=lambda p, m: hasattr(m, "to_quantized") and f"{p}.scales" in weights)  # fmt: skip
    load_into(model, weights, str(file), dtype)
    cpu.use_kernels(model.visual_tokenizer)  # the encoder's CPU kernels, as every AIMv2 model gets (same numbers)
    return model


def quantize_ovis2(model, spec: dict):
    """In place: the language model as mlx-lm quantizes (every linear and embedding layer whose width
    the group size divides), the encoder's blocks as this package does; the visual head and table stay."""
    quantize_model(model.language_model, {}, spec["group_size"], spec["bits"], mode=spec["mode"])
    quantize(model.visual_tokenizer.encoder, spec)
    return model


def convert_ovis2(src: Path, dst: Path, dtype=None, quantization: Optional[dict] = None, overwrite: bool = False,
                  max_shard_size: Optional[int] = None, command: Optional[str] = None,
                  repo: Optional[str] = None) -> Path:  # fmt: skip
    """An Ovis2 folder (either layout) -> ours, in `dtype` (default the source's), maybe quantized.
    repo: the hub id it was downloaded from, for the card's base_model."""
    dst = check_destination(dst, overwrite)
    folder = open_folder(src)
    model, cfg = load_ovis2(folder, dtype), folder.config
    if quantization is not None:
        if cfg.get("quantization"):
            raise UserError(f"{src}: already quantized; convert from the float folder it was made from")
        quantize_ovis2(model, quantization)
    weights = dict(tree_flatten(model.parameters()))
    floats = [v.dtype for v in weights.values() if mx.issubdtype(v.dtype, mx.floating)]
    config = {**cfg, "format": kinds.FORMAT, kinds.KIND_KEY: kinds.OVIS2,
              "torch_dtype": str(floats[0]).split(".")[-1] if floats else "float32"}  # fmt: skip
    config.pop("quantization", None)
    if quantization is not None:
        config["quantization"] = quantization
    original = folder.layout == ORIGINAL
    # an original folder's tokenizer is written with the image tokens it lacks (the rest as they are)
    carried = [Path(src) / n for n in CARRIED if (Path(src) / n).is_file() and not (original and n == "tokenizer.json")]
    written: list = []

    def write(tmp: Path):
        written.extend(write_weights(tmp, weights, {"format": "mlx"}, max_shard_size))
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        copy_files(carried, tmp)
        if original:
            folder.tokenizer.save(str(tmp / "tokenizer.json"))
        source = modelcard.provenance(repo, Path(src))
        modelcard.write_ovis2(tmp, config, source["base_model"], source["licence"], command)

    return write_folder(dst, write, overwrite, finish=lambda out: drop_stale_weights(out, written))
