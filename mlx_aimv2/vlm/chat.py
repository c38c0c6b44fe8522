"""Asking Ovis2 about images: an Ovis2 folder (transformers' layout or one `convert` wrote, a hub id
downloaded first) read into vlm.Ovis2, the chat template Ovis2 was tuned with, and greedy or sampled
decoding whose text streams as it is decided. Every call runs its MLX work on the library's owner
thread, so it is safe from any thread like the rest of the package."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import mlx.core as mx
import numpy as np
from mlx_lm.sample_utils import apply_top_p
from tokenizers.decoders import DecodeStream

from .. import cpu, hub, kinds, owner
from ..checkpoints.ovis2 import load_ovis2, needs_tokenizer, open_folder
from ..errors import UserError
from ..preprocess import ImageLike, load_image
from .processor import image_prompt, preprocess

SYSTEM = "You are a helpful assistant."
CONTEXT = 32768  # Qwen2.5's, where config.json does not say


ROLES = ("system", "user", "assistant")


def prompt(messages: Sequence[dict], grids: Sequence[tuple[int, int]], tokens_per_crop: int) -> str:
    """The chat template's text for `messages` ({"role", "content": [text | {"image": ...}]}): each
    image's prompt (its grid's, in order) where it stands, then a newline; the default system message
    first unless the conversation brings its own; the assistant's turn opened."""
    grids = iter(grids)
    text = "" if messages and messages[0]["role"] == "system" else f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
    for m in messages:
        body = "".join(p if isinstance(p, str) else image_prompt(next(grids), tokens_per_crop) + "\n"
                       for p in m["content"])  # fmt: skip
        text += f"<|im_start|>{m['role']}\n{body}<|im_end|>\n"
    return text + "<|im_start|>assistant\n"


def question(text: str, images: Sequence[ImageLike] = ()) -> list[dict]:
    """One question about images, as messages: the images first, as Ovis2 was tuned."""
    return [{"role": "user", "content": [*({"image": i} for i in images), text]}]


@dataclass
class Piece:
    """One generated token and the text it completes (empty while a character spans tokens)."""

    token: int
    text: str


def sampler(temp: float, top_p: float = 1.0, seed: Optional[int] = None) -> Optional[Callable]:
    """None (greedy) at temp 0; else sampling at `temp` from the top-p nucleus (mlx-lm's filter), with
    a key of its own: one caller's seed never moves another's draws."""
    if temp < 0 or not 0 < top_p <= 1:
        raise UserError(f"--temp {temp} / --top-p {top_p}: use a temperature >= 0 and 0 < top-p <= 1")
    if temp == 0:
        return None
    key = [mx.random.key(random.getrandbits(63) if seed is None else seed)]

    def sample(logits: mx.array) -> mx.array:
        key[0], now = mx.random.split(key[0])
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        if top_p < 1:
            logprobs = apply_top_p(logprobs, top_p)
        return mx.random.categorical(logprobs * (1 / temp), key=now)

    return sample


