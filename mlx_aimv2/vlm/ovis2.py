"""Ovis2 in MLX: the visual tokenizer's probabilistic visual tokens, embedded through the visual
embedding table, take the `<IMG_ATOM>` positions of the prompt; each visual indicator token
(`<IMG_START>`, `<IMG_GRID>`, `<IMG_COL>`, `<IMG_ROW>`, `<IMG_END>`) takes its row of that table;
every other position is the language model's own embedding. The language model is mlx-lm's Qwen2,
not written again here; its cache makes each new token cost one position.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models import qwen2
from mlx_lm.models.cache import make_prompt_cache

from ..checkpoints.configs import infer_config
from ..config import VisionConfig
from ..models.visual_tokenizer import INDICATORS, VisualTokenizer, visual_embeddings


class Ovis2(nn.Module):
    def __init__(self, vision: VisionConfig, visual_vocab: int, hidden_stride: int, text: dict, image_token_id: int,
                 indicator_ids: Sequence[int]):  # fmt: skip
        super().__init__()
        self.visual_tokenizer = VisualTokenizer(vision, visual_vocab, hidden_stride)
        self.language_model = qwen2.Model(qwen2.ModelArgs.from_dict({"model_type": "qwen2", **text}))
        self.visual_embeddings_table = mx.zeros((visual_vocab, text["hidden_size"]))
        self.image_token_id, self.indicator_ids = image_token_id, list(indicator_ids)

    def input_embeddings(self, ids: mx.array, pixels: Optional[mx.array] = None) -> mx.array:
        """ids (1, L) -> (1, L, hidden): the prompt's embeddings with the image's visual tokens in place."""
        h = self.language_model.model.embed_tokens(ids)
        where = np.array(ids[0])
        table = self.visual_embeddings_table
        if pixels is not None:
            atoms = np.nonzero(where == self.image_token_id)[0]
            feats = visual_embeddings(self.visual_tokenizer(pixels), table).reshape(-1, table.shape[1])
            if len(atoms) != feats.shape[0]:
                raise ValueError(f"the prompt holds {len(atoms)} image positions for {feats.shape[0]} visual tokens")
            h[0, mx.array(atoms)] = feats.astype(h.dtype)
        first = table.shape[0] - INDICATORS
        for i, token in enumerate(self.indicator_ids):
            at = np.nonzero(where == token)[0]
            if len(at):
                h[0, mx.array(at)] = mx.broadcast_to(table[first + i], (len(at), table.shape[1])).astype(h.dtype)
        return h

    def __call__(self, ids: mx.array, pixels: Optional[mx.array] = None, cache=None, last_only: bool = False):
        """The logits of every prompt position (the first step), or of the last alone: generation needs
        no more, and the head onto Qwen's 152k words costs about a quarter of a 300-token prefill's work."""
        lm = self.language_model
        hidden = lm.model(ids, cache, self.input_embeddings(ids, pixels))
        if last_only:
            hidden = hidden[:, -1:]
        return lm.model.embed_tokens.as_linear(hidden) if lm.args.tie_word_embeddings else lm.lm_head(hidden)

    def tokens(self, ids: mx.array, pixels: Optional[mx.array], max_tokens: int, eos: Sequence[int] = (),
               sampler: Optional[Callable[[mx.array], mx.array]] = None) -> Iterator[int]:  # fmt: skip
        """The new tokens, one at a time, up to an end token, with mlx-lm's cache: each next token
        by `sampler` (last-position logits (1, V) -> (1,) ids; default greedy)."""
        cache = make_prompt_cache(self.language_model)
        logits = self(ids, pixels, cache=cache, last_only=True)
        for _ in range(max_tokens):
            last = logits[:, -1].astype(mx.float32)
            token = int((mx.argmax(last, axis=-1) if sampler is None else sampler(last)).item())
            yield token
            if token in eos:
                return
            logits = self.language_model(mx.array([[token]]), cache=cache)


TEXT_ARGS = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "rms_norm_eps",
             "vocab_size", "num_key_value_heads", "rope_theta", "max_position_embeddings", "rope_scaling")  # fmt: skip


def build(cfg: dict, weights: dict, where: str) -> Ovis2:
    """An Ovis2 of a transformers Ovis2 config.json (weights not loaded): the encoder's architecture
    from its tensors' shapes, checked against vision_config as every AIMv2 checkpoint's is."""
    v, t = cfg["vision_config"], cfg["text_config"]
    tied = bool(cfg.get("tie_word_embeddings", t.get("tie_word_embeddings", True)))
    prefix = "visual_tokenizer.encoder."
    encoder = {k[len(prefix) :]: w for k, w in weights.items() if k.startswith(prefix)}
    vision = infer_config(encoder, {"vision_config": v}, where).vision
    text = {k: t[k] for k in TEXT_ARGS if t.get(k) is not None} | {"tie_word_embeddings": tied}
    # transformers 5 writes RoPE's settings as rope_parameters; mlx-lm reads rope_theta and rope_scaling
    rope = t.get("rope_parameters") or {}
    if "rope_theta" not in text and "rope_theta" in rope:
        text["rope_theta"] = rope["rope_theta"]
    if rope.get("rope_type", "default") != "default" and "rope_scaling" not in text:
        text["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    return Ovis2(vision, int(v["vocab_size"]), int(v.get("hidden_stride", 1)), text, int(cfg["image_token_id"]),
                 cfg["visual_indicator_token_ids"])  # fmt: skip
