"""Captioning with a pre-training run's decoder, the part of AIMv2 the paper throws away, and its
next-patch completions (`complete`):

    import mlx_aimv2.caption as C
    captioner = C.load("runs/aimv2")                      # a pre-training run folder
    captioner(["scene.jpg", pil_image])                   # ["a small red circle at the top left", ...]

Greedy by default, beam search with beam=N; a KV cache makes each new token cost one position.
Safe from any thread, as every public call of the library (owner.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import mlx.core as mx
import numpy as np

from . import owner
from .errors import UserError
from .models.completion import next_patches, unpatchify
from .preprocess import ImageLike, decode_ahead
from .runs import load_captioner, load_pretrainer


class CaptionModel:
    def __init__(self, run: Path, max_tokens: int = 32):
        self.run = Path(run)
        self.captioner, self.tokenizer, self.preprocessor = owner.run(load_captioner, self.run, max_tokens)

    def ids(self, images: Sequence[ImageLike], beam: int = 1, cache: bool = True, batch_size: int = 8) -> list:
        """Each image's caption as token ids (the end token excluded)."""
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        return [ids for _, ids in self.iter_ids(items, beam, cache, batch_size)]

    def iter_ids(self, items, beam: int = 1, cache: bool = True, batch_size: int = 8, errors=None):
        """Yields (item, token ids) in input order; with an `errors` list, an unreadable image is
        appended there as (item, why) and the rest go on (as iter_embed does)."""
        if isinstance(beam, bool) or not isinstance(beam, int) or beam < 1:
            raise UserError(f"beam = {beam!r}: give a whole number >= 1 (1 is greedy)")
        pending = []
        for item, x in decode_ahead(self.preprocessor, items):
            if isinstance(x, Exception):
                if errors is None or not isinstance(x, UserError):
                    raise x
                errors.append((item, str(x)))
                continue
            pending.append((item, x))
            if len(pending) == batch_size:
                yield from zip([i for i, _ in pending], self._generate(np.stack([p for _, p in pending]), beam, cache))
                pending = []
        if pending:
            yield from zip([i for i, _ in pending], self._generate(np.stack([p for _, p in pending]), beam, cache))

    @owner.owned
    def _generate(self, pixels: np.ndarray, beam: int, cache: bool) -> list:
        return self.captioner.generate(mx.array(pixels), beam=beam, cache=cache)

    def __call__(self, images: Sequence[ImageLike], beam: int = 1, batch_size: int = 8) -> list[str]:
        return [self.tokenizer.decode(ids) for ids in self.ids(images, beam, batch_size=batch_size)]

    def iter_captions(self, items, beam: int = 1, batch_size: int = 8, errors=None):
        """Yields (item, caption) in input order; bad images go to `errors` (iter_ids)."""
        for item, ids in self.iter_ids(items, beam, batch_size=batch_size, errors=errors):
            yield item, self.tokenizer.decode(ids)


def load(run, max_tokens: int = 32) -> CaptionModel:
    return CaptionModel(Path(run), max_tokens)


@dataclass
class Completion:
    """The decoder's next-patch predictions after a prefix: pictures as 8-bit RGB, the error per patch."""

    real: np.ndarray  # (H, W, 3) uint8: the image as the model saw it
    filled: np.ndarray  # (H, W, 3) uint8: each patch as the decoder predicted it from the ones before
    error: np.ndarray  # (H/p, W/p): each patch's squared error
    mse: float  # over the predicted patches: the model's image loss for this prefix
    patches: int


def complete(run, image: ImageLike, prefix: int) -> Completion:
    """What AIMv2's image objective learns: the decoder's next patches after the first `prefix` ones of
    `image`, from a pre-training run (or a folder exported with its decoder)."""
    net, _, pre, cfg = owner.run(load_pretrainer, run, "image")
    size, p = cfg.image_size, net.patch
    n = (size // p) ** 2
    if prefix >= n:
        raise UserError(f"--prefix {prefix}: this model sees {n} patches; give 1 to {n - 1}")
    x = pre(image)
    result = owner.run(next_patches, net, mx.array(x[None]), prefix)
    mean, std = np.asarray(cfg.mean, np.float32), np.asarray(cfg.std, np.float32)

    def rgb(a):  # normalised pixels back to 8-bit RGB
        return (np.clip(a * std + mean, 0, 1) * 255).astype(np.uint8)

    filled = rgb(unpatchify(result["predicted"], size, size, p))
    return Completion(rgb(x), filled, result["error"].reshape(size // p, size // p), float(result["mse"]), n)
