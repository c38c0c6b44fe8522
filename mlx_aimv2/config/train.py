"""Training configuration: TrainConfig, one table of keys (each with its type, range, help, the
objectives that read it and whether a resumed run may change it), read from TOML / YAML / JSON and
`--set key=value` flags. The encoder presets it names live in config/model.py."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from ..errors import UserError, is_file_fault
from .model import ENCODERS, DecoderConfig, VisionConfig, vision_preset

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
from ..preprocess import CLIP_MEAN, CLIP_STD


def key(default, kind, low=None, high=None, help: str = "", objectives: tuple = (), needs: tuple = (), resumable=False):
    """A config key: its default, type (a type, a tuple of types, a tuple of choices, or (float, n)
    for n numbers), inclusive bounds, help, the objectives that read it (none: every one), the
    setting it only makes sense with (`needs`: (key, value)), and whether a resumed run may change it."""
    meta = dict(kind=kind, low=low, high=high, help=help, objectives=objectives, needs=needs, resumable=resumable)
    if default is dict:
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Every training key, each with its type, range and help in one place (key())."""

    data: str = key("", str, help="captions file / folder / tar shards", resumable=True)
    images: Optional[str] = key(
        None,
        (str, type(None)),
        help="root for relative image paths (default: the captions file's folder)",
        resumable=True,
    )
    out: str = key("runs/aimv2", str, resumable=True)
    encoder: str = key("tiny", str, help="a preset in ENCODERS, ignored when `init` is given")
    init: Optional[str] = key(
        None, (str, type(None)), help="start the encoder from this checkpoint (hub id, folder, file)"
    )
    image_size: int = key(224, int, 2, 4096)
    patch_size: int = key(14, int, 1, 64)
    decoder: dict = key(
        dict, dict, help="DecoderConfig fields overriding the preset's", objectives=("aimv2", "image", "text")
    )
    tokenizer: Optional[str] = key(
        None, (str, type(None)), help="a tokenizer.json; default: train a BPE on the captions"
    )
    vocab_size: int = key(1024, int, 260, 1_000_000, help="for that BPE")
    context_length: int = key(77, int, 2, 4096)
    objective: str = key(
        "aimv2", str, help="aimv2 | image (AIMv1-like) | text (captioning) | lit (LiT tuning of `init`) | classify"
    )
    tune: str = key(
        "full",
        ("full", "lora", "head"),
        help="what trains: full | lora (adapters on the frozen encoder) | head (the encoder frozen)",
    )
    lora_rank: int = key(8, int, 1, 4096, needs=("tune", "lora"))
    lora_alpha: float = key(
        16.0, float, 1e-6, help="the adapters' output is scaled by alpha / rank", needs=("tune", "lora")
    )
    lora_layers: int = key(0, int, 0, help="adapt the last N blocks (0: all)", needs=("tune", "lora"))
    lora_targets: tuple = key(
        ("qkv", "proj", "fc1", "fc2", "fc3"),
        (list, tuple),
        help="which linear layers of a block",
        needs=("tune", "lora"),
    )
    merge_lora: bool = key(
        True,
        bool,
        help="the exported encoder: adapters merged in, or kept beside it (adapters.safetensors)",
        needs=("tune", "lora"),
    )
    layer_decay: float = key(
        1.0,
        float,
        1e-3,
        1.0,
        help="full fine-tuning: block i of d learns at lr * layer_decay ** (d - i)",
        needs=("tune", "full"),
    )
    classes: Optional[str] = key(
        None,
        (str, type(None)),
        help="classify with a labels file: a .txt of class names (default: the file's labels)",
        objectives=("classify",),
    )
    alpha: float = key(0.4, float, 0.0, objectives=("aimv2",))
    prefix_attention: bool = key(True, bool, objectives=("aimv2", "image", "text"))
    batch_size: int = key(32, int, 1, help="global batch (all ranks, all accumulation steps)")
    accum: int = key(1, int, 1)
    steps: int = key(1000, int, 1, resumable=True)
    lr: float = key(1e-3, float, 1e-12, 10.0, resumable=True)
    min_lr: float = key(1e-5, float, 0.0, 10.0, resumable=True)
    warmup: int = key(100, int, 0, resumable=True)
    weight_decay: float = key(1e-4, float, 0.0)
    betas: tuple = key((0.9, 0.95), (float, 2), 0.0, 0.9999999)
    eps: float = key(1e-8, float, 1e-30, 1.0)
    clip: float = key(1.0, float, 0.0)
    dtype: str = key("float32", ("float32", "bfloat16"), help="float32 | bfloat16 (compute; master weights stay fp32)")
    checkpointing: bool = key(False, bool, help="recompute blocks in the backward pass to save memory")
    save_every: int = key(500, int, 1, resumable=True)
    keep: int = key(2, int, 1, resumable=True)
    log_every: int = key(10, int, 1, resumable=True)
    seed: int = key(0, int, 0, 2**31 - 1)
    threads: int = key(2, int, 1, 256, help="loader threads: decode, augment and tokenise", resumable=True)
    shuffle_buffer: int = key(
        4096, int, 1, 10_000_000, help="samples the stream draws from at random (shard order is reshuffled each epoch)"
    )
    eval_every: int = key(
        0, int, 0, help="steps between k-NN probes of the encoder on eval_data (0: none)", resumable=True
    )
    eval_data: Optional[str] = key(
        None, (str, type(None)), help="a labelled folder (one folder per class), or a synthetic set", resumable=True
    )
    crop_scale: tuple = key(
        (0.4, 1.0), (float, 2), 1e-6, 1.0, help="random resized crop: fraction of the image area kept"
    )
    collective_timeout: float = key(
        600.0, float, 1.0, help="data parallel: seconds without a finished step before a rank gives up", resumable=True
    )
    mirror_captions: bool = key(
        False, bool, help="flipped images get left/right swapped in their caption (synthetic sets)"
    )
    hflip: bool = key(
        True, bool, help="random horizontal flips; off for labels that a flip changes (digits, text, left/right)"
    )
    lit_loss: str = key(
        "softmax",
        ("softmax", "sigmoid"),
        help="LiT tuning: softmax (CLIP, as the published LiT) | sigmoid (SigLIP)",
        objectives=("lit",),
    )
    text: dict = key(
        dict,
        dict,
        help="LiT tuning: the new text tower's hidden_size, depth, num_heads, mlp_hidden",
        objectives=("lit",),
    )
    projection_dim: int = key(
        256,
        int,
        1,
        65536,
        help="LiT tuning: the shared embedding's width (a LiT init keeps its own)",
        objectives=("lit",),
    )
    mean: tuple = key(CLIP_MEAN, (float, 3), 0.0, 1.0)
    std: tuple = key(CLIP_STD, (float, 3), 1e-6, 10.0)

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

