"""Training configuration: one dataclass, read from TOML / YAML and `--set key=value` flags, plus
the encoder presets from a tiny test model to AIMv2-L and beyond."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..config import ENCODERS, OBJECTIVES, DecoderConfig, VisionConfig, vision_preset
from ..errors import UserError
from ..preprocess import CLIP_MEAN, CLIP_STD

@dataclass
class TrainConfig:
    data: str = ""                      # captions file / folder / tar shards
    images: Optional[str] = None        # root for relative image paths (default: the captions file's folder)
    out: str = "runs/aimv2"
    encoder: str = "tiny"               # a preset in ENCODERS, ignored when `init` is given
    init: Optional[str] = None          # start the encoder from this checkpoint (hub id, folder, file)
    image_size: int = 224
    patch_size: int = 14
    decoder: dict = field(default_factory=dict)   # DecoderConfig fields overriding the preset's
    tokenizer: Optional[str] = None     # a tokenizer.json; default: train a BPE on the captions
    vocab_size: int = 1024              # for that BPE
    context_length: int = 77
    objective: str = "aimv2"            # aimv2 | image (AIMv1-like) | text (captioning)
    alpha: float = 0.4
    prefix_attention: bool = True
    batch_size: int = 32                # global batch (all ranks, all accumulation steps)
    accum: int = 1
    steps: int = 1000
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup: int = 100
    weight_decay: float = 1e-4
    betas: tuple = (0.9, 0.95)
    eps: float = 1e-8
    clip: float = 1.0
    dtype: str = "float32"              # float32 | bfloat16 (compute; master weights stay fp32)
    checkpointing: bool = False         # recompute blocks in the backward pass to save memory
    save_every: int = 500
    keep: int = 2
    log_every: int = 10
    seed: int = 0
    threads: int = 2
    crop_scale: tuple = (0.4, 1.0)      # random resized crop: fraction of the image area kept
    mean: tuple = CLIP_MEAN
    std: tuple = CLIP_STD

    def validate(self) -> "TrainConfig":
        if self.init is None and self.encoder not in ENCODERS:
            raise UserError(f"unknown encoder preset '{self.encoder}'; use one of {', '.join(ENCODERS)} or --init")
        if self.objective not in OBJECTIVES:
            raise UserError(f"unknown objective '{self.objective}'; use one of {', '.join(OBJECTIVES)}")
        if self.dtype not in ("float32", "bfloat16"):
            raise UserError(f"dtype '{self.dtype}': use float32 or bfloat16")
        if self.image_size % self.patch_size:
            raise UserError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.batch_size % self.accum:
            raise UserError(f"batch_size {self.batch_size} is not divisible by accum {self.accum}")
        for k in ("steps", "batch_size", "accum", "save_every", "log_every"):
            if getattr(self, k) < 1:
                raise UserError(f"{k} must be at least 1")
        bad = set(self.decoder) - {f.name for f in dataclasses.fields(DecoderConfig)}
        if bad:
            raise UserError(f"unknown decoder config key(s): {', '.join(sorted(bad))}")
        return self

    def vision(self) -> VisionConfig:
        return vision_preset(self.encoder, self.image_size, self.patch_size)

    def decoder_config(self, vocab_size: int) -> DecoderConfig:
        base = dict(ENCODERS.get(self.encoder, ((0, 0, 0), {}))[1])
        base.update(self.decoder)
        return DecoderConfig(**{**base, "vocab_size": vocab_size, "context_length": self.context_length})

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def load_config(file: Optional[Path] = None, overrides: dict | None = None, sets: list[str] = ()) -> TrainConfig:
    """File (TOML / YAML / JSON), then `--set k=v` strings, then explicit flags; unknown keys are errors."""
    d: dict = {}
    if file is not None:
        file = Path(file)
        if not file.is_file():
            raise UserError(f"{file}: no such config file")
        try:
            if file.suffix == ".toml":
                import tomllib
                d = tomllib.loads(file.read_text())
            elif file.suffix in (".yaml", ".yml"):
                import yaml
                d = yaml.safe_load(file.read_text()) or {}
            else:
                d = json.loads(file.read_text())
        except Exception as e:
            raise UserError(f"{file}: cannot parse config ({e})") from None
        if not isinstance(d, dict):
            raise UserError(f"{file}: the config must be a table of keys")
        if isinstance(d.get("train"), dict):  # allow a [train] table
            d = {**{k: v for k, v in d.items() if k != "train"}, **d["train"]}
    for s in sets:
        if "=" not in s:
            raise UserError(f"--set '{s}': use key=value")
        k, v = s.split("=", 1)
        if k.startswith("decoder."):
            d.setdefault("decoder", {})[k[8:]] = _parse_value(v)
        else:
            d[k] = _parse_value(v)
    d.update({k: v for k, v in (overrides or {}).items() if v is not None})
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(d) - names
    if unknown:
        src = f"{file}: " if file else ""
        raise UserError(f"{src}unknown config key(s): {', '.join(sorted(unknown))}; valid keys: {', '.join(sorted(names))}")
    for k in ("betas", "mean", "std", "crop_scale"):
        if k in d:
            d[k] = tuple(d[k])
    try:
        return TrainConfig(**d).validate()
    except TypeError as e:
        raise UserError(f"bad config: {e}") from None
