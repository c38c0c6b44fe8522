"""What an app calls first: `load(name_or_path)` -> the model class of the folder's kind.

import mlx_aimv2
model = mlx_aimv2.load("apple/aimv2-large-patch14-224")   # or a folder, a file, "demo"
emb = model.embed(["cat.jpg", pil_image])                 # (2, 1024) numpy, mean-pooled

load() gives an Encoder, a LiTModel (+ encode_text, classify) or an ImageClassifier (+ predict), all
AIMv2s (inference.py), or for an Ovis2 folder an Ovis2Chat (vlm/chat.py: generate, stream); every
call is safe from any thread.
"""

from __future__ import annotations

import logging
from typing import Optional

from . import cpu, hub, kinds
from .checkpoints.export import convert
from .errors import UserError
from .inference import AIMv2, Encoder, ImageClassifier, LiTModel, fill_template, open_model
from .vlm.extra import chat_class  # mlx-lm, only when an Ovis2 is loaded

__all__ = [
    "load",
    "load_aimv2",
    "load_default",
    "convert",
    "fill_template",
    "AIMv2",
    "Encoder",
    "LiTModel",
    "ImageClassifier",
]
log = logging.getLogger("mlx_aimv2")  # notes for the user; the CLI prints them, an app routes them


def load(
    name_or_path: str = hub.DEFAULT["vision"],
    revision: Optional[str] = None,
    dtype=None,
    keep_quantized: Optional[bool] = None,
    text_only: bool = False,
) -> AIMv2:
    """Load any AIMv2 checkpoint: a hub id or short name, a local folder / file, or "demo".

    Returns an Encoder, a LiTModel or an ImageClassifier, by what the folder holds (kinds.py), or an
    Ovis2Chat for an Ovis2 vision-language model (pip install 'mlx-aimv2[vlm]').
    On MLX's CPU backend the model gets cpu.py's kernels (the same numbers, faster), and a quantized
    checkpoint runs with its layers dequantized (MLX's CPU quantized matmul is ~60x slower; pass
    keep_quantized=True to keep them). On Metal, a model over 1 GiB has its weights wired
    (mx.set_wired_limit) while it computes, and the limit restored after each call, as mlx-lm does.
    Safe from any thread (owner.py).
    text_only: for a LiT model, read only what encode_text needs (and the patch embedding that
    fingerprints it): MLX loads lazily, so the image tower is never read; image methods then refuse."""
    cpu.warn_if_slow_blas()
    local = hub.resolve(str(name_or_path), revision)
    if kinds.is_ovis2(local):
        return chat_class()(local, dtype, None, keep_quantized)
    return open_model(name_or_path, revision, dtype, keep_quantized, text_only, local)


def load_aimv2(
    name_or_path: str = hub.DEFAULT["vision"],
    revision: Optional[str] = None,
    dtype=None,
    keep_quantized: Optional[bool] = None,
    text_only: bool = False,
) -> AIMv2:
    """load(), for what needs an AIMv2 model (embeddings, classify, an index, the probes): an Ovis2
    folder is refused in one line (checkpoints.load_checkpoint) instead of given as a chat model."""
    cpu.warn_if_slow_blas()
    return open_model(name_or_path, revision, dtype, keep_quantized, text_only)


def load_default(kind: str = "vision", revision: Optional[str] = None) -> tuple[AIMv2, str]:
    """(model, its name) for a command given no model: Apple's default of the kind (hub.DEFAULT) when
    the hub or its cache has it, else the bundled stand-in (hub.STAND_IN), with a note (logging)."""
    name = hub.DEFAULT[kind]
    try:
        return load_aimv2(name, revision), name
    except UserError as e:
        stand_in = hub.STAND_IN[kind]
        log.warning("%s", e)
        log.warning(
            "using the bundled %s checkpoint (%s) instead: it was trained on synthetic scenes of coloured "
            "shapes only, so its answers on real photos mean nothing",
            stand_in,
            hub.BUNDLED[stand_in],
        )
        return load_aimv2(stand_in), stand_in