# the nested tables' keys: (type, low, high), as key() takes them
_NESTED = {
    "decoder.width": (int, 8, 65536),
    "decoder.depth": (int, 1, 256),
    "decoder.num_heads": (int, 1, 512),
    "decoder.mlp_hidden": ((int, type(None)), 1, None),
    "decoder.ratio": ((float, type(None)), 1e-3, 100.0),
    "decoder.vocab_size": (int, 2, None),
    "decoder.context_length": (int, 2, None),
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
    kind, lo, hi = _schema(key)
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


def _schema(name: str) -> tuple:
    """(type, low, high) of a key: the field's own, or a nested table's."""
    if name in _NESTED:
        return _NESTED[name]
    meta = TrainConfig.__dataclass_fields__[name].metadata
    return meta["kind"], meta["low"], meta["high"]


# What a resumed run may change; everything else is fixed by the checkpoint it continues.
RESUMABLE = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata["resumable"]}


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
            if not is_file_fault(e):
                raise
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


def saved_run_config(d: dict) -> TrainConfig:
    """A run's config as its checkpoint recorded it (every key, defaults included): checked for type
    and range, not for keys given without their setting (none of them was given now)."""
    return build_config(d, given_now=False)


def build_config(d: dict, saved: Optional[dict] = None, given_now: bool = True) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    if saved is not None:
        changed = sorted(k for k, v in d.items() if k not in RESUMABLE and json.loads(json.dumps(v)) != saved.get(k))
        if changed:
            raise UserError(
                f"a resumed run keeps its {', '.join(changed)}; only {', '.join(sorted(RESUMABLE))} "
                f"may change (or start a new run in another --out)"
            )
    given = dict(d)
    if saved is not None:
        d = {**{k: v for k, v in saved.items() if k in names}, **d}
    for k in ("betas", "mean", "std", "crop_scale", "lora_targets"):
        if isinstance(d.get(k), list):
            d[k] = tuple(d[k])
    cfg = TrainConfig(**d).validate()
    if given_now:
        _check_given(cfg, given)
    return cfg


def _check_given(cfg: TrainConfig, given: dict) -> None:
    """A key given for another objective, or without the setting it works with, is refused in one
    line: never silently ignored (`lora_rank` alone would otherwise train every weight)."""
    fields = TrainConfig.__dataclass_fields__
    for name, value in given.items():
        meta, f = fields[name].metadata, fields[name]
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if meta["objectives"] and json.loads(json.dumps(value)) == json.loads(json.dumps(default)):
            continue  # an objective's key at its default (a shared config file) changes nothing
        if meta["objectives"] and cfg.objective not in meta["objectives"]:
            raise UserError(
                f"config key '{name}' is read only by objective {' / '.join(meta['objectives'])}, and this run's "
                f"objective is '{cfg.objective}'; drop it, or set objective = {meta['objectives'][0]}"
            )
        if meta["needs"] and getattr(cfg, meta["needs"][0]) != meta["needs"][1]:
            k, v = meta["needs"]
            raise UserError(
                f"config key '{name}' applies to {k} = {v}, and this run has {k} = {getattr(cfg, k)}; "
                f'add --set {k}={v} (or `{k} = "{v}"` in the config file)'
            )
