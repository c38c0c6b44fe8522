"""Checkpoint layouts, detection, conversion and MLX save/load.

Every foreign layout is mapped in one place onto ml-aim's key names, which are also our module
names: ml-aim / legacy hub (conv OIHW), Apple's mlx_model.safetensors and our own files (conv
OHWI), transformers-native (split q/k/v, gate/up/down) and timm. The architecture comes from the
tensor shapes; a config.json adds only what shapes cannot tell (head counts, eps, eos id).
"""

from __future__ import annotations

import json
import math
import pickle
import re
import shutil
from pathlib import Path
from typing import Callable, Optional

import mlx.core as mx
from mlx.utils import tree_flatten
from safetensors.numpy import load_file as numpy_safetensors

from . import finetuned, hub, kinds, modelcard
from .atomic import check_whole, write_folder
from .config import ModelConfig, TextConfig, VisionConfig, architecture_name
from .errors import UserError, is_file_fault
from .models import build
from .paths import children
from .preprocess import CLIP_MEAN, CLIP_STD
from .quantize import is_quantized_weight, quantize, read_spec

TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json")  # what a LiT folder carries for its text side
WEIGHT_FILES = (
    "model.safetensors",
    "mlx_model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "model.bin",
    "model.pt",
    "pytorch_model.pt",
)

# ---------------------------------------------------------------------------- reading files


