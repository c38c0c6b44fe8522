"""A LiT tuning run read back: its frozen encoder (any checkpoint, or a pre-training run), its tuner,
the LiT folder it exports in the published layout."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from .. import cpu, kinds
from ..checkpoints.mlx_io import default_preprocessor, save, tokenizer_files
from ..config import ModelConfig, TextConfig, TrainConfig, VisionConfig
from ..errors import UserError
from ..inference import AIMv2, Encoder, LiTModel, open_model
from ..models import AIMv2LiT
from ..models.lit import LiTTuner
from ..preprocess import Preprocessor
from .common import _weights
from .pretraining import load_encoder


def load_tuner(ckpt: Path, state: dict, vision: VisionConfig) -> LiTTuner:
    """The tuner of a LiT run's checkpoint (its config is in the checkpoint's state)."""
    d = state["lit"]
    config = ModelConfig(
        kind=kinds.LIT_MODEL,
        vision=vision,
        text=TextConfig.from_dict(d["text"]),
        projection_dim=d["projection_dim"],
        init_temperature=d["init_temperature"],
        max_logit_scale=d["max_logit_scale"],
    )
    tuner = LiTTuner(vision.hidden_size, vision.num_heads, config, state["config"].get("lit_loss", "softmax"))
    tuner.load_weights(list(_weights(ckpt).items()), strict=True)
    return tuner


def load_lit(run: Path):
    """(frozen encoder, tuner, name, tokenizer files) of a LiT tuning run's newest checkpoint; None for
    a run of another objective (or no run)."""
    ckpt = kinds.newest_checkpoint(Path(run))
    state = kinds.read_run_state(ckpt) if ckpt is not None else None
    if state is None or kinds.run_kind(state) != kinds.LIT_RUN:
        return None
    cfg = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in state["config"].items()})
    frozen = frozen_encoder(cfg.init)
    tuner = load_tuner(ckpt, state, frozen.config.vision)
    name = f"mlx-aimv2 LiT-tuned ({cfg.init}, {state['step']} steps)"
    return frozen, tuner, name, lit_tokenizer_files(cfg, Path(run), frozen)


def lit_tokenizer_files(cfg: TrainConfig, run: Path, frozen: AIMv2) -> tuple:
    """The files a LiT folder carries for its text side: the LiT init's, the given one, or the run's BPE."""
    if isinstance(frozen, LiTModel):
        return tokenizer_files(frozen.folder)
    if cfg.tokenizer:
        t = Path(cfg.tokenizer)
        if t.is_dir() and not (t / "tokenizer.json").is_file():
            return (t / "vocab.json", t / "merges.txt")
        if t.exists():
            return ((t / "tokenizer.json" if t.is_dir() else t, "tokenizer.json"),)
        raise UserError(
            f"{cfg.tokenizer}: a hub tokenizer cannot be bundled with the LiT folder; "
            f"save its tokenizer.json and give that file"
        )
    return (Path(run) / "tokenizer.json",)


def lit_module(frozen: AIMv2, tuner: LiTTuner, name: str):
    """The published LiT layout (AIMv2LiT) from the frozen encoder and a tuner's weights."""
    vision = dataclasses.replace(frozen.config.vision, use_head=True, head_bias=True)
    c = tuner.config
    config = ModelConfig(
        kind=kinds.LIT_MODEL,
        vision=vision,
        text=c.text,
        projection_dim=c.projection_dim,
        init_temperature=c.init_temperature,
        max_logit_scale=c.max_logit_scale,
        name=name,
    )
    lit = AIMv2LiT(config)
    weights = {
        f"image_encoder.{k}": v for k, v in tree_flatten(frozen.vision.parameters()) if not k.startswith("head.")
    }
    weights.update(tuner.lit_weights())
    lit.load_weights(list(weights.items()), strict=True)
    return lit, config


def lit_preprocessor(frozen: AIMv2) -> dict:
    """The frozen encoder's preprocessor_config.json, or for a training run its transforms as one."""
    pp = frozen.folder / "preprocessor_config.json" if frozen.folder else None
    if pp is not None and pp.is_file():
        return json.loads(pp.read_text())
    p = frozen.preprocessor
    d = default_preprocessor(frozen.config)
    d.update(
        size={"shortest_edge": p.size},
        crop_size={"height": p.crop[0], "width": p.crop[1]},
        image_mean=list(p.mean),
        image_std=list(p.std),
    )
    return d


def save_lit(frozen: AIMv2, tuner: LiTTuner, name: str, files: tuple, dst: Path, overwrite: bool = False) -> Path:
    """A LiT folder that load / encode_text / classify / export read like the published one."""
    lit, config = lit_module(frozen, tuner, name)
    return save(lit, config, Path(dst), lit_preprocessor(frozen), files, overwrite=overwrite, kind=kinds.LIT)


def frozen_encoder(init: str) -> AIMv2:
    """LiT tuning's frozen encoder: anything `load` reads (hub id, folder, file, demo, a quantized
    folder: dequantized, since tokens are computed once) or a pre-training run's newest checkpoint."""
    run = Path(init)
    if kinds.is_run(run):
        enc, vision, pp, name = load_encoder(run)
        mx.eval(enc.parameters())  # computed, not lazy: the owner thread may use them (open_model does the same)
        cpu.use_kernels(enc)
        where = f"{run} (its training config)"
        model = Encoder(
            enc,
            ModelConfig(vision=vision, name=name),
            Preprocessor.from_config(pp, None, where, vision.image_size),
            run,
        )
    else:
        model = open_model(init, dtype=mx.float32, keep_quantized=False)
    if model.config.vision.native:
        raise UserError(
            f"{init}: a native-resolution encoder gives each image its own token count; LiT tuning "
            f"caches fixed-size tokens, so start from a fixed-resolution encoder"
        )
    return model
