"""LiT tuning (objective `lit`): a frozen image encoder (the run's `init`), whose tokens are computed
once and cached on disk, and a trainable attention-pool head, projections and text tower that learn
the contrastive loss (CLIP's softmax, or SigLIP's sigmoid).

Data parallel: each rank gathers every rank's embeddings, keeps its own with their gradient and
computes the whole batch's loss, so its gradient is exact for its own rows and the sum over ranks is
the full gradient. The logit scale and bias are seen whole by every rank: `replicated` divides
their summed gradient back by the rank count.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from ... import cpu, kinds
from ...config import ModelConfig, TextConfig, swiglu_hidden
from ...data.sources import read_all
from ...data.stream import TokenStream
from ...errors import UserError
from ...models.decoder import init_weights
from ...models.lit import LiTTuner
from ...runs import frozen_encoder, lit_tokenizer_files, save_lit
from ..token_cache import TokenCache, files_fingerprint
from .base import Objective, RankShare


class LiT(Objective):
    name = "lit"
    result = "lit"
    inputs = "tokens"
    replicated = ("log_logit_scale", "logit_bias")
    whole_batch = True

    def __init__(self, cfg, out: Path, rank: int = 0, size: int = 1, log=print):
        super().__init__(cfg, out, rank, size, log)
        # the frozen encoder comes first: its tokenizer (a LiT model's own), its image size, its tokens
        self.frozen = frozen_encoder(cfg.init)
        self.vision = self.frozen.config.vision

    def notes(self) -> list[str]:
        cfg = self.cfg
        if cfg.accum == 1:
            return []
        return [
            f"note: with accum {cfg.accum}, each micro-batch of {cfg.batch_size // cfg.accum} is its own "
            f"contrastive batch: its images are compared with its own captions only"
        ]

    @property
    def image_size(self) -> int:
        return self.frozen.preprocessor.crop[0]

    @property
    def tuning_lit(self) -> bool:
        """Whether init is a LiT model, whose own text side continues training."""
        return kinds.is_lit(self.frozen.config)

    def tokenizer(self, sources):
        if not self.tuning_lit:
            return super().tokenizer(sources)
        if self.cfg.tokenizer:
            raise UserError(f"{self.cfg.init} is a LiT model with its own tokenizer; drop 'tokenizer'")
        return self.frozen.tokenizer

    def stream(self, sources, tokenizer, batch_size: int, barrier, progress: bool):
        """The frozen encoder's tokens of every sample, computed once and cached on disk: LiT tuning
        reads its whole (image-tuning sized) set up front, unlike pre-training's stream."""
        cfg, v = self.cfg, self.vision
        data = read_all(sources, cfg.data)
        if data.bad:
            self.log(f"data: skipped {len(data.bad)} bad entries (first: {data.bad[0].where}: {data.bad[0].why})")
        ids = tokenizer([s.caption for s in data.samples])
        key = {  # what the tokens are made from: a change to any of it rebuilds the cache
            "init": cfg.init, "encoder": self.frozen.config.name, "weights": self.frozen.fingerprint(),
            "preprocessing": repr(self.frozen.preprocessor), "data": cfg.data, "images": cfg.images,
            "samples": len(data), "files": files_fingerprint(data.samples), "ranks": self.size,
            "tokens": [v.num_patches, v.hidden_size],
        }  # fmt: skip
        cache = TokenCache.open_or_build(
            self.out / "token_cache", key, self.frozen, data.samples, self.rank, self.size, barrier, self.log,
            progress=progress,
        )  # fmt: skip
        lit_tokenizer_files(cfg, self.out, self.frozen)  # a tokenizer the LiT folder cannot carry: say so now
        return TokenStream(cache, data, ids, batch_size, cfg.seed, self.rank, self.size)

    def build(self, tokenizer) -> nn.Module:
        """The trainable part: from the LiT init's own head, projections and text tower, or new."""
        cfg, v = self.cfg, self.vision
        if self.tuning_lit:
            tuner = LiTTuner(v.hidden_size, v.num_heads, self.frozen.config, cfg.lit_loss)
            tuner.load_from_lit(self.frozen.module)
            self.log(f"tuning {cfg.init}'s head, projections and text tower; its image encoder stays frozen")
        else:
            mcfg = ModelConfig(
                kind="lit", vision=v, text=text_config(cfg, tokenizer), projection_dim=cfg.projection_dim
            )
            tuner = LiTTuner(v.hidden_size, v.num_heads, mcfg, cfg.lit_loss)
            init_weights(tuner)
        cpu.use_kernels(tuner)
        return tuner

    def prepare(self, tokens: mx.array, ids: mx.array, key: mx.array, shard: RankShare) -> tuple:
        """The frozen encoder's tokens, stored as float16."""
        return tokens.astype(mx.float32).astype(shard.dtype), ids

    def loss(self, model: nn.Module, batch: tuple, shard: RankShare) -> dict:
        tokens, ids = batch
        return model.losses(tokens, ids, shard.gather)

    def state(self, model: nn.Module) -> dict:
        return {"vision": self.vision.to_dict(), "lit": model.config.to_dict()}

    def export(self, model: nn.Module, step: int, dst: Path, overwrite: bool = False) -> Path:
        """The published LiT layout, which load, encode_text and search read."""
        name = f"mlx-aimv2 LiT-tuned ({self.cfg.init}, {step} steps)"
        files = lit_tokenizer_files(self.cfg, self.out, self.frozen)
        return save_lit(self.frozen, model, name, files, dst, overwrite)


def text_config(cfg, tokenizer) -> TextConfig:
    """A text tower from scratch: cfg.text's sizes over the run's tokenizer."""
    t = {"hidden_size": 256, "depth": 4, "num_heads": 4, **cfg.text}
    if t["hidden_size"] % t["num_heads"]:
        raise UserError(f"text.hidden_size {t['hidden_size']} is not divisible by text.num_heads {t['num_heads']}")
    if tokenizer.eos_id is None:
        raise UserError(
            "the tokenizer has no end-of-text token, which the text tower reads its embedding from; "
            "use a tokenizer with one (the BPE trained on the captions has </s>)"
        )
    return TextConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=t["hidden_size"],
        depth=t["depth"],
        num_heads=t["num_heads"],
        mlp_hidden=t.get("mlp_hidden") or swiglu_hidden(t["hidden_size"]),
        context_length=cfg.context_length,
        eos_token_id=tokenizer.eos_id,
    )
