"""Where embeddings go: .npy (one array, in input order), .safetensors (every array + the file list),
.jsonl (a line per file, streamed as it is made).

A writer is opened before any compute (so a bad destination fails at once), takes rows as they
come, and on `close()` renames its temporary file into place. If the run fails or is interrupted,
`abort()` keeps what was done in `<name>.partial<ext>` and says where; no temporary file is left.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from .atomic import TMP_PREFIX, failed_write, write_file
from .errors import UserError, write_failed

FORMATS = (".npy", ".safetensors", ".jsonl")
RAGGED_FORMATS = (".safetensors", ".jsonl")  # these keep one tensor per file when sizes differ


def check_output(path: Path, suffixes: tuple = FORMATS, option: str = "") -> Path:
    """Refuse, before any work, an output file that cannot be one: a wrong extension, a folder, a
    file in the way of its folder, a place this user cannot write. The one check for every output
    file (embeddings, pictures, JSON, a tokenizer); `option` names the flag in the message."""
    path = Path(path).expanduser()
    said = f"{option} {path}" if option else str(path)
    endings = " or ".join(suffixes)
    if path.is_dir():
        raise UserError(f"{said}: is a folder; give a file name ending in {endings}")
    if path.suffix.lower() not in suffixes:
        what = "unknown output format; use one of" if suffixes == FORMATS else "give a file name ending in"
        raise UserError(f"{said}: {what} {', '.join(suffixes) if suffixes == FORMATS else endings}")
    folder = path.resolve().parent
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{said}: {existing} is a file, so no folder can be made there")
    if not os.access(existing, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserError(f"{said}: permission denied; choose a folder you can write to")
    return path


PICTURES = (".png", ".jpg", ".jpeg", ".webp")


def save_json(path: Path, data) -> Path:
    """A JSON result file (probe, retrieval, zeroshot --output), its folder made, written whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_file(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def partial_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.partial{path.suffix}")


class Writer:
    def __init__(self, path: Path):
        self.path = check_output(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f"{TMP_PREFIX}{os.getpid()}-{self.path.name}")
        self.names: list[str] = []
        self.rows: list[dict] = []
        self.stream = open(self.tmp, "w") if self.path.suffix == ".jsonl" else None

    def __len__(self) -> int:
        return len(self.names)

    def expect(self, arrays: int, ragged: bool) -> None:
        """Refuse, before any work, what this format cannot hold: .npy is one array of one size."""
        if self.path.suffix != ".npy":
            return
        if arrays > 1:
            raise UserError(f"{self.path}: .npy holds one array, and --layers adds more; use .safetensors or .jsonl")
        if ragged:
            raise UserError(
                f"{self.path}: the native model's tokens differ in size per image and .npy holds one "
                f"array; use {' or '.join(RAGGED_FORMATS)}"
            )

    def add(self, name: str, row: dict) -> None:
        self.names.append(name)
        if self.stream is not None:
            rounded = {k: np.round(v.astype(np.float64), 6).tolist() for k, v in row.items()}
            self.stream.write(json.dumps({"file": name, **rounded}) + "\n")
            self.stream.flush()
        else:
            self.rows.append(row)

    def close(self) -> Path:
        """Everything done: the output takes its name."""
        return self._finish(self.path)

    def abort(self) -> Path | None:
        """A failure or Ctrl-C: keep the rows done so far in <name>.partial<ext> (None when there are none)."""
        if not self.names:
            self._discard()
            return None
        try:
            return self._finish(partial_path(self.path))
        except Exception:
            self._discard()
            raise

    def _finish(self, dst: Path) -> Path:
        try:
            if self.stream is not None:
                self.stream.close()
            else:
                self._write_arrays(dst)
            os.replace(self.tmp, dst)
        except Exception as e:
            self._discard()
            if not failed_write(e):
                raise
            raise write_failed(dst, e) from None
        except BaseException:
            self._discard()
            raise
        return dst

    def _discard(self) -> None:
        if self.stream is not None and not self.stream.closed:
            self.stream.close()
        if self.tmp.exists():
            self.tmp.unlink()

    def _write_arrays(self, dst: Path) -> None:
        keys = list(self.rows[0]) if self.rows else []
        ragged = any(len({r[k].shape for r in self.rows}) > 1 for k in keys)
        if self.path.suffix == ".npy":
            if len(keys) > 1:
                raise UserError(
                    f"{self.path}: .npy holds one array but there are {len(keys)} ({', '.join(keys)}); "
                    f"use .safetensors or .jsonl for --layers"
                )
            if ragged:
                raise UserError(
                    f"{self.path}: these outputs differ in size per image; use {' or '.join(RAGGED_FORMATS)}"
                )
            with open(self.tmp, "wb") as f:
                np.save(f, np.stack([r[keys[0]] for r in self.rows]) if self.rows else np.zeros((0,), np.float32))
            order = self.tmp.with_name(self.tmp.name + ".txt")
            order.write_text("".join(n + "\n" for n in self.names))
            os.replace(order, dst.with_suffix(".files.txt"))  # .npy has no room for names: the order, a line each
        else:
            if ragged:  # one tensor per image: "<name>/<index>", the index into the "files" list
                arrays = {f"{k}/{i}": np.ascontiguousarray(r[k]) for k in keys for i, r in enumerate(self.rows)}
            else:
                arrays = {k: np.ascontiguousarray(np.stack([r[k] for r in self.rows])) for k in keys}
            save_file(arrays, str(self.tmp), metadata={"files": json.dumps(self.names), "ragged": json.dumps(ragged)})
