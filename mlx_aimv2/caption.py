"""Captioning with a pre-training run's decoder, the part of AIMv2 the paper throws away:

    import mlx_aimv2.caption as C
    captioner = C.load("runs/aimv2")                      # a pre-training run folder
    captioner(["scene.jpg", pil_image])                   # ["a small red circle at the top left", ...]

Greedy by default, beam search with beam=N; a KV cache makes each new token cost one position.
Safe from any thread, as every public call of the library (owner.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import mlx.core as mx
import numpy as np

from . import owner
from .errors import UserError
from .preprocess import ImageLike, decode_ahead
from .train.runs import load_captioner


class CaptionModel:
    def __init__(self, run: Path, max_tokens: int = 32):
        self.run = Path(run)
        self.captioner, self.tokenizer, self.preprocessor = owner.run(load_captioner, self.run, max_tokens)

    def ids(self, images: Sequence[ImageLike], beam: int = 1, cache: bool = True, batch_size: int = 8) -> list:
        """Each image's caption as token ids (the end token excluded)."""
        if isinstance(beam, bool) or not isinstance(beam, int) or beam < 1:
            raise UserError(f"beam = {beam!r}: give a whole number >= 1 (1 is greedy)")
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        out, pending = [], []
        for _, x in decode_ahead(self.preprocessor, items):
            if isinstance(x, Exception):
                raise x
            pending.append(x)
            if len(pending) == batch_size:
                out += owner.run(self._generate, np.stack(pending), beam, cache)
                pending = []
        if pending:
            out += owner.run(self._generate, np.stack(pending), beam, cache)
        return out

    def _generate(self, pixels: np.ndarray, beam: int, cache: bool) -> list:
        return self.captioner.generate(mx.array(pixels), beam=beam, cache=cache)

    def __call__(self, images: Sequence[ImageLike], beam: int = 1, batch_size: int = 8) -> list[str]:
        return [self.tokenizer.decode(ids) for ids in self.ids(images, beam, batch_size=batch_size)]


def load(run, max_tokens: int = 32) -> CaptionModel:
    return CaptionModel(Path(run), max_tokens)
