"""What every training objective is to the loop: one small class with one interface.

The loop (train/trainer.py) and the compiled step (train/step.py) call only these methods, so a
new objective is a new file here and one line in the registry (`__init__.py`):

    set-up   sources(data, images)  the data's shards, named only (default: data/sources.find_sources)
             tokenizer(sources)     the caption tokenizer (default: the given one, else a BPE on a sample)
             stream(...)            the batches: {inputs: ..., "ids": ...} per step, and state()/restore()
             build(tokenizer)       the nn.Module whose trainable parameters the optimiser updates
             evaluator()            None, or what eval_every measures: .measure(model) -> {metric: value}
             lr_scale(path)         a parameter's learning-rate multiplier (default 1)
    step     prepare(inputs, ids, key, shard)   the step's inputs (inside mx.compile, outside the gradient)
             loss(model, batch, shard)          {"loss": ..., other named values} (inside the gradient)
    result   state(model)           what a checkpoint records besides weights and positions
             export(model, step, dst)           the model folder the run becomes
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from ...config import TrainConfig
from ...data import TrainStream
from ...data.sources import Sample, Source, find_sources
from ...eval.knn import KnnProbe
from ...tokenizer import BPE_SAMPLE, TextTokenizer, load_tokenizer, train_bpe


class RankShare:
    """This rank's part of a data-parallel step and the collectives a loss may need. On one process
    every collective is the identity."""

    def __init__(self, world, dtype=mx.float32):
        self.world, self.rank, self.size, self.dtype = world, world.rank(), world.size(), dtype

    def sum(self, x: mx.array) -> mx.array:
        """x summed over the ranks."""
        return mx.distributed.all_sum(x, group=self.world) if self.size > 1 else x

    def gather(self, x: mx.array) -> mx.array:
        """Every rank's rows in rank order; only this rank's own keep their gradient."""
        if self.size == 1:
            return x
        every = mx.stop_gradient(mx.distributed.all_gather(x, group=self.world))
        n = x.shape[0]
        return mx.concatenate([every[: self.rank * n], x, every[(self.rank + 1) * n :]])


class Objective:
    name = ""
    result = "encoder"  # the run's subfolder that export() writes at the end of training
    inputs = "images"  # what the stream's batches call the step's first input
    # parameters whose whole gradient every rank computes (divided back by the rank count)
    replicated: tuple = ()
    # each rank's named values already cover the global batch (else they are summed over ranks)
    whole_batch = False

    def __init__(self, cfg: TrainConfig, out: Path, rank: int = 0, size: int = 1, log=print):
        self.cfg, self.out, self.rank, self.size, self.log = cfg, Path(out), rank, size, log

    def notes(self) -> list[str]:
        """What a user should know about this config before the run starts."""
        return []

    @property
    def image_size(self) -> int:
        """The side, in pixels, of the images the model sees."""
        return self.cfg.image_size

    # -- set-up ----------------------------------------------------------------------------------
    def sources(self, data: str, images) -> list[Source]:
        return find_sources(data, images)

    def tokenizer(self, sources: list[Source]) -> TextTokenizer:
        """The tokenizer given in the config, else the run's own BPE (trained once, on a sample)."""
        cfg = self.cfg
        if cfg.tokenizer:
            return load_tokenizer(Path(cfg.tokenizer), cfg.context_length)
        own = self.out / "tokenizer.json"
        if own.is_file():
            return load_tokenizer(own, cfg.context_length)
        dst = own if self.rank == 0 else self.out / f".tokenizer.rank{self.rank}.json"
        captions, used = caption_sample(sources, BPE_SAMPLE)
        tok = train_bpe(captions, cfg.vocab_size, dst, cfg.context_length)
        if self.rank == 0:
            why = (
                f" (asked for {cfg.vocab_size}: the captions hold no more distinct merges)"
                if tok.vocab_size < cfg.vocab_size
                else ""
            )
            self.log(
                f"trained a {tok.vocab_size}-token BPE on {len(captions):,} captions from {used} of "
                f"{len(sources)} shard(s){why} -> {own}"
            )
        return tok

    def stream(self, sources: list[Source], tokenizer, batch_size: int, barrier, progress: bool):
        """Endless batches of decoded, augmented images and their captions' ids, this rank's share."""
        cfg = self.cfg
        return TrainStream(
            sources, tokenizer, cfg.image_size, batch_size, cfg.seed, self.rank, self.size, cfg.threads,
            scale=cfg.crop_scale, mirror=cfg.mirror_captions, shuffle=cfg.shuffle_buffer, hflip=cfg.hflip,
        )  # fmt: skip

    def build(self, tokenizer: TextTokenizer) -> nn.Module:
        raise NotImplementedError

    def evaluator(self):
        """A k-NN probe of the encoder on eval_data, every eval_every steps."""
        cfg = self.cfg
        if not cfg.eval_every:
            return None
        return KnnProbe(cfg.eval_data, self.image_size, cfg.mean, cfg.std)

    lr_scale = None  # or a function: parameter path -> learning-rate multiplier

    # -- the step --------------------------------------------------------------------------------
    def prepare(self, inputs: mx.array, ids: mx.array, key: mx.array, shard: RankShare) -> tuple:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: tuple, shard: RankShare) -> dict:
        raise NotImplementedError

    # -- the result ------------------------------------------------------------------------------
    def state(self, model: nn.Module) -> dict:
        return {}

    def export(self, model: nn.Module, step: int, dst: Path, overwrite: bool = False) -> Path:
        raise NotImplementedError


SPREAD = 8  # shards the run's BPE reads its captions from


def caption_sample(sources: list[Source], limit: int) -> tuple[list[str], int]:
    """At most `limit` captions, spread over the corpus: an equal share from each of up to SPREAD
    shards evenly spaced over the list. A fixed number of shards keeps start-up independent of the
    corpus (a BPE's merges settle long before millions of captions). Returns the captions and how
    many shards gave some."""
    k = min(SPREAD, len(sources), limit)
    picked = sorted({round(i * (len(sources) - 1) / max(1, k - 1)) for i in range(k)})
    share = limit // len(picked)
    captions: list[str] = []
    gave = 0
    for i in picked:
        taken = [e.caption for e in islice((e for e in sources[i].entries() if isinstance(e, Sample)), share)]
        captions += taken
        gave += bool(taken)
    return captions, gave
