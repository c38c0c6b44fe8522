"""Fine-tuning (objective `classify`): a trained encoder (`init`) and an attentive-pool head learn to
classify labelled images (data/labelled.py) with cross-entropy.

What trains is `tune`: `head` (the encoder frozen: the attentive probe, trained on augmented images),
`lora` (adapters on the encoder's linear layers, models/lora.py; a quantized init stays quantized
and frozen, QLoRA-style) or `full` (everything, with layer-wise learning-rate decay).

Data parallel: each rank scores its share against the global batch size, so the ranks' summed
gradient is the whole batch's.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ... import cpu, kinds
from ...checkpoints.load import load_checkpoint
from ...checkpoints.mlx_io import default_preprocessor
from ...config import ModelConfig
from ...data.labelled import ClassLabelEncoder, open_labelled
from ...data.stream import TrainStream
from ...errors import UserError
from ...eval.knn import HeldOut
from ...kinds import is_run
from ...models import lora
from ...models.classifier import Classifier
from ...quantize import dequantize
from ...runs import load_encoder, save_classifier
from .base import Objective, RankShare


class Classify(Objective):
    name = "classify"
    result = "classifier"

    def __init__(self, cfg, out: Path, rank: int = 0, size: int = 1, log=print):
        super().__init__(cfg, out, rank, size, log)
        self.encoder, self.config, self.preprocessor = _init_encoder(cfg.init)
        self.quantized = self.config.quantization
        if kinds.is_lit(self.config):
            self.encoder = self.encoder.image_encoder
        if self.quantized and cfg.tune != "lora":
            dequantize(self.encoder)  # only LoRA keeps a frozen quantized base
            self.log(f"note: {cfg.init} is quantized; tune = '{cfg.tune}' starts from its dequantized weights")
        self.vision = self.config.vision
        if self.vision.native:
            raise UserError(
                f"{cfg.init}: a native-resolution encoder; fine-tune a fixed-resolution one (batches share a size)"
            )
        if "head" in self.encoder:  # the published pooling head is replaced by the classifier's own
            del self.encoder["head"]
        self.vision.use_head = False
        self.data = open_labelled(cfg.data, cfg.images, cfg.classes)
        self.classes = self.data.classes

    def notes(self) -> list[str]:
        cfg = self.cfg
        out = [f"classify: {self.data.about}"]
        if cfg.eval_every == 0 and self.data.held_out:
            out.append("note: set eval_every to see held-out accuracy while training (it is measured at the end)")
        if self.quantized and cfg.tune == "lora" and cpu.active():
            out.append("note: the frozen quantized base runs MLX's CPU quantized matmul, much slower than float")
        return out

    @property
    def image_size(self) -> int:
        return self.vision.image_size

    # -- set-up ----------------------------------------------------------------------------------
    def sources(self, data: str, images):
        return self.data.sources

    def tokenizer(self, sources):
        return ClassLabelEncoder(self.classes)

    def stream(self, sources, tokenizer, batch_size: int, barrier, progress: bool):
        cfg = self.cfg
        return TrainStream(
            sources, tokenizer, self.image_size, batch_size, cfg.seed, self.rank, self.size, cfg.threads,
            scale=cfg.crop_scale, shuffle=cfg.shuffle_buffer, hflip=cfg.hflip,
        )  # fmt: skip

    def build(self, tokenizer) -> nn.Module:
        cfg = self.cfg
        model = Classifier(self.encoder, len(self.classes))
        if cfg.tune == "head":
            model.encoder.freeze()
        elif cfg.tune == "lora":
            try:
                n = lora.add_lora(model.encoder, cfg.lora_rank, cfg.lora_alpha, cfg.lora_layers, cfg.lora_targets)
            except ValueError as e:
                raise UserError(f"lora_rank {cfg.lora_rank}: {e}; lower lora_rank") from None
            self.log(f"LoRA: rank {cfg.lora_rank}, alpha {cfg.lora_alpha} on {n} linear layers")
        cpu.use_kernels(model)
        model.encoder.trunk.set_checkpointing(cfg.checkpointing)
        mean, std = self.preprocessor["image_mean"], self.preprocessor["image_std"]
        self.mean = mx.array(mean, dtype=mx.float32) * 255.0
        self.std = mx.array(std, dtype=mx.float32) * 255.0
        total = lora.count_parameters(model)
        trained = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
        self.log(f"training {trained:,} of {total:,} parameters ({100 * trained / total:.2f} %, tune = {cfg.tune})")
        return model

    def evaluator(self):
        """Held-out top-1: eval_data (a labelled set of the same classes), else the folder's val/."""
        cfg = self.cfg
        if cfg.eval_data:
            held = open_labelled(cfg.eval_data, None, None)
            sources, about = (held.held_out or held.sources), cfg.eval_data
        elif self.data.held_out:
            sources, about = self.data.held_out, f"{cfg.data}/val"
        elif cfg.eval_every:
            raise UserError(
                f"eval_every = {cfg.eval_every}: {cfg.data} has no held-out images; give eval_data, or "
                f"use a folder with train/ and val/ subfolders"
            )
        else:
            return None
        return HeldOut(sources, self.classes, self.preprocessor, self.image_size, about)

    def lr_scale(self, path: str) -> float:
        """Layer-wise decay: block i of d learns at layer_decay ** (d - i), the patch embedding at
        layer_decay ** (d + 1), the final norm and the head at 1."""
        decay, depth = self.cfg.layer_decay, self.vision.depth
        if decay == 1.0 or not path.startswith("encoder."):
            return 1.0
        if path.startswith("encoder.trunk.blocks."):
            return decay ** (depth - int(path.split(".")[3]))
        if path.startswith("encoder.preprocessor."):
            return decay ** (depth + 1)
        return 1.0

    # -- the step --------------------------------------------------------------------------------
    def prepare(self, images: mx.array, labels: mx.array, key: mx.array, shard: RankShare) -> tuple:
        x = (images.astype(mx.float32) - self.mean) / self.std
        return x.astype(shard.dtype), labels[:, 0]  # the (n, 1) class labels (ClassLabelEncoder)

    def loss(self, model: nn.Module, batch: tuple, shard: RankShare) -> dict:
        """Cross-entropy and top-1 accuracy, this rank's share of the global batch's mean."""
        x, labels = batch
        logits = model.training_logits(x).astype(mx.float32)
        total = labels.shape[0] * shard.size
        ce = nn.losses.cross_entropy(logits, labels, reduction="sum") / total
        right = (mx.argmax(logits, axis=-1) == labels).astype(mx.float32).sum() / total
        return {"loss": ce, "accuracy": mx.stop_gradient(right)}

    # -- the result ------------------------------------------------------------------------------
    def state(self, model: nn.Module) -> dict:
        return {
            "vision": self.vision.to_dict(), "classes": self.classes, "preprocessor": self.preprocessor,
            "quantization": self.quantized if self.cfg.tune == "lora" else None,
        }  # fmt: skip

    def export(self, model: nn.Module, step: int, dst: Path, overwrite: bool = False) -> Path:
        name = f"mlx-aimv2 classifier ({self.cfg.init}, tune {self.cfg.tune}, {step} steps)"
        return save_classifier(model, self.config, self.preprocessor, name, self.classes, self.cfg, dst, overwrite)


def _init_encoder(init: str) -> tuple:
    """(encoder module, ModelConfig, preprocessor dict) of `init`: anything `load` reads, or a
    pre-training run's newest checkpoint."""
    if is_run(Path(init)):
        enc, vision, pp, name = load_encoder(Path(init))
        return enc, ModelConfig(vision=vision, name=name), pp
    module, config, folder = load_checkpoint(init, dtype=mx.float32)
    pp = folder / "preprocessor_config.json"
    return module, config, json.loads(pp.read_text()) if pp.is_file() else default_preprocessor(config)