class Ovis2Chat:
    """An Ovis2 model: `generate(question, images)` -> {"text", "tokens"}; `stream(...)` yields Pieces.
    keep_quantized: keep a quantized folder's layers quantized on the CPU too (default: only off it)."""

    def __init__(self, name_or_path, dtype=None, revision: Optional[str] = None, keep_quantized: Optional[bool] = None):
        folder = hub.resolve(str(name_or_path), revision)
        if not kinds.is_ovis2(folder):
            what = kinds.describe(kinds.model_kind(folder)) if kinds.is_ours(folder) else "not an Ovis2 model folder"
            raise UserError(
                f"{name_or_path}: {what}, not an Ovis2 model; chat needs an Ovis2 folder (e.g. thisisiron/Ovis2-2B-hf, "
                f"or one `mlx-aimv2 convert` wrote from it)"
            )
        self.folder = folder
        opened = open_folder(folder)
        self.tokenizer, self.config = needs_tokenizer(folder, opened.tokenizer), opened.config
        self.model = owner.run(load_ovis2, opened, dtype)
        # on the CPU a quantized folder runs dequantized (MLX's CPU quantized matmul measured 60x slower
        # than float at a 300-token prefill, 5x at one token: benchmarks/ovis2.py --breakdown); Metal
        # and CUDA keep it quantized
        owner.run(cpu.float_layers, self.model, keep_quantized)
        v, t = self.config["vision_config"], self.config["text_config"]
        self.side, self.stride = int(v["image_size"]), int(v.get("hidden_stride", 1))
        grid = int(v["image_size"]) // int(v["patch_size"])
        self.tokens_per_crop = (-(-grid // self.stride)) ** 2  # the merge zero-pads a grid the stride does not divide
        self.context = int(t.get("max_position_embeddings") or CONTEXT)
        pp = folder / "preprocessor_config.json"  # the processor's tile limit, where the folder has one
        self.max_tiles = int(json.loads(pp.read_text()).get("max_patches", 12)) if pp.is_file() else 12
        self.eos = [i for i in map(self.tokenizer.token_to_id, ("<|im_end|>", "<|endoftext|>")) if i is not None]

    def prepare(self, messages: Sequence[dict]) -> tuple[list, Optional[np.ndarray]]:
        """The prompt's token ids and its images' crops (thumbnail and tiles, in the prompt's order),
        checked against the context. Pure numpy and tokenizers: any thread, no MLX."""
        crops, grids = [], []
        for m in messages:
            if m.get("role") not in ROLES:
                raise UserError(f"a message's role must be one of {', '.join(ROLES)}, got {m.get('role')!r}")
            for part in m["content"]:
                if not isinstance(part, str):
                    c, g = preprocess(load_image(part["image"]), self.side, self.max_tiles)
                    crops.append(c)
                    grids.append(g)
        ids = self.tokenizer.encode(prompt(messages, grids, self.tokens_per_crop), add_special_tokens=False).ids
        if len(ids) + 1 > self.context:
            raise UserError(
                f"the prompt takes {len(ids):,} tokens ({len(grids)} image(s) at up to {self.max_tiles} tiles, "
                f"{self.tokens_per_crop} tokens each); this model reads {self.context:,}: ask with fewer or smaller images"
            )
        return ids, (np.concatenate(crops) if crops else None)

    def prompt_ids(self, text: str, images: Sequence[ImageLike]) -> tuple[list, Optional[np.ndarray]]:
        return self.prepare(question(text, images))

    def stream_prepared(self, ids: list, crops: Optional[np.ndarray], max_tokens: int = 256, temp: float = 0.0,
                        top_p: float = 1.0, seed: Optional[int] = None) -> Iterator[Piece]:  # fmt: skip
        """The answer to a prepared prompt as it is decided: each token with the text it completes,
        up to an end token or max_tokens (greedy at temp 0, else sampled; seed repeats a sample)."""
        max_tokens = min(max_tokens, self.context - len(ids))
        pick = sampler(temp, top_p, seed)

        def start():  # the arrays made on the owner thread too, in the model's float type
            dtype = self.model.visual_embeddings_table.dtype
            pixels = None if crops is None else mx.array(crops).astype(dtype)
            return self.model.tokens(mx.array([ids]), pixels, max_tokens, self.eos, pick)

        # each step on the owner thread, where the generator is advanced: callers interleave between tokens
        steps = owner.run(start)
        text = DecodeStream(skip_special_tokens=True)
        while (token := owner.run(next, steps, None)) is not None and token not in self.eos:
            yield Piece(token, text.step(self.tokenizer, token) or "")

    def stream(self, text: str, images: Sequence[ImageLike] = (), max_tokens: int = 256, temp: float = 0.0,
               top_p: float = 1.0, seed: Optional[int] = None) -> Iterator[Piece]:  # fmt: skip
        """The answer to a question about images, as it is decided (Pieces: token, text)."""
        return self.stream_prepared(*self.prompt_ids(text, images), max_tokens, temp, top_p, seed)

    def generate(self, text: str, images: Sequence[ImageLike] = (), max_tokens: int = 256, temp: float = 0.0,
                 top_p: float = 1.0, seed: Optional[int] = None) -> dict:  # fmt: skip
        """{"text": the answer, "tokens": its ids}."""
        tokens = [p.token for p in self.stream(text, images, max_tokens, temp, top_p, seed)]
        return {"text": self.tokenizer.decode(tokens, skip_special_tokens=True), "tokens": tokens}
