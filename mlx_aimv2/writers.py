"""Where embeddings go: .npy (one array), .safetensors (every array + the file list), .jsonl (a line per file)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .errors import UserError

FORMATS = (".npy", ".safetensors", ".jsonl")


def check_output(path: Path) -> None:
    if Path(path).suffix not in FORMATS:
        raise UserError(f"{path}: unknown output format; use one of {', '.join(FORMATS)}")


def write(path: Path, names: list[str], rows: list[dict]) -> Path:
    """rows[i] = {array name: np.ndarray} for file names[i]. Written to a temp file, then renamed."""
    path = Path(path)
    check_output(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    keys = list(rows[0]) if rows else []
    if path.suffix == ".npy":
        if len(keys) > 1:
            raise UserError(f"{path}: .npy holds one array but there are {len(keys)} ({', '.join(keys)}); "
                            f"use .safetensors or .jsonl for --layers")
        with open(tmp, "wb") as f:
            np.save(f, np.stack([r[keys[0]] for r in rows]) if rows else np.zeros((0,), np.float32))
    elif path.suffix == ".safetensors":
        from safetensors.numpy import save_file
        arrays = {k: np.ascontiguousarray(np.stack([r[k] for r in rows])) for k in keys}
        save_file(arrays, str(tmp), metadata={"files": json.dumps(names)})
    else:
        with open(tmp, "w") as f:
            for name, r in zip(names, rows):
                f.write(json.dumps({"file": name, **{k: np.round(v.astype(np.float64), 6).tolist() for k, v in r.items()}}) + "\n")
    os.replace(tmp, path)
    return path
