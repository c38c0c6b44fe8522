"""What any run trained, whatever its kind (kinds.run_kind): as a module in memory, or exported to a
model folder."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import mlx.core as mx

from .. import kinds
from ..atomic import check_destination
from ..checkpoints.mlx_io import save
from ..config import ModelConfig
from ..models import build as build_model
from ..models import lora
from .classifier import classifier_run, save_classifier
from .common import newest
from .lit import lit_module, lit_preprocessor, load_lit
from .pretraining import load_encoder, save_decoder


def trained_model(run: Path) -> tuple:
    """(module, ModelConfig, preprocessor dict, extra files) of what a run trained: a LiT run's model in
    the published LiT layout (built in memory), else its encoder."""
    fine = classifier_run(Path(run))
    if fine is not None:  # the fine-tuned encoder, adapters merged (the head has no transformers form)
        model, config, pp, _, cfg, step = fine
        enc = build_model(dataclasses.replace(config, quantization=None))
        enc.load_weights(list(lora.merged_weights(model.encoder).items()), strict=True)
        return enc, dataclasses.replace(config, name=f"{Path(run).resolve().name} step {step}"), pp, ()
    tuned = load_lit(Path(run))
    if tuned is not None:
        frozen, tuner, name, files = tuned
        module, config = lit_module(frozen, tuner, name)
        return module, config, lit_preprocessor(frozen), files
    enc, vision, pp, name = load_encoder(Path(run))
    return enc, ModelConfig(vision=vision, name=name), pp, ()


def export_run(
    run: Path,
    dst: Path,
    overwrite: bool = False,
    merge_lora: Optional[bool] = None,
    decoder: bool = False,
    dtype=None,
    max_shard_size: Optional[int] = None,
) -> Path:
    """The model folder of a run's newest checkpoint, without training (a LiT run: its LiT folder).
    merge_lora: a LoRA fine-tune's adapters merged in or kept beside (default: as the run was set).
    decoder: a pre-training run's decoder and tokenizer go beside the encoder (caption, complete).
    dtype: the weights' float type (default: as trained)."""
    check_destination(dst, overwrite)
    if decoder:
        newest(
            Path(run), (kinds.PRETRAINING_RUN,), "--decoder needs a pre-training run (aimv2, image or text objective)"
        )
    fine = classifier_run(Path(run))
    if fine is not None:
        model, config, pp, classes, cfg, step = fine
        if dtype is not None:
            model.set_dtype(dtype, predicate=lambda d: mx.issubdtype(d, mx.floating))
        if merge_lora is not None:
            cfg = dataclasses.replace(cfg, merge_lora=merge_lora)
        name = f"mlx-aimv2 classifier ({cfg.init}, tune {cfg.tune}, {step} steps)"
        return save_classifier(model, config, pp, name, classes, cfg, dst, overwrite, max_shard_size)
    module, config, pp, files = trained_model(Path(run))
    if dtype is not None:
        module.set_dtype(dtype, predicate=lambda d: mx.issubdtype(d, mx.floating))
    more = (lambda folder: save_decoder(Path(run), folder, dtype)) if decoder else None
    kind = kinds.CAPTIONER if decoder else None  # else an encoder or a LiT model, by the config
    return save(
        module, config, Path(dst), pp, files, overwrite=overwrite, more=more, kind=kind, max_shard_size=max_shard_size
    )