def find_weights(path: Path) -> Path:
    """The weight file inside a checkpoint folder (or the file itself)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder; give a hub id, a model name or a checkpoint path")
    check_whole(path.parent if path.is_file() else path)  # never a folder caught half-way through a replace
    if path.is_file():
        return path
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    candidates = [p for p in children(path, kind="file") if p.suffix in (".safetensors", ".bin", ".pt", ".pth")]
    if len(candidates) == 1:
        return candidates[0]
    raise UserError(
        f"{path}: no weights found (looked for {', '.join(WEIGHT_FILES[:4])}); "
        f"point at a checkpoint folder or a .safetensors file"
    )


def read_weights(file: Path) -> dict[str, mx.array]:
    """All tensors of a checkpoint file as MLX arrays, without torch for safetensors."""
    file = Path(file)
    try:
        if file.name.endswith(".index.json"):
            shards = _shard_names(file)
            out = {}
            for shard in shards:
                out.update(read_weights(file.parent / shard))
            return out
        if file.suffix == ".safetensors":
            return _read_safetensors(file)
        if file.suffix in (".bin", ".pt", ".pth"):
            return _read_torch_pickle(file)
    except UserError:
        raise
    except Exception as e:  # a truncated or foreign file: say which and why, in one line
        if not is_file_fault(e):
            raise
        raise UserError(
            f"{file}: cannot read checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            f"is it a complete .safetensors / .bin file?"
        ) from None
    raise UserError(f"{file}: unknown checkpoint type '{file.suffix}'; use .safetensors, .bin or .pt")


def _shard_names(index: Path) -> list[str]:
    """The shard files a model.safetensors.index.json names: {"weight_map": {tensor: file}}, each file
    beside the index (a name that climbs out of the folder is refused)."""
    try:
        data = json.loads(index.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{index}: not valid JSON ({e}); re-download or re-export the checkpoint") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise UserError(
            f'{index}: not a shard index (it needs {{"weight_map": {{tensor name: shard file}}}}); '
            f"re-download or re-export the checkpoint"
        )
    values = list(weight_map.values())
    bad = next((n for n in values if not isinstance(n, str) or Path(n).name != n or n in ("", ".", "..")), None)
    if bad is not None:
        raise UserError(
            f"{index}: weight_map names {bad!r} as a shard; each value must be a file name beside the index"
        )
    return sorted(set(values))


def _read_safetensors(file: Path) -> dict[str, mx.array]:
    """MLX reads every safetensors dtype but float64 (F64: what a `.double()` PyTorch model saves);
    such a file is read through numpy and its float64 tensors become float32 (Metal has no float64)."""
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n)) if 0 < n < 100_000_000 else {}
    if not any(isinstance(v, dict) and v.get("dtype") == "F64" for v in header.values()):
        return mx.load(str(file))
    return {
        k: mx.array(v.astype("float32") if v.dtype == "float64" else v) for k, v in numpy_safetensors(str(file)).items()
    }


def _read_torch_pickle(file: Path) -> dict[str, mx.array]:
    try:
        import torch
    except ImportError:
        raise UserError(
            f"{file}: reading a PyTorch pickle needs torch (pip install torch), or give the .safetensors file instead"
        ) from None
    # weights_only: never unpickle arbitrary objects
    try:
        sd = torch.load(str(file), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(
            f"{file}: refused - this pickle holds Python objects beyond tensors, i.e. code that would "
            f"run on loading, and mlx-aimv2 never runs it. If you trust the file, make a safetensors "
            f"copy in PyTorch (safetensors.torch.save_file(torch.load(f), 'model.safetensors')) and "
            f"convert that"
        ) from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    out = {}
    for k, t in sd.items():
        if not hasattr(t, "numpy"):
            continue
        if t.dtype == torch.bfloat16:  # numpy has no bf16: go through the raw bits
            out[k] = mx.array(t.view(torch.uint16).numpy()).view(mx.bfloat16)
        else:
            out[k] = mx.array(t.numpy())
    return out


def read_config_json(folder: Path) -> Optional[dict]:
    f = Path(folder) / "config.json"
    if not f.is_file():
        return None
    try:
        d = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{f}: not valid JSON ({e}); fix or delete it") from None
    if not isinstance(d, dict):
        raise UserError(f"{f}: must hold a JSON object (a table of keys), not a {type(d).__name__}; fix or delete it")
    return d


# ---------------------------------------------------------------------------- layouts

# transformers-native names -> ours (ml-aim's), one table per part. Read both ways: to_mlx loads with
# them, export.py writes transformers' files with their inverse. A block's q/k/v projections are one
# fused qkv matrix here (HF_QKV), and LiT's towers sit under the prefixes of HF_TOWERS.
HF_BLOCK = {
    "rms_norm1.weight": "norm_1.weight",
    "rms_norm2.weight": "norm_2.weight",
    "attention.out_proj.weight": "attn.proj.weight",
    "ffn.gate_proj.weight": "mlp.fc1.weight",
    "ffn.up_proj.weight": "mlp.fc3.weight",
    "ffn.down_proj.weight": "mlp.fc2.weight",
}
HF_QKV = ("attention.q_proj.weight", "attention.k_proj.weight", "attention.v_proj.weight"), "attn.qkv.weight"
HF_VISION = {
    "embeddings.patch_embed.weight": "preprocessor.patchifier.proj.weight",
    "embeddings.patch_embed.bias": "preprocessor.patchifier.proj.bias",
    "embeddings.rms_norm.weight": "preprocessor.patchifier.norm.weight",
    "embeddings.position_embedding.weight": "preprocessor.pos_embed",
    "rms_norm.weight": "trunk.post_trunk_norm.weight",
    "head.k_proj.weight": "head.k.weight",
    "head.v_proj.weight": "head.v.weight",
    "head.output_proj.weight": "head.linear.weight",
    "head.output_proj.bias": "head.linear.bias",
    "head.cls_token": "head.cls_token",
}
HF_TEXT = {
    "embeddings.token_embedding.weight": "preprocessor.text_embedding.weight",
    "embeddings.position_embedding.weight": "preprocessor.positional_embedding",
    "rms_norm.weight": "trunk.post_trunk_norm.weight",
}
HF_TOP = {
    "visual_projection.weight": "image_projector.weight",
    "text_projection.weight": "text_projector.weight",
    "logit_scale": "log_logit_scale",
}
HF_TOWERS = {"vision_model.": ("image_encoder.", HF_VISION), "text_model.": ("text_encoder.", HF_TEXT)}
HF_LAYER = "encoder.layers.{}."  # transformers' block prefix; ours is trunk.blocks.{}.
_HF_LAYER_KEY = re.compile(re.escape(HF_LAYER).replace(r"\{\}", r"(\d+)") + "(.*)")  # HF_LAYER read back
_TIMM = [
    (r"patch_embed\.proj\.(weight|bias)", r"preprocessor.patchifier.proj.\1"),
    (r"patch_embed\.norm\.weight", "preprocessor.patchifier.norm.weight"),
    (r"pos_embed", "preprocessor.pos_embed"),
    (r"norm\.weight", "trunk.post_trunk_norm.weight"),
    (r"blocks\.(\d+)\.norm1\.weight", r"trunk.blocks.\1.norm_1.weight"),
    (r"blocks\.(\d+)\.norm2\.weight", r"trunk.blocks.\1.norm_2.weight"),
    (r"blocks\.(\d+)\.mlp\.fc1_g\.weight", r"trunk.blocks.\1.mlp.fc1.weight"),
    (r"blocks\.(\d+)\.mlp\.fc1_x\.weight", r"trunk.blocks.\1.mlp.fc3.weight"),
    (r"blocks\.(\d+)\.(attn\.qkv|attn\.proj|mlp\.fc2)\.weight", r"trunk.blocks.\1.\2.weight"),
]


def detect_layout(keys) -> str:
    """'ml-aim' (also Apple's MLX file and ours: the conv layout is told apart in to_mlx) |
    'transformers' | 'timm' | 'unknown'."""
    keys = set(keys)
    if any(k.endswith("preprocessor.patchifier.proj.weight") for k in keys):
        return "ml-aim"
    if any(k.endswith("embeddings.patch_embed.weight") for k in keys):
        return "transformers"
    if "patch_embed.proj.weight" in keys and any(k.startswith("blocks.") for k in keys):
        return "timm"
    return "unknown"


def _apply(table, key: str) -> Optional[str]:
    for pat, rep in table:
        if re.fullmatch(pat, key):
            return re.sub(pat, rep, key)
    return None


def _from_transformers(w: dict) -> dict:
    out, unmapped = {}, []
    qkv: dict[str, dict] = {}
    towers = [(src, dst, table) for src, (dst, table) in HF_TOWERS.items()] + [("", "", HF_VISION)]
    for key, v in w.items():
        if key in HF_TOP:
            out[HF_TOP[key]] = v.reshape(()) if key == "logit_scale" else v
            continue
        src, dst, table = next(t for t in towers if key.startswith(t[0]))
        rest = key[len(src) :]
        m = _HF_LAYER_KEY.fullmatch(rest)
        if m and m.group(2) in HF_QKV[0]:
            qkv.setdefault(f"{dst}trunk.blocks.{m.group(1)}.{HF_QKV[1]}", {})[m.group(2)] = v
        elif m and m.group(2) in HF_BLOCK:
            out[f"{dst}trunk.blocks.{m.group(1)}.{HF_BLOCK[m.group(2)]}"] = v
        elif not m and rest in table:
            new = dst + table[rest]
            out[new] = v[None] if new.endswith("preprocessor.pos_embed") and v.ndim == 2 else v
        else:
            unmapped.append(key)
    for key, parts in qkv.items():
        if set(parts) != set(HF_QKV[0]):
            raise UserError(f"checkpoint has an incomplete q/k/v set for {key}")
        out[key] = mx.concatenate([parts[name] for name in HF_QKV[0]], axis=0)
    for key in unmapped:  # keep them, so strict loading names them
        out[key] = w[key]
    return out


def to_mlx(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """Any supported layout -> our (ml-aim key, OHWI conv) layout. Idempotent."""
    layout = detect_layout(weights)
    if layout == "transformers":
        weights = _from_transformers(weights)
    elif layout == "timm":
        weights = {(_apply(_TIMM, k) or k): v for k, v in weights.items()}
    elif layout == "unknown":
        sample = ", ".join(sorted(weights)[:3])
        raise UserError(f"not an AIMv2 checkpoint: unrecognised keys ({sample}, ...)")
    weights = {k: v for k, v in weights.items() if not k.endswith("num_batches_tracked")}
    for key in [k for k in weights if k.endswith("patchifier.proj.weight")]:
        w = weights[key]
        if w.ndim == 4 and w.shape[1] in (1, 3) and w.shape[-1] not in (1, 3):  # OIHW -> OHWI
            weights[key] = w.transpose(0, 2, 3, 1)
    if "log_logit_scale" in weights:
        weights["log_logit_scale"] = weights["log_logit_scale"].reshape(())
    return weights


# ---------------------------------------------------------------------------- configs


def _depth(weights: dict, prefix: str) -> int:
    idx = [int(m.group(1)) for k in weights if (m := re.match(re.escape(prefix) + r"trunk\.blocks\.(\d+)\.", k))]
    return max(idx) + 1 if idx else 0


def infer_config(weights: dict[str, mx.array], hints: Optional[dict] = None, where: str = "config.json") -> ModelConfig:
    """The architecture from tensor shapes (our layout); `hints` (a config.json) gives head counts etc.
    and must agree with the shapes."""
    hints = hints or {}
    odd = sorted(
        k
        for k, v in weights.items()
        if not mx.issubdtype(v.dtype, mx.floating) and not is_quantized_weight(k, weights) and not k.endswith(".scales")
    )
    if odd:
        raise UserError(
            f"{where.rsplit('/', 1)[0]}: tensor {odd[0]} is {str(weights[odd[0]].dtype).split('.')[-1]}; AIMv2 weights are "
            f"floating point - the file is damaged or not a model"
        )
    lit = any(k.startswith("image_encoder.") for k in weights)
    vp = "image_encoder." if lit else ""
    try:
        conv = weights[f"{vp}preprocessor.patchifier.proj.weight"]
        d, patch = conv.shape[0], conv.shape[1]
        pos = weights.get(f"{vp}preprocessor.pos_embed")
        mlp = weights[f"{vp}trunk.blocks.0.mlp.fc1.weight"].shape[0]
    except KeyError as e:
        raise UserError(f"checkpoint lacks the tensor {e.args[0]}; is it an AIMv2 encoder?") from None
    vh = _hints(hints, "vision", "vision_config", where)
    image_size = None
    if pos is not None:
        side = int(round(pos.shape[1] ** 0.5)) if pos.ndim == 3 else 0
        if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != d or side * side != pos.shape[1]:
            raise UserError(
                f"{where.rsplit('/', 1)[0]}: the position table has shape {tuple(pos.shape)}; it must be "
                f"(1, n*n, {d}) - the checkpoint is damaged"
            )
        image_size = side * patch
    vision = VisionConfig(
        hidden_size=d,
        depth=_depth(weights, vp),
        num_heads=vh.get("heads", max(d // 128, 1)),
        mlp_hidden=mlp,
        patch_size=patch,
        image_size=image_size,
        num_channels=conv.shape[-1],
        eps=vh.get("eps", 1e-5),
        use_head=f"{vp}head.cls_token" in weights,
        head_bias=f"{vp}head.linear.bias" in weights,
    )
    _check_against(vision, vh, where)
    if not lit:
        return ModelConfig(kind=kinds.VISION_MODEL, vision=vision)
    tp = "text_encoder."
    emb = weights[f"{tp}preprocessor.text_embedding.weight"]
    th = _hints(hints, "text", "text_config", where)
    text = TextConfig(
        vocab_size=emb.shape[0],
        hidden_size=emb.shape[1],
        depth=_depth(weights, tp),
        num_heads=th.get("heads", max(emb.shape[1] // 128, 1)),
        mlp_hidden=weights[f"{tp}trunk.blocks.0.mlp.fc1.weight"].shape[0],
        context_length=weights[f"{tp}preprocessor.positional_embedding"].shape[0],
        eos_token_id=th.get("eos", 49407),
        eps=th.get("eps", 1e-5),
    )
    _check_against(text, th, where)
    return ModelConfig(
        kind=kinds.LIT_MODEL,
        vision=vision,
        text=text,
        projection_dim=weights["image_projector.weight"].shape[0],
        max_logit_scale=float(hints.get("max_logit_scale", 100.0)),
    )


def _field(d: dict, key: str, kind, where: str, low=None):
    """d[key] checked: an int / float (not a bool) / bool, at least `low`; one clear line otherwise."""
    v = d[key]
    if kind is float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    else:
        ok = isinstance(v, kind) and (kind is bool or not isinstance(v, bool))
    if not ok or (low is not None and v < low):
        want = {int: "an integer", float: "a number", bool: "true or false"}[kind]
        raise UserError(f"{where}: '{key}' is {v!r}; it must be {want}" + (f" >= {low}" if low is not None else ""))
    return v


# config.json keys that the tensors also tell: (ours, transformers') -> VisionConfig / TextConfig field
_VISION_KEYS = [
    ("hidden_size", "hidden_size", "hidden_size"),
    ("depth", "num_hidden_layers", "depth"),
    ("mlp_hidden", "intermediate_size", "mlp_hidden"),
    ("patch_size", "patch_size", "patch_size"),
]
_TEXT_KEYS = [
    ("vocab_size", "vocab_size", "vocab_size"),
    ("hidden_size", "hidden_size", "hidden_size"),
    ("depth", "num_hidden_layers", "depth"),
    ("mlp_hidden", "intermediate_size", "mlp_hidden"),
]


def _section(h: dict, ours: str, theirs: str, where: str) -> tuple[dict, bool]:
    """The vision / text part of a config.json (ours or transformers'), and whether it is ours."""
    mine = h.get("format") == kinds.FORMAT
    sec = h.get(ours) if mine else (h.get(theirs) or (h if ours == "vision" else {}))
    if not isinstance(sec, dict) or (mine and not sec):
        raise UserError(f"{where}: '{ours if mine else theirs}' must be a table of keys; re-convert the checkpoint")
    return sec, mine


def _hints(h: dict, ours: str, theirs: str, where: str) -> dict:
    """Head count, eps (and eos) from a config.json, checked; plus the shape keys to compare."""
    sec, mine = _section(h, ours, theirs, where)
    names = {"heads": "num_heads" if mine else "num_attention_heads", "eps": "eps" if mine else "rms_norm_eps"}
    out = {}
    if names["heads"] in sec:
        out["heads"] = _field(sec, names["heads"], int, where, 1)
    if names["eps"] in sec:
        out["eps"] = _field(sec, names["eps"], float, where)
        if not 0 < out["eps"] < 1:
            raise UserError(f"{where}: '{names['eps']}' is {out['eps']}; it must lie between 0 and 1")
    if ours == "text" and sec.get("eos_token_id") is not None:
        out["eos"] = _field(sec, "eos_token_id", int, where, 0)
    keys = _VISION_KEYS if ours == "vision" else _TEXT_KEYS
    out["shape"] = {
        field: (key, _field(sec, key, int, where, 1))
        for mine_key, their_key, field in keys
        for key in [mine_key if mine else their_key]
        if key in sec
    }
    return out


def _check_against(cfg, hints: dict, where: str) -> None:
    """What config.json says about the architecture must be what the tensors hold."""
    for field, (key, said) in hints["shape"].items():
        if getattr(cfg, field) != said:
            raise UserError(
                f"{where}: '{key}' says {said} but the weights hold {getattr(cfg, field)}; "
                f"the checkpoint is incomplete or the config belongs to another model"
            )
    if cfg.num_heads < 1 or cfg.hidden_size % cfg.num_heads:
        raise UserError(f"{where}: {cfg.num_heads} heads do not divide the width {cfg.hidden_size}")


# ---------------------------------------------------------------------------- loading & saving


def load_checkpoint(name_or_path: str, revision: Optional[str] = None, dtype=None):
    """(module, config, folder) for any supported checkpoint, converted in memory."""
    path = hub.resolve(str(name_or_path), revision)
    file = find_weights(path)
    folder = file.parent
    weights = to_mlx(read_weights(file))
    hints = read_config_json(folder) or {}
    config = infer_config(weights, hints, str(folder / "config.json"))
    packed = any(is_quantized_weight(k, weights) for k in weights)
    if hints.get("format") == kinds.FORMAT and "quantization" in hints:
        config.quantization = read_spec(hints["quantization"], str(folder / "config.json"))
    elif packed:
        raise UserError(
            f"{file}: holds quantized weights but {folder / 'config.json'} does not say how they were "
            f"quantized; keep the config.json that convert -q wrote beside it"
        )
    given = hints.get("name") if hints.get("format") == kinds.FORMAT and isinstance(hints.get("name"), str) else None
    config.name = given or (str(name_or_path) if hub.is_hub_id(str(name_or_path)) else architecture_name(config))
    module = build(config)
    if config.quantization:
        quantize(module, config.quantization)  # the layers' shapes, before the weights go in
    load_into(module, weights, str(file), dtype)
    if not kinds.is_lit(config) and finetuned.apply_adapter(module, folder):  # LoRA kept beside the encoder
        mx.eval(module.parameters())
    return module, config, folder


def load_into(model, weights: dict[str, mx.array], source: str, dtype=None):
    """Strict load (names and shapes) and an explicit dtype cast: strict loading ignores dtype."""
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        msg = " ".join(str(e).split())
        if len(msg) > 300:
            msg = msg[:300] + "..."
        raise UserError(f"{source}: checkpoint does not fit the model: {msg}") from None
    if dtype is None:  # the source's own float type (quantized layers' packed weights are integers)
        dtype = next((v.dtype for v in weights.values() if mx.issubdtype(v.dtype, mx.floating)), mx.float32)
        if dtype == mx.float64:  # Metal has no float64: the first op on the GPU would fail
            dtype = mx.float32
    model.set_dtype(dtype, predicate=lambda d: mx.issubdtype(d, mx.floating))
    mx.eval(model.parameters())
    return model


def save(
    model,
    config: ModelConfig,
    out_dir: Path,
    preprocessor: Optional[dict] = None,
    extra_files: tuple = (),
    metadata: Optional[dict] = None,
    overwrite: bool = False,
    weights: Optional[dict] = None,
    more: Optional[Callable[[Path], None]] = None,
    kind: Optional[str] = None,
    max_shard_size: Optional[int] = None,
    card: Optional[dict] = None,
) -> Path:
    """Write the weights (write_weights: one file, or shards over max_shard_size) + config.json +
    preprocessor_config.json atomically (atomic.write_folder).
    weights: these instead of the model's own; more(folder): writes further files into the folder.
    kind: what the folder is (kinds.MODEL_KINDS), recorded in its config.json; by default an encoder
    or a LiT model, by the config. card: base_model / fidelity / repo for the README.md model card
    every folder gets (modelcard.py)."""
    weights = dict(tree_flatten(model.parameters())) if weights is None else weights
    kind = kind or kinds.folder_kind(config)
    written: list = []

    def write(tmp: Path):
        written.extend(write_weights(tmp, weights, {"format": "mlx", **(metadata or {})}, max_shard_size))
        (tmp / "config.json").write_text(json.dumps(kinds.record(config.to_dict(), kind), indent=2) + "\n")
        pp = preprocessor or default_preprocessor(config)
        (tmp / "preprocessor_config.json").write_text(json.dumps(pp, indent=2) + "\n")
        copy_files(extra_files, tmp)
        modelcard.write(tmp, config, kind, **(card or {}))
        if more is not None:
            more(tmp)

    return write_folder(out_dir, write, overwrite, finish=lambda out: drop_stale_weights(out, written))


# -- weights, whole or in shards -------------------------------------------------------------------------

DEFAULT_SHARD_SIZE = 5 << 30  # mlx-lm's (5 GiB; transformers 5.x saves 50 GB shards by default)
SHARD_NAME = "model-{:05d}-of-{:05d}.safetensors"
SHARD_INDEX = "model.safetensors.index.json"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text) -> int:
    """'5GB', '500MB', '2GiB' or a number of bytes -> bytes (transformers' max_shard_size spelling)."""
    if isinstance(text, int) and not isinstance(text, bool):
        size = text
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
        unit = m.group(2).upper() if m else None
        if m is None or unit not in _UNITS:
            raise UserError(f"--max-shard-size {text!r}: give a size such as 5GB, 500MB or 2GiB")
        size = float(m.group(1)) * _UNITS[unit]
        if not size < 2**63:  # a number past any disk (or float's infinity): int() would overflow
            raise UserError(f"--max-shard-size {str(text)[:40]!r}: too large; give a size such as 5GB")
        size = int(size)
    if size < 1:
        raise UserError(f"--max-shard-size {text!r}: must be above zero")
    return size


def write_weights(folder: Path, weights: dict, metadata: dict, max_shard_size: Optional[int] = None) -> list[str]:
    """model.safetensors, or when the weights are over max_shard_size, model-0000k-of-0000n.safetensors
    shards (in the weights' order, a tensor never split) with model.safetensors.index.json, as
    transformers and mlx-lm write them. Returns the names written."""
    limit = DEFAULT_SHARD_SIZE if max_shard_size is None else max_shard_size
    total = sum(v.nbytes for v in weights.values())
    if total <= limit:
        mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata=metadata)
        return ["model.safetensors"]
    shards, size = [[]], 0
    for k, v in weights.items():
        if shards[-1] and size + v.nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(k)
        size += v.nbytes
    names = [SHARD_NAME.format(i + 1, len(shards)) for i in range(len(shards))]
    for name, keys in zip(names, shards):
        mx.save_safetensors(str(folder / name), {k: weights[k] for k in keys}, metadata=metadata)
    # mlx-lm's index: the total bytes and parameters (elements as stored), the map sorted by tensor name
    where = {k: n for n, keys in zip(names, shards) for k in keys}
    metadata = {"total_size": total, "total_parameters": sum(int(v.size) for v in weights.values())}
    index = {"metadata": metadata, "weight_map": {k: where[k] for k in sorted(where)}}
    (folder / SHARD_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return [*names, SHARD_INDEX]


def drop_stale_weights(folder: Path, written: list) -> None:
    """After writing into an existing folder: weight files of ours the new ones replace (a single file
    where shards were written, or older shards), so no reader finds the old weights first."""
    if not written:
        return
    ours = [
        *children(folder, "model-*-of-*.safetensors", kind="file"),
        folder / "model.safetensors",
        folder / SHARD_INDEX,
    ]
    for f in ours:
        if f.name not in written and f.is_file():
            f.unlink()


def tokenizer_files(folder: Path) -> tuple:
    """The tokenizer files a checkpoint folder holds (TOKENIZER_FILES), for a copy of it to carry."""
    return tuple(Path(folder) / n for n in TOKENIZER_FILES if (Path(folder) / n).is_file())


def copy_files(files, folder: Path) -> None:
    """Copy each file into `folder`; an entry is a path, or (path, the name it gets there)."""
    for f in files:
        src, name = f if isinstance(f, tuple) else (f, Path(f).name)
        shutil.copy(src, Path(folder) / name)


def default_preprocessor(config: ModelConfig) -> dict:
    v = config.vision
    native = v.native
    size = v.image_size or 224
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": not native,
        "size": {"shortest_edge": size},
        "resample": 3,
        "do_center_crop": not native,
        "crop_size": {"height": size, "width": size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "do_convert_rgb": True,
    }
