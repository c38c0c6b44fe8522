"""MLX's own checkpoint folders: the weights whole or in shards as mlx-lm writes them, config.json
(with the folder's kind), preprocessor_config.json and the card, written whole (atomic.write_folder);
and weights loaded into a module strictly, with an explicit dtype."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Callable, Optional

import mlx.core as mx
from mlx.utils import tree_flatten

from .. import kinds, modelcard
from ..atomic import write_folder
from ..config import ModelConfig
from ..errors import UserError
from ..paths import children
from ..preprocess import CLIP_MEAN, CLIP_STD
from .files import TOKENIZER_FILES


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
