"""Ovis2 in MLX: the visual tokenizer's probabilistic visual tokens, embedded through the visual
embedding table, take the `<IMG_ATOM>` positions of the prompt; each visual indicator token
(`<IMG_START>`, `<IMG_GRID>`, `<IMG_COL>`, `<IMG_ROW>`, `<IMG_END>`) takes its row of that table;
every other position is the language model's own embedding. The language model is mlx-lm's Qwen2,
not written again here; its cache makes each new token cost one position.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models import qwen2
from mlx_lm.models.cache import make_prompt_cache

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

    def __call__(self, ids: mx.array, pixels: Optional[mx.array] = None, cache=None) -> mx.array:
        """The logits of every prompt position (the first step)."""
        return self.language_model(ids, cache=cache, input_embeddings=self.input_embeddings(ids, pixels))

    def greedy(
        self, ids: mx.array, pixels: Optional[mx.array], max_tokens: int, eos: Sequence[int] = ()
    ) -> Iterator[int]:
        """Greedy decoding with mlx-lm's cache: the new tokens, one at a time, up to an end token."""
        cache = make_prompt_cache(self.language_model)
        logits = self(ids, pixels, cache=cache)
        for _ in range(max_tokens):
            token = int(mx.argmax(logits[0, -1]).item())
            yield token
            if token in eos:
                return
            logits = self.language_model(mx.array([[token]]), cache=cache)
