"""The index on disk: one SQLite file (the standard library's sqlite3) holding every image's metadata
and its embedding as a float16 blob.

One file is the point: a batch of embeddings and their rows commit together (WAL journal), so a
process killed at any moment leaves a database that opens, holds every committed batch and nothing
half-written. Vectors as blobs cost a read of all of them when a search process starts
(benchmarks/search.py measures it); the search itself runs on the matrix in memory.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from ..errors import UserError

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    path TEXT PRIMARY KEY,      -- absolute path as indexed
    size INTEGER NOT NULL,      -- bytes
    mtime_ns INTEGER NOT NULL,
    sha1 TEXT,                  -- of the file's bytes; NULL for a file that could not be read
    width INTEGER, height INTEGER,
    vector BLOB,                -- float16 embedding, L2-normalised; NULL for a bad file
    error TEXT,                 -- why a bad file was not embedded; NULL when embedded
    indexed_at REAL NOT NULL
);
"""


@dataclass
class Row:
    path: str
    size: int
    mtime_ns: int
    sha1: Optional[str] = None
    width: Optional[int] = None
    height: Optional[int] = None
    vector: Optional[np.ndarray] = None
    error: Optional[str] = None


class Store:
    def __init__(self, path: Path, create: bool = False):
        self.path = Path(path)
        if not self.path.exists() and not create:
            raise UserError(f"{self.path}: no such index; make one with `mlx-aimv2 index PHOTOS --db {self.path}`")
        if self.path.is_dir():
            raise UserError(f"{self.path}: is a folder; give a file name for the index, e.g. lib.aimv2")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(self.path), timeout=30.0)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # in WAL mode: safe against a killed process
            self.db.executescript(_SCHEMA)
            version = self.get_meta("schema")
        except sqlite3.DatabaseError as e:
            raise UserError(f"{self.path}: not an mlx-aimv2 index ({e}); give another --db") from None
        if version is None:
            self.set_meta("schema", SCHEMA_VERSION)
            self.db.commit()
        elif version != SCHEMA_VERSION:
            raise UserError(
                f"{self.path}: index format {version}, this mlx-aimv2 reads {SCHEMA_VERSION}; re-index into a new --db"
            )

    def close(self) -> None:
        self.db.close()

    # -- meta ---------------------------------------------------------------------------------
    def get_meta(self, key: str):
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_meta(self, key: str, value) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    # -- rows -----------------------------------------------------------------------------------
    def stats(self) -> dict[str, tuple]:
        """path -> (size, mtime_ns, sha1, is_bad) for every row."""
        return {
            p: (s, m, h, e is not None)
            for p, s, m, h, e in self.db.execute("SELECT path, size, mtime_ns, sha1, error FROM images")
        }

    def row_of_hash(self, sha1: str) -> Optional[tuple]:
        """(vector, width, height) of an embedded file with these exact bytes: a moved file needs no model."""
        row = self.db.execute(
            "SELECT vector, width, height FROM images WHERE sha1 = ? AND vector IS NOT NULL LIMIT 1", (sha1,)
        ).fetchone()
        return None if row is None else (np.frombuffer(row[0], np.float16), row[1], row[2])

    def put(self, rows: Iterable[Row]) -> None:
        """Insert or replace rows; the caller commits (one transaction per batch)."""
        now = time.time()
        self.db.executemany(
            "INSERT OR REPLACE INTO images (path, size, mtime_ns, sha1, width, height, vector, error, indexed_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    r.path,
                    r.size,
                    r.mtime_ns,
                    r.sha1,
                    r.width,
                    r.height,
                    None if r.vector is None else np.asarray(r.vector, np.float16).tobytes(),
                    r.error,
                    now,
                )
                for r in rows
            ],
        )

    def delete(self, paths: Iterable[str]) -> None:
        self.db.executemany("DELETE FROM images WHERE path = ?", [(p,) for p in paths])

    def commit(self) -> None:
        self.db.commit()

    def rollback(self) -> None:
        """Drop what was put since the last commit."""
        self.db.rollback()

    def counts(self) -> tuple[int, int]:
        """(embedded images, bad files)."""
        ok, bad = self.db.execute("SELECT COUNT(vector), COUNT(error) FROM images").fetchone()
        return ok, bad

    def matrix(self, dim: int) -> tuple[list[str], np.ndarray]:
        """Every embedded image: paths and their vectors as one (n, dim) float16 matrix."""
        paths, rows = [], []
        for p, v in self.db.execute("SELECT path, vector FROM images WHERE vector IS NOT NULL ORDER BY rowid"):
            paths.append(p)
            rows.append(v)
        m = (
            np.frombuffer(b"".join(rows), np.float16).reshape(len(rows), dim)
            if rows
            else np.zeros((0, dim), np.float16)
        )
        return paths, m

    def version(self) -> int:
        """Changes when any connection commits (SQLite's data_version): when to reload the matrix."""
        return self.db.execute("PRAGMA data_version").fetchone()[0] + self.db.total_changes
