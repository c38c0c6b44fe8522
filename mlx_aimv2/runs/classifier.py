"""A fine-tuning run read back: its classifier (the encoder, LoRA merged or kept beside it, and the
head), and the folder `classify --model RUN` reads."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .. import finetuned, kinds
from ..checkpoints.mlx_io import load_into, save
from ..config import ModelConfig, TrainConfig, VisionConfig, saved_run_config
from ..models import build as build_model
from ..models import lora
from ..models.classifier import Classifier
from ..quantize import quantize
from .common import _weights, add_run_lora, newest


def save_classifier(model: Classifier, config: ModelConfig, pp: dict, name: str, classes: list, cfg: TrainConfig,
                    dst: Path, overwrite: bool = False, max_shard_size=None) -> Path:  # fmt: skip
    """A fine-tuned model folder: the encoder (LoRA merged in, or its frozen base with the adapter
    beside it when merge_lora is off) and the classifier head; `classify`, `embed` and `export` read it."""
    adapter = cfg.tune == "lora" and not cfg.merge_lora
    keep = {
        "rank": cfg.lora_rank,
        "alpha": cfg.lora_alpha,
        "layers": cfg.lora_layers,
        "targets": list(cfg.lora_targets),
    }
    weights = lora.base_weights(model.encoder) if adapter else lora.merged_weights(model.encoder)
    vision = dataclasses.replace(config.vision, use_head=False)
    out = ModelConfig(vision=vision, name=name, quantization=config.quantization if adapter else None)

    def more(folder: Path):
        finetuned.write(folder, model.classifier, classes, keep if adapter else None, model.encoder)

    return save(
        None,
        out,
        Path(dst),
        pp,
        weights=weights,
        more=more,
        overwrite=overwrite,
        kind=kinds.CLASSIFIER,
        max_shard_size=max_shard_size,
    )


def classifier_run(run: Path) -> tuple:
    """(Classifier, ModelConfig of its encoder, preprocessor dict, classes, TrainConfig, step) of a
    fine-tuning run's newest checkpoint; None for a run of another objective."""
    ckpt, state = newest(run)
    if kinds.run_kind(state) != kinds.CLASSIFIER_RUN:
        return None
    cfg = saved_run_config(dict(state["config"]))
    config = ModelConfig(vision=VisionConfig.from_dict(state["vision"]), quantization=state.get("quantization"))
    encoder = build_model(config)
    if config.quantization and cfg.tune == "lora":
        quantize(encoder, config.quantization)
    model = Classifier(encoder, len(state["classes"]))
    if cfg.tune == "lora":
        add_run_lora(encoder, cfg.to_dict())
    load_into(model, _weights(ckpt), str(ckpt))
    if not (config.quantization and cfg.tune == "lora"):
        config.quantization = None
    return model, config, state["preprocessor"], state["classes"], cfg, state["step"]
