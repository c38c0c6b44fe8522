"""The index on disk: one SQLite file (the standard library's sqlite3) holding every image's metadata
and its embedding as a float16 blob.

One file is the point: a batch of embeddings and their rows commit together (WAL journal), so a
process killed at any moment leaves a database that opens, holds every committed batch and nothing
half-written. Vectors as blobs would cost a read of all of them when a search process starts, so a
memory-mapped copy is kept beside the file (vectors.py), checked against the store's generation.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from ..errors import UserError
from .faults import IndexFault

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    path TEXT PRIMARY KEY,      -- the file's canonical path (paths.canonical; meta "keys")
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


SQLITE_MAGIC = b"SQLite format 3\x00"
REBUILD = "rebuild it with `mlx-aimv2 index PHOTOS --db NEW.aimv2` (the photos are untouched)"


def damaged(path: Path, e) -> IndexFault:
    return IndexFault(f"{path}: the index is damaged ({e}); {REBUILD}")


def db_error(path: Path, e: sqlite3.DatabaseError) -> UserError:
    """SQLite's error as one line: the disk's or the permissions' fault (a full or read-only disk, a
    lock held elsewhere), else damage to the file."""
    msg = str(e)
    if "full" in msg:
        why = "the disk is full; free space and run the same command again (committed batches are kept)"
    elif "I/O error" in msg:
        why = "the disk refused a write (it may be full); free space and run again (committed batches are kept)"
    elif "readonly" in msg or "read-only" in msg:
        why = "the index or its folder is read-only; make it writable, or only search it"
    elif "locked" in msg or "busy" in msg:
        why = "locked by another program for too long; try again when it is done"
    elif "unable to open" in msg:
        why = "cannot open it (permissions, or its folder's); check them"
    else:
        return damaged(path, e)
    return UserError(f"{path}: {why}")


def _transient(e: sqlite3.OperationalError) -> bool:
    """Another process's passing state, not a fault: a lock SQLite reports without waiting (a
    journal-mode change, a snapshot to upgrade), or a -shm file read while its last writer deletes it
    on closing (SQLITE_IOERR_SHORT_READ; Python 3.10 names it only "disk I/O error")."""
    name = getattr(e, "sqlite_errorname", "")
    if name:
        return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or name == "SQLITE_IOERR_SHORT_READ"
    return any(w in str(e) for w in ("locked", "busy", "disk I/O error"))


def retrying(open_db, wait_s: float = 30.0):
    """open_db(), again while it fails on another process's passing state (_transient): two indexers
    and a search opening one file at once each get it whole. Any other error is raised at once."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return open_db()
        except sqlite3.OperationalError as e:
            if not _transient(e) or time.monotonic() > deadline:
                raise
        time.sleep(random.uniform(0.01, 0.1))  # apart, so two openers do not collide again in step


