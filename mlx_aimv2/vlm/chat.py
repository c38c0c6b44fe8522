"""Asking Ovis2 about an image: a folder in transformers' Ovis2 layout (config.json, the weights,
tokenizer.json) read into vlm.Ovis2, the chat template Ovis2 was tuned with, and greedy or sampled
decoding that streams its text. Every call runs its MLX work on the library's owner thread, so it
is safe from any thread like the rest of the package."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Optional, Sequence

import mlx.core as mx
import numpy as np
from tokenizers import Tokenizer

from .. import owner
from ..checkpoints.configs import infer_config
from ..checkpoints.files import find_weights, read_weights
from ..checkpoints.layouts import ovis2_weights
from ..checkpoints.mlx_io import load_into
from ..errors import UserError
from ..preprocess import ImageLike, load_image
from .ovis2 import Ovis2
from .processor import image_prompt, preprocess

SYSTEM = "You are a helpful assistant."
TEXT_ARGS = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "rms_norm_eps",
             "vocab_size", "num_key_value_heads", "rope_theta", "max_position_embeddings", "tie_word_embeddings")  # fmt: skip


def prompt(question: str, images: Sequence[tuple[int, int]], tokens_per_crop: int) -> str:
    """The chat template's text: one image prompt per image (its grid), then the question."""
    pictures = "".join(image_prompt(g, tokens_per_crop) + "\n" for g in images)
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{pictures}{question}<|im_end|>\n"
            f"<|im_start|>assistant\n")  # fmt: skip


class Ovis2Chat:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        try:
            cfg = json.loads((self.folder / "config.json").read_text())
            v, t = cfg["vision_config"], cfg["text_config"]
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(
                f"{self.folder}: not an Ovis2 model folder (its config.json has no vision_config and text_config); "
                f"give a folder of AIDC-AI/Ovis2-* in transformers' layout"
            ) from None
        if not (self.folder / "tokenizer.json").is_file():
            raise UserError(f"{self.folder}: no tokenizer.json; an Ovis2 folder carries its language model's tokenizer")
        self.side, self.stride = int(v["image_size"]), int(v.get("hidden_stride", 1))
        self.tokens_per_crop = (self.side // int(v["patch_size"]) // self.stride) ** 2
        pp = self.folder / "preprocessor_config.json"  # the processor's tile limit, where the folder has one
        self.max_tiles = int(json.loads(pp.read_text()).get("max_patches", 12)) if pp.is_file() else 12
        self.tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        self.eos = [
            i
            for i in (self.tokenizer.token_to_id("<|im_end|>"), self.tokenizer.token_to_id("<|endoftext|>"))
            if i is not None
        ]
        self.model = owner.run(self._build, cfg, v, t)

    def _build(self, cfg: dict, v: dict, t: dict) -> Ovis2:
        tied = bool(cfg.get("tie_word_embeddings", t.get("tie_word_embeddings", True)))
        weights = ovis2_weights(read_weights(find_weights(self.folder)), tied)
        # the encoder's architecture from its tensors' shapes, checked against config.json's vision_config,
        # as every AIMv2 checkpoint's is
        encoder = {
            k[len("visual_tokenizer.encoder.") :]: w
            for k, w in weights.items()
            if k.startswith("visual_tokenizer.encoder.")
        }
        vision = infer_config(encoder, {"vision_config": v}, str(self.folder / "config.json")).vision
        text = {k: t[k] for k in TEXT_ARGS if k in t} | {"tie_word_embeddings": tied}
        model = Ovis2(vision, int(v["vocab_size"]), self.stride, text, int(cfg["image_token_id"]),
                      cfg["visual_indicator_token_ids"])  # fmt: skip
        load_into(model, weights, str(self.folder), dtype=mx.float32)
        return model

    def prompt_ids(self, question: str, images: Sequence[ImageLike]) -> tuple[list, Optional[np.ndarray]]:
        """The prompt's token ids and the images' crops (thumbnail and tiles, in the prompt's order)."""
        crops, grids = [], []
        for image in images:
            c, g = preprocess(load_image(image), self.side, self.max_tiles)
            crops.append(c)
            grids.append(g)
        ids = self.tokenizer.encode(prompt(question, grids, self.tokens_per_crop), add_special_tokens=False).ids
        return ids, (np.concatenate(crops) if crops else None)

    def stream(self, question: str, images: Sequence[ImageLike] = (), max_tokens: int = 256) -> Iterator[int]:
        """The answer's token ids as they come (greedy), up to an end token or max_tokens."""
        ids, crops = self.prompt_ids(question, images)
        # each step on the owner thread: the generator's MLX work runs where it is advanced
        steps = owner.run(
            lambda: self.model.greedy(mx.array([ids]), None if crops is None else mx.array(crops), max_tokens, self.eos)
        )
        while (token := owner.run(next, steps, None)) is not None and token not in self.eos:
            yield token

    def generate(self, question: str, images: Sequence[ImageLike] = (), max_tokens: int = 256) -> dict:
        """{"text": the answer, "tokens": its ids}."""
        tokens = list(self.stream(question, images, max_tokens))
        return {"text": self.tokenizer.decode(tokens, skip_special_tokens=True), "tokens": tokens}
