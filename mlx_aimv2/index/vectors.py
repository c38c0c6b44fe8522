"""The index's vectors as one memory-mapped float16 matrix beside its SQLite file (`lib.aimv2.vectors`),
so that a search process maps a file instead of reading every blob out of SQLite (1.1 s at 100,000
images; benchmarks/library.py measures both).

SQLite stays the truth. The file records the store's generation (a counter each committed change
raises) and is used only while that matches; it is rewritten whole, atomically, after an `add` and
whenever a search on a writable disk finds it stale. Deleting it loses nothing.

Layout: b"AIMV2VEC", the header's length (8 bytes, little-endian), a JSON header {generation, rows,
dim, paths}, zero padding to 64 bytes, then rows x dim float16 values in the store's row order.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Optional

import numpy as np

from ..atomic import write_file

MAGIC = b"AIMV2VEC"
ALIGN = 64


def path_for(db: Path) -> Path:
    return Path(db).with_name(Path(db).name + ".vectors")


def write(db: Path, generation: int, paths: list[str], matrix: np.ndarray) -> Path:
    """The matrix (rows x dim, any float dtype; stored as float16) and its paths, for `generation`."""
    matrix = np.ascontiguousarray(matrix, np.float16)
    header = json.dumps(
        {"generation": generation, "rows": len(paths), "dim": int(matrix.shape[1]), "paths": paths}
    ).encode()  # json escapes a non-UTF-8 name's surrogates, and reads them back as they were
    start = len(MAGIC) + 8 + len(header)
    pad = -start % ALIGN

    def fill(tmp: Path):
        with open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<Q", len(header)) + header + b"\0" * pad)
            f.write(matrix.tobytes())

    return write_file(path_for(db), fill)


def read(db: Path, generation: int, dim: int) -> Optional[tuple[list[str], np.ndarray]]:
    """(paths, a read-only float16 memmap) when the file is there and made for this generation and
    width; None otherwise (missing, stale, damaged: the caller reads SQLite instead)."""
    f = path_for(db)
    try:
        with open(f, "rb") as fh:
            if fh.read(len(MAGIC)) != MAGIC:
                return None
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > f.stat().st_size:
                return None
            header = json.loads(fh.read(n))
        if header["generation"] != generation or header["dim"] != dim or len(header["paths"]) != header["rows"]:
            return None
        start = len(MAGIC) + 8 + n
        start += -start % ALIGN
        if f.stat().st_size != start + header["rows"] * dim * 2:
            return None
        if header["rows"] == 0:
            return [], np.zeros((0, dim), np.float16)
        return header["paths"], np.memmap(f, np.float16, "r", start, (header["rows"], dim))
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None