def _open_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection that writes nothing: it sees a writer's WAL where SQLite may make its
    -shm file; on a read-only disk it reads the file as it is (immutable). Another process's passing
    state is raised (for retrying), never read around: an immutable read of a live file is torn."""
    uri = "file:" + urllib.parse.quote(str(path.resolve()))
    db = sqlite3.connect(uri + "?mode=ro", uri=True, timeout=30.0, check_same_thread=False)
    try:
        db.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
        return db
    except sqlite3.OperationalError as e:
        db.close()
        if _transient(e):
            raise
        return sqlite3.connect(uri + "?immutable=1", uri=True, check_same_thread=False)


def _db_path(p: str):
    """A path as SQLite stores it: text, or its raw bytes when the name is not UTF-8 (a file from an
    old camera or archive, which Python holds with surrogate escapes): lossless either way."""
    try:
        p.encode("utf-8")
        return p
    except UnicodeEncodeError:
        return os.fsencode(p)


def _py_path(v) -> str:
    return os.fsdecode(v) if isinstance(v, bytes) else v


class Store:
    """One index file. A file that exists is checked before anything is written to it: another
    program's SQLite file, or anything else, is refused untouched. read_only opens it for searching
    on a read-only disk (no WAL writes). One connection, usable from any thread (the Index locks)."""

    def __init__(self, path: Path, create: bool = False, read_only: bool = False):
        self.path = Path(path)
        if self.path.is_dir():
            raise UserError(f"{self.path}: is a folder; give a file name for the index, e.g. lib.aimv2")
        exists = self.path.exists()
        if not exists and (not create or read_only):
            raise UserError(f"{self.path}: no such index; make one with `mlx-aimv2 index PHOTOS --db {self.path}`")
        if exists:
            self._check_is_index()
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UserError(
                    f"{self.path}: cannot create the index's folder ({e.strerror}); give another --db"
                ) from None
        self.read_only = read_only
        try:
            self.db = retrying(lambda: self._connect(read_only))
            version = self._schema_version(read_only)
        except sqlite3.DatabaseError as e:
            if not exists:
                self.remove_files()
            raise db_error(self.path, e) from None
        if version is None and not read_only:
            self.set_meta("schema", SCHEMA_VERSION)
            self.db.commit()
        elif version != SCHEMA_VERSION:
            raise IndexFault(
                f"{self.path}: index format {version}, this mlx-aimv2 reads {SCHEMA_VERSION}; re-index into a new --db"
            )

    def _schema_version(self, read_only: bool, wait_s: float = 5.0):
        """The index's schema version. A reader that opens an index another process is creating
        (`index --watch` and a search started together) can find the SQLite file before its tables:
        the creator writes them in one transaction, so wait for it rather than call the file damaged."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return self.get_meta("schema")
            except sqlite3.OperationalError as e:
                being_created = read_only and "no such table: meta" in str(e) and not self._tables()
                if not being_created or time.monotonic() > deadline:
                    raise
            time.sleep(0.05)
            self.db.close()
            self.db = self._connect(read_only)

    def _tables(self) -> list:
        return self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()

    def _connect(self, read_only: bool) -> sqlite3.Connection:
        if read_only:
            return _open_read_only(self.path)
        db = sqlite3.connect(str(self.path), timeout=30.0, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # in WAL mode: safe against a killed process
            # the tables and the schema's version in one transaction: a kill between them would
            # leave a file that reads as another program's
            db.executescript(
                f"BEGIN; {_SCHEMA} INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', '{SCHEMA_VERSION}'); COMMIT;"
            )
            return db
        except BaseException:
            db.close()
            raise

    def _check_is_index(self) -> None:
        """Refuse, before any write, a file that is not one of our indexes (read-only inspection)."""
        try:
            with open(self.path, "rb") as f:
                head = f.read(len(SQLITE_MAGIC))
        except OSError as e:
            raise UserError(f"{self.path}: cannot read ({e.strerror}); check its permissions") from None
        if not head:  # an empty file holds nothing to lose: SQLite makes it a new database (a run killed at birth)
            return
        if head != SQLITE_MAGIC:
            raise UserError(
                f"{self.path}: not an mlx-aimv2 index (not a SQLite file); left untouched; give another --db"
            )
        try:
            tables, ours = retrying(self._inspect)
        except sqlite3.DatabaseError as e:
            raise db_error(self.path, e) from None
        if tables and not ours:
            listed = ", ".join(sorted(tables)[:6])
            raise UserError(
                f"{self.path}: a SQLite file of another program (tables: {listed}), not an mlx-aimv2 index; "
                f"left untouched; give another --db"
            )

    def _inspect(self):
        """(the file's tables, whether they are an index's), read through a read-only connection.
        No tables is nothing to lose: an index killed at birth, or one another process creates now."""
        db = _open_read_only(self.path)
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            ours = {"meta", "images"} <= tables and (
                db.execute("SELECT COUNT(*) FROM meta WHERE key = 'schema'").fetchone()[0]
                # our tables, empty, made by an earlier version killed before it wrote the schema row
                or not db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
            )
            if ours:
                columns = {r[1] for r in db.execute("PRAGMA table_info(images)")}
                ours = {"path", "size", "mtime_ns", "sha1", "vector", "error"} <= columns
            return tables, ours
        finally:
            db.close()

    def remove_files(self) -> None:
        """Delete the index's files (with its WAL): for a new index that failed before holding anything."""
        for suffix in ("", "-wal", "-shm", "-journal"):
            try:
                os.unlink(str(self.path) + suffix)
            except OSError:
                pass

    def close(self) -> None:
        """Close; a writer that is the file's last user puts it back in rollback-journal mode, so the
        file stands alone (no -wal and -shm beside it, which a later read-only opener could neither
        use without making nor remove). Another connection still open keeps it in WAL: no wait."""
        if not self.read_only:
            try:
                self.db.commit()
                self.db.execute("PRAGMA busy_timeout = 0")
                self.db.execute("PRAGMA journal_mode = DELETE").fetchall()
            except sqlite3.DatabaseError:
                pass
        self.db.close()

    # -- meta ---------------------------------------------------------------------------------
    def get_meta(self, key: str):
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        try:
            return None if row is None else json.loads(row[0])
        except (json.JSONDecodeError, TypeError) as e:
            raise damaged(self.path, f"meta '{key}' is not JSON: {e}") from None

    def set_meta(self, key: str, value) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def set_meta_once(self, key: str, value):
        """Record `value` under `key` unless a writer (another process) did first, and commit: one
        statement, so of two writers exactly one value holds. Returns (the value that holds, whether
        it is this call's)."""
        cur = self.db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))
        self.db.commit()
        return self.get_meta(key), cur.rowcount == 1

    def check_widths(self, dim: int) -> None:
        """Refuse an index whose vectors are not all `dim` wide (two models wrote to it: damaged).
        SQLite reads a blob's length from its record header, so this reads no vector."""
        row = self.db.execute(
            "SELECT COUNT(*), SUM(length(vector) != ?) FROM images WHERE vector IS NOT NULL", (2 * int(dim),)
        ).fetchone()
        total, wrong = row[0], row[1] or 0
        if wrong:
            raise damaged(self.path, f"{wrong} of its {total} vectors are not {dim} wide: two models wrote to it")

    # -- rows -----------------------------------------------------------------------------------
    def stats(self) -> dict[str, tuple]:
        """path -> (size, mtime_ns, sha1, is_bad) for every row."""
        return {
            _py_path(p): (s, m, h, e is not None)
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
        self._changed = True
        now = time.time()
        self.db.executemany(
            "INSERT OR REPLACE INTO images (path, size, mtime_ns, sha1, width, height, vector, error, indexed_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    _db_path(r.path),
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
        paths = [(_db_path(p),) for p in paths]
        if paths:
            self._changed = True
            self.db.executemany("DELETE FROM images WHERE path = ?", paths)

    def rekey(self, moves: dict) -> None:
        """Rows renamed old path -> new; where the new path has a row already (one photo under two
        spellings), the old row is dropped. The caller commits."""
        self._changed = True
        for old, new in moves.items():
            if self.db.execute("SELECT 1 FROM images WHERE path = ?", (_db_path(new),)).fetchone():
                self.db.execute("DELETE FROM images WHERE path = ?", (_db_path(old),))
            else:
                self.db.execute("UPDATE images SET path = ? WHERE path = ?", (_db_path(new), _db_path(old)))

    def commit(self) -> None:
        """Commit, raising the generation when rows changed (in the same transaction)."""
        if getattr(self, "_changed", False):
            self.set_meta("generation", self.generation() + 1)
            self._changed = False
        self.db.commit()

    def rollback(self) -> None:
        """Drop what was put since the last commit."""
        self._changed = False
        self.db.rollback()

    def generation(self) -> int:
        """How many committed changes the rows have seen: what the vectors file was made from."""
        return int(self.get_meta("generation") or 0)

    def counts(self) -> tuple[int, int]:
        """(embedded images, bad files)."""
        ok, bad = self.db.execute("SELECT COUNT(vector), COUNT(error) FROM images").fetchone()
        return ok, bad

    def matrix(self, dim: int) -> tuple[list[str], np.ndarray]:
        """Every embedded image: paths and their vectors as one (n, dim) float16 matrix."""
        paths, rows = [], []
        for p, v in self.db.execute("SELECT path, vector FROM images WHERE vector IS NOT NULL ORDER BY rowid"):
            paths.append(_py_path(p))
            rows.append(v)
        if any(len(v) != 2 * dim for v in rows):  # written since this process checked: still never read
            self.check_widths(dim)
        m = (
            np.frombuffer(b"".join(rows), np.float16).reshape(len(rows), dim)
            if rows
            else np.zeros((0, dim), np.float16)
        )
        return paths, m

    def version(self) -> int:
        """Changes when any connection commits (SQLite's data_version): when to reload the matrix."""
        return self.db.execute("PRAGMA data_version").fetchone()[0] + self.db.total_changes
