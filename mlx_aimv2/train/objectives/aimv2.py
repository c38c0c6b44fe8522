"""The paper's objective: an encoder with prefix attention feeding a causal decoder that regresses
the next normalised patch and predicts the caption's next token (`aimv2`), or one of the two
alone (`image`, AIMv1-like; `text`, captioning)."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ... import cpu, kinds
from ...checkpoints.load import load_checkpoint
from ...errors import UserError
from ...models import lora
from ...models.decoder import AIMv2PreTrainer, init_weights
from ...quantize import dequantize
from ...runs import encoder_preprocessor, save_encoder
from .base import Objective, RankShare


class AIMv2Objective(Objective):
    name = "aimv2"

    def build(self, tokenizer) -> nn.Module:
        cfg = self.cfg
        self.vision, init = self._encoder_source()
        model = AIMv2PreTrainer(
            self.vision,
            cfg.decoder_config(tokenizer.vocab_size),
            pad_id=tokenizer.pad_id,
            alpha=cfg.alpha,
            objective=self.name,
            prefix_attention=cfg.prefix_attention,
        )
        init_weights(model)
        cpu.use_kernels(model)
        if init is not None:
            model.encoder.load_weights(list(init.items()), strict=True)
        if cfg.tune == "head":  # the encoder frozen: only the decoder learns (e.g. a captioner for it)
            model.encoder.freeze()
        elif cfg.tune == "lora":
            try:
                lora.add_lora(model.encoder, cfg.lora_rank, cfg.lora_alpha, cfg.lora_layers, cfg.lora_targets)
            except ValueError as e:
                raise UserError(f"lora_rank {cfg.lora_rank}: {e}; lower lora_rank") from None
        model.encoder.trunk.set_checkpointing(cfg.checkpointing)
        model.decoder.trunk.set_checkpointing(cfg.checkpointing)
        self.mean = mx.array(cfg.mean, dtype=mx.float32) * 255.0
        self.std = mx.array(cfg.std, dtype=mx.float32) * 255.0
        self.num_patches = (cfg.image_size // cfg.patch_size) ** 2
        return model

    def _encoder_source(self):
        """The encoder config, and the weights to start from when cfg.init is given."""
        cfg = self.cfg
        if not cfg.init:
            return cfg.vision(), None
        module, mcfg, _ = load_checkpoint(cfg.init, dtype=mx.float32)
        if mcfg.quantization:  # training needs float weights: continue from the dequantized ones
            dequantize(module)
            mcfg.quantization = None
            self.log(f"note: {cfg.init} is quantized; training starts from its dequantized weights")
        enc = module.image_encoder if kinds.is_lit(mcfg) else module
        vision = mcfg.vision
        vision.use_head = False
        if not vision.native and vision.image_size != cfg.image_size:
            raise UserError(
                f"{cfg.init}: this encoder was trained at {vision.image_size} px; set image_size = {vision.image_size}"
            )
        if vision.patch_size != cfg.patch_size:
            raise UserError(f"{cfg.init}: patch size {vision.patch_size}; set patch_size = {vision.patch_size}")
        weights = {k: v for k, v in tree_flatten(enc.parameters()) if not k.startswith("head.")}
        return vision, weights

    def prepare(self, images: mx.array, ids: mx.array, key: mx.array, shard: RankShare) -> tuple:
        """uint8 images -> normalised pixels; prefix lengths drawn once for the global micro-batch (the
        same on every rank), of which this rank takes its strided share."""
        x = (images.astype(mx.float32) - self.mean) / self.std
        every = mx.random.randint(1, self.num_patches, (images.shape[0] * shard.size,), key=key)
        return x.astype(shard.dtype), ids, every[shard.rank :: shard.size]

    def loss(self, model: nn.Module, batch: tuple, shard: RankShare) -> dict:
        """Each rank scores its share against the global counts of scored patches and tokens."""
        x, ids, prefix = batch
        return model.losses(x, ids, prefix, shard.sum)

    def state(self, model: nn.Module) -> dict:
        return {"vision": self.vision.to_dict()}

    def export(self, model: nn.Module, step: int, dst: Path, overwrite: bool = False) -> Path:
        cfg = self.cfg
        name = f"mlx-aimv2 pre-trained ({cfg.init or cfg.encoder}, {step} steps)"
        pp = encoder_preprocessor(self.vision, cfg.mean, cfg.std)
        return save_encoder(model.encoder, self.vision, pp, name, dst, overwrite, lora.merged_weights(model.encoder))


class ImageOnly(AIMv2Objective):
    """Only the next-patch regression (AIMv1-like)."""

    name = "image"


class TextOnly(AIMv2Objective):
    """Only the caption's next token (captioning)."""

    name = "text"
