"""Training configuration: one dataclass, read from TOML / YAML and `--set key=value` flags, plus
the encoder presets from a tiny test model to AIMv2-L and beyond."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from ..errors import UserError
from .model import ENCODERS, DecoderConfig, VisionConfig, vision_preset

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
from ..preprocess import CLIP_MEAN, CLIP_STD


@dataclass
class TrainConfig:
    data: str = ""  # captions file / folder / tar shards
    images: Optional[str] = None  # root for relative image paths (default: the captions file's folder)
    out: str = "runs/aimv2"
    encoder: str = "tiny"  # a preset in ENCODERS, ignored when `init` is given
    init: Optional[str] = None  # start the encoder from this checkpoint (hub id, folder, file)
    image_size: int = 224
    patch_size: int = 14
    decoder: dict = field(default_factory=dict)  # DecoderConfig fields overriding the preset's
    tokenizer: Optional[str] = None  # a tokenizer.json; default: train a BPE on the captions
    vocab_size: int = 1024  # for that BPE
    context_length: int = 77
    objective: str = "aimv2"  # aimv2 | image (AIMv1-like) | text (captioning) | lit (LiT tuning of `init`) | classify
    tune: str = "full"  # what trains: full | lora (adapters on the frozen encoder) | head (the encoder frozen)
    lora_rank: int = 8
    lora_alpha: float = 16.0  # the adapters' output is scaled by alpha / rank
    lora_layers: int = 0  # adapt the last N blocks (0: all)
    lora_targets: tuple = ("qkv", "proj", "fc1", "fc2", "fc3")  # which linear layers of a block
    merge_lora: bool = True  # the exported encoder: adapters merged in, or kept beside it (adapter.safetensors)
    layer_decay: float = 1.0  # full fine-tuning: block i of d learns at lr * layer_decay ** (d - i)
    classes: Optional[str] = None  # classify with a labels file: a .txt of class names (default: the file's labels)
    alpha: float = 0.4
    prefix_attention: bool = True
    batch_size: int = 32  # global batch (all ranks, all accumulation steps)
    accum: int = 1
    steps: int = 1000
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup: int = 100
    weight_decay: float = 1e-4
    betas: tuple = (0.9, 0.95)
    eps: float = 1e-8
    clip: float = 1.0
    dtype: str = "float32"  # float32 | bfloat16 (compute; master weights stay fp32)
    checkpointing: bool = False  # recompute blocks in the backward pass to save memory
    save_every: int = 500
    keep: int = 2
    log_every: int = 10
    seed: int = 0
    threads: int = 2  # loader threads: decode, augment and tokenise
    shuffle_buffer: int = 4096  # samples the stream draws from at random (shard order is reshuffled each epoch)
    eval_every: int = 0  # steps between k-NN probes of the encoder on eval_data (0: none)
    eval_data: Optional[str] = None  # a labelled folder (one folder per class), or a synthetic set
    crop_scale: tuple = (0.4, 1.0)  # random resized crop: fraction of the image area kept
    collective_timeout: float = 600.0  # data parallel: seconds without a finished step before a rank gives up
    mirror_captions: bool = False  # flipped images get left/right swapped in their caption (synthetic sets)
    hflip: bool = True  # random horizontal flips; off for labels that a flip changes (digits, text, left/right)
    lit_loss: str = "softmax"  # LiT tuning: softmax (CLIP, as the published LiT) | sigmoid (SigLIP)
    text: dict = field(
        default_factory=dict
    )  # LiT tuning: the new text tower's hidden_size, depth, num_heads, mlp_hidden
    projection_dim: int = 256  # LiT tuning: the shared embedding's width (a LiT init keeps its own)
    mean: tuple = CLIP_MEAN
    std: tuple = CLIP_STD

    def validate(self) -> "TrainConfig":
        """One schema check for every key (type and range), then the rules that tie keys together."""
        for f in dataclasses.fields(self):
            _check(f.name, getattr(self, f.name))
        if self.init is None and self.encoder not in ENCODERS:
            raise UserError(f"unknown encoder preset '{self.encoder}'; use one of {', '.join(ENCODERS)} or --init")
        if self.image_size % self.patch_size:
            raise UserError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.image_size // self.patch_size < 2:
            raise UserError(f"image_size {self.image_size} gives fewer than 2x2 patches of {self.patch_size} px")
        if self.batch_size % self.accum:
            raise UserError(f"batch_size {self.batch_size} is not divisible by accum {self.accum}")
        if self.crop_scale[0] > self.crop_scale[1]:
            raise UserError(f"crop_scale {list(self.crop_scale)}: the first bound must not exceed the second")
        if self.min_lr > self.lr:
            raise UserError(f"min_lr {self.min_lr} is above lr {self.lr}")
        bad = set(self.decoder) - {f.name for f in dataclasses.fields(DecoderConfig)}
        if bad:
            raise UserError(f"unknown decoder config key(s): {', '.join(sorted(bad))}")
        for k, v in self.decoder.items():
            _check(f"decoder.{k}", v)
        bad = set(self.text) - {"hidden_size", "depth", "num_heads", "mlp_hidden"}
        if bad:
            raise UserError(
                f"unknown text config key(s): {', '.join(sorted(bad))}; use hidden_size, depth, num_heads, mlp_hidden"
            )
        for k, v in self.text.items():
            _check(f"text.{k}", v)
        if self.eval_every and not self.eval_data and self.objective != "classify":  # classify: val/ may do
            raise UserError(
                f"eval_every = {self.eval_every} needs eval_data: a labelled folder (one subfolder per class) "
                f"or a synthetic set"
            )
        if self.eval_every and self.objective == "lit":
            raise UserError("eval_every probes the encoder being pre-trained; objective 'lit' keeps it frozen")
        bad = [t for t in self.lora_targets if t not in LORA_TARGETS]
        if bad or not self.lora_targets:
            raise UserError(
                f"config key 'lora_targets' = {list(self.lora_targets)}: name some of {', '.join(LORA_TARGETS)}"
            )
        if self.tune != "full" and not self.init:
            raise UserError(
                f"tune = '{self.tune}' keeps the encoder's weights frozen: set init to a trained encoder "
                f"(a checkpoint folder, a hub id, demo, or a training run)"
            )
        if self.tune != "full" and self.objective == "lit":
            raise UserError("objective 'lit' keeps its encoder frozen already; drop tune")
        if self.layer_decay != 1.0 and self.tune != "full":
            raise UserError(
                f"layer_decay scales the encoder's learning rates; tune = '{self.tune}' does not train them"
            )
        if self.objective == "classify" and not self.init:
            raise UserError(
                "objective 'classify' fine-tunes a trained encoder: set init to one "
                "(a checkpoint folder, a hub id, demo, or a training run)"
            )
        if self.objective == "lit" and not self.init:
            raise UserError(
                "objective 'lit' tunes a text side onto a frozen encoder: set init to one "
                "(a checkpoint folder, a hub id, demo, or a training run)"
            )
        return self

    def vision(self) -> VisionConfig:
        return vision_preset(self.encoder, self.image_size, self.patch_size)

    def decoder_config(self, vocab_size: int) -> DecoderConfig:
        base = dict(ENCODERS.get(self.encoder, ((0, 0, 0), {}))[1])
        base.update(self.decoder)
        return DecoderConfig(**{**base, "vocab_size": vocab_size, "context_length": self.context_length})

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


LORA_TARGETS = ("qkv", "proj", "fc1", "fc2", "fc3")  # a block's linear layers (models/layers.py)

# key: (type, low, high) - inclusive bounds, None for none. Floats accept ints; ints refuse 3.5 and true.
_SCHEMA = {
    "data": (str, None, None),
    "images": ((str, type(None)), None, None),
    "out": (str, None, None),
    "encoder": (str, None, None),
    "init": ((str, type(None)), None, None),
    "tokenizer": ((str, type(None)), None, None),
    "image_size": (int, 2, 4096),
    "patch_size": (int, 1, 64),
    "vocab_size": (int, 260, 1_000_000),
    "context_length": (int, 2, 4096),
    "objective": (str, None, None),  # a name in train/objectives (checked there)
    "tune": (("full", "lora", "head"), None, None),
    "lora_rank": (int, 1, 4096),
    "lora_alpha": (float, 1e-6, None),
    "lora_layers": (int, 0, None),
    "lora_targets": ((list, tuple), None, None),
    "merge_lora": (bool, None, None),
    "layer_decay": (float, 1e-3, 1.0),
    "classes": ((str, type(None)), None, None),
    "alpha": (float, 0.0, None),
    "prefix_attention": (bool, None, None),
    "batch_size": (int, 1, None),
    "accum": (int, 1, None),
    "steps": (int, 1, None),
    "lr": (float, 1e-12, 10.0),
    "min_lr": (float, 0.0, 10.0),
    "warmup": (int, 0, None),
    "weight_decay": (float, 0.0, None),
    "eps": (float, 1e-30, 1.0),
    "clip": (float, 0.0, None),
    "dtype": (("float32", "bfloat16"), None, None),
    "checkpointing": (bool, None, None),
    "save_every": (int, 1, None),
    "keep": (int, 1, None),
    "log_every": (int, 1, None),
    "seed": (int, 0, 2**31 - 1),
    "threads": (int, 1, 256),
    "shuffle_buffer": (int, 1, 10_000_000),
    "eval_every": (int, 0, None),
    "eval_data": ((str, type(None)), None, None),
    "collective_timeout": (float, 1.0, None),
    "mirror_captions": (bool, None, None),
    "hflip": (bool, None, None),
    "decoder": (dict, None, None),
    "betas": ((float, 2), 0.0, 0.9999999),
    "crop_scale": ((float, 2), 1e-6, 1.0),
    "mean": ((float, 3), 0.0, 1.0),
    "std": ((float, 3), 1e-6, 10.0),
    "decoder.width": (int, 8, 65536),
    "decoder.depth": (int, 1, 256),
    "decoder.num_heads": (int, 1, 512),
    "decoder.mlp_hidden": ((int, type(None)), 1, None),
    "decoder.ratio": ((float, type(None)), 1e-3, 100.0),
    "decoder.vocab_size": (int, 2, None),
    "decoder.context_length": (int, 2, None),
    "lit_loss": (("softmax", "sigmoid"), None, None),
    "text": (dict, None, None),
    "projection_dim": (int, 1, 65536),
    "text.hidden_size": (int, 8, 65536),
    "text.depth": (int, 1, 256),
    "text.num_heads": (int, 1, 512),
    "text.mlp_hidden": ((int, type(None)), 1, None),
}


def _is(v, t) -> bool:
    if t is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if t is int:
        return isinstance(v, int) and not isinstance(v, bool)
    return isinstance(v, t)


def _check(key: str, v) -> None:
    """Raise one UserError naming `key` when v has the wrong type or lies out of range."""
    kind, lo, hi = _SCHEMA[key]
    shown = list(v) if isinstance(v, tuple) else v
    if isinstance(kind, tuple) and all(isinstance(k, str) for k in kind):  # a choice
        if v not in kind:
            raise UserError(f"config key '{key}' = {shown!r}: use one of {', '.join(kind)}")
        return
    if isinstance(kind, tuple) and isinstance(kind[1], int):  # a fixed-length list of numbers
        t, n = kind
        if not (isinstance(v, (list, tuple)) and len(v) == n and all(_is(x, t) for x in v)):
            raise UserError(f"config key '{key}' = {shown!r}: give a list of {n} numbers")
        items = v
    else:
        types = kind if isinstance(kind, tuple) else (kind,)
        if not any(_is(v, t) for t in types):
            want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise UserError(f"config key '{key}' = {shown!r}: must be {want}")
        items = [v] if _is(v, float) else []
    for x in items:
        if not math.isfinite(x):  # NaN passes every comparison below
            raise UserError(f"config key '{key}' = {shown!r}: must be a finite number")
        if (lo is not None and x < lo) or (hi is not None and x > hi):
            span = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
            raise UserError(f"config key '{key}' = {shown!r}: must be {span}")


# What a resumed run may change; everything else is fixed by the checkpoint it continues.
RESUMABLE = {
    "data",
    "images",
    "out",
    "steps",
    "lr",
    "min_lr",
    "warmup",
    "save_every",
    "keep",
    "log_every",
    "threads",
    "collective_timeout",
    "eval_every",
    "eval_data",
}


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def load_config(
    file: Optional[Path] = None, overrides: dict | None = None, sets: list[str] = (), saved: Optional[dict] = None
) -> TrainConfig:
    """File (TOML / YAML / JSON), then `--set k=v` strings, then explicit flags; unknown keys are errors.
    `saved`: the config of the run being resumed, the base that those may change only in RESUMABLE keys."""
    return build_config(read_config(file, overrides, sets), saved)


def read_config(file: Optional[Path] = None, overrides: dict | None = None, sets: list[str] = ()) -> dict:
    """The keys given by a file, `--set` strings and flags, unchecked."""
    d: dict = {}
    if file is not None:
        file = Path(file)
        if not file.is_file():
            raise UserError(f"{file}: no such config file")
        try:
            if file.suffix == ".toml":
                d = tomllib.loads(file.read_text())
            elif file.suffix in (".yaml", ".yml"):
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
        table = k.split(".", 1)[0]
        if "." in k and table in ("decoder", "text"):
            if not isinstance(d.get(table, {}), dict):
                raise UserError(f"--set {k}: the config's '{table}' is not a table of keys")
            d.setdefault(table, {})[k.split(".", 1)[1]] = _parse_value(v)
        else:
            d[k] = _parse_value(v)
    d.update({k: v for k, v in (overrides or {}).items() if v is not None})
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(d) - names
    if unknown:
        src = f"{file}: " if file else ""
        raise UserError(
            f"{src}unknown config key(s): {', '.join(sorted(unknown))}; valid keys: {', '.join(sorted(names))}"
        )
    return d


def build_config(d: dict, saved: Optional[dict] = None) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    if saved is not None:
        changed = sorted(k for k, v in d.items() if k not in RESUMABLE and json.loads(json.dumps(v)) != saved.get(k))
        if changed:
            raise UserError(
                f"a resumed run keeps its {', '.join(changed)}; only {', '.join(sorted(RESUMABLE))} "
                f"may change (or start a new run in another --out)"
            )
        d = {**{k: v for k, v in saved.items() if k in names}, **d}
    for k in ("betas", "mean", "std", "crop_scale", "lora_targets"):
        if isinstance(d.get(k), list):
            d[k] = tuple(d[k])
    return TrainConfig(**d).validate()
