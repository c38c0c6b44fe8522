"""Every configuration in one place: the models' (vision, text, LiT, decoder, and the published
presets) in model.py, training's in train.py. Light to import: the CLI reads it at start-up."""

from .model import (
    ENCODERS,
    PRESETS,
    PRETRAINING_OBJECTIVES,
    PUBLISHED_SIZES,
    DecoderConfig,
    ModelConfig,
    TextConfig,
    VisionConfig,
    architecture_name,
    block_linear_params,
    checkpoint_bytes,
    count_params,
    count_vision_params,
    preset,
    swiglu_hidden,
    vision_preset,
)
from .train import RESUMABLE, TrainConfig, build_config, load_config, read_config, saved_run_config

__all__ = [
    "ENCODERS",
    "PRESETS",
    "PRETRAINING_OBJECTIVES",
    "PUBLISHED_SIZES",
    "RESUMABLE",
    "DecoderConfig",
    "ModelConfig",
    "TextConfig",
    "TrainConfig",
    "VisionConfig",
    "architecture_name",
    "block_linear_params",
    "build_config",
    "saved_run_config",
    "checkpoint_bytes",
    "count_params",
    "count_vision_params",
    "load_config",
    "preset",
    "read_config",
    "swiglu_hidden",
    "vision_preset",
]
