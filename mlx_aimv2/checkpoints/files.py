"""The files a checkpoint is: a folder, a weight file, shards with their index, a PyTorch pickle;
read into MLX arrays (safetensors without torch), each fault one line naming the file."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Optional

import mlx.core as mx
from safetensors.numpy import load_file as numpy_safetensors

from ..atomic import check_whole
from ..errors import UserError, is_file_fault
from ..paths import children

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
