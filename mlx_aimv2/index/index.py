"""A photo library index: embed every image under some folders once, keep the embeddings on disk,
search them by text (a LiT model) or by an example image (any model).

    lib = mlx_aimv2.Index("lib.aimv2", model="demo-lit")   # the model is fixed when the index is made
    lib.add(["~/Pictures"])                                  # incremental: new / changed files only
    for hit in lib.search(text="a red circle on the left", k=5):
        print(hit.score, hit.path)

The flow: paths -> the embed flow (decode in worker threads, batches, the model) -> the store, a
batch per transaction; query -> the same model -> cosine similarity over the stored matrix.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
from PIL import Image
from tqdm import tqdm

from .. import kinds, owner
from ..api import load_aimv2, load_default
from ..environment import release_cache
from ..errors import UserError
from ..paths import canonical, canonical_all, expand_paths
from ..preprocess import load_image
from . import vectors
from .dupes import DEFAULT_THRESHOLD, groups, pair_scores
from .faults import ModelChanged
from .query import Term, combine, terms_of
from .ranking import top_k
from .store import Row, Store, db_error


@dataclass
class Hit:
    path: str
    score: float


@dataclass
class Summary:
    """What one add() did."""

    new: int = 0
    moved: int = 0  # new paths whose bytes a vanished file had: its vector is reused, no model run
    changed: int = 0
    unchanged: int = 0  # embedded images whose files have not changed
    still_bad: int = 0  # files recorded as bad before, unchanged since: not retried
    removed: int = 0
    bad: list = field(default_factory=list)  # (path, why) found bad in this run
    missing: list = field(default_factory=list)  # (given path, why) that named no image
    total: int = 0  # embedded images in the index afterwards

    def __str__(self) -> str:
        moved = f"{self.moved} moved, " if self.moved else ""
        s = (
            f"{self.new} new, {moved}{self.changed} changed, {self.unchanged} unchanged, {self.removed} removed; "
            f"{self.total} images in the index"
        )
        s += f"; {len(self.bad)} bad file(s) recorded" if self.bad else ""
        return s + (f"; {self.still_bad} bad file(s) unchanged since (not retried)" if self.still_bad else "")


KEYS = "canonical"  # how rows are keyed (meta "keys"): paths.canonical, since 0.1.1


def _model_ref(name: str) -> str:
    """What to store to load the model again: a local path made absolute, a name as given."""
    p = Path(name).expanduser()
    return str(p.resolve()) if p.exists() else name


class Index:
    """Every method may be called from any thread, and from several at once: calls on one Index take
    turns (a lock), and the model's MLX work runs on the library's owner thread (owner.py)."""

    def __init__(self, path, model: Optional[str] = None, create: bool = True, read_only: Optional[bool] = None):
        """Open (or, with create, make) the index at `path`. `model`: what a new index embeds with
        (default: Apple's LiT model, else the bundled demo-lit); an existing index keeps its own and
        refuses another. read_only (default: when the file or its folder is not writable) opens it
        for search only, as on a read-only disk."""
        self.path = Path(path)
        if read_only is None:
            read_only = self.path.is_file() and not _writable(self.path)
        self._created = not self.path.exists()
        self.store = Store(self.path, create=create, read_only=read_only)
        self._lock = threading.RLock()
        self._asked = model
        self._model = None
        self._claimed = False  # whether this Index recorded the file's model (_claim)
        self._text = None  # the text side alone, for text queries (_text_model)
        self._cache = None  # (store version, paths, float32 matrix)
        try:
            stored = self.store.get_meta("model")
            if stored is not None:
                self.store.check_widths(stored["dim"])  # two models' vectors: damaged, never read
                self._take_asked(stored)
        except BaseException:
            self.store.close()
            raise
        self._canonical_keys()

    def _take_asked(self, stored: dict) -> None:
        """The model asked for, when the index already has one: the same weights (under any name, a
        path for "demo-lit") are taken, another model is refused."""
        if self._asked is None or self._model is not None or _model_ref(self._asked) == stored["ref"]:
            return
        other = load_aimv2(self._asked)
        if other.fingerprint() != stored["fingerprint"]:
            raise ModelChanged(
                f"{self.path} was built with {stored['ref']}, not {self._asked}; leave out --model to "
                f"use the index's own, or index into another --db"
            )
        self._model = other

    def _canonical_keys(self) -> None:
        """An index whose rows were keyed by the path as typed (before KEYS) is re-keyed once by the
        canonical path; two rows of one photo (a path and its alias) become one."""
        if self.store.read_only or self.store.get_meta("keys") == KEYS:
            return
        old = list(self.store.stats())
        moves = {o: n for o, n in zip(old, canonical_all(old)) if o != n}
        if moves:
            self.store.rekey(moves)
        self.store.set_meta("keys", KEYS)
        self.store.commit()

    def close(self) -> None:
        with self._lock:
            self.store.close()

    def discard_if_empty(self) -> bool:
        """Close, and delete the file when this Index made it and it holds no rows (a first run that
        failed): nothing empty is left behind. True when deleted. A file whose model another process
        recorded is its, however empty now: that process is about to fill it."""
        with self._lock:
            ours = self._claimed or self.store.get_meta("model") is None
            empty = self._created and ours and self.store.counts() == (0, 0)
            self.store.close()
            if empty:
                self.store.remove_files()
            return empty

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __len__(self) -> int:
        with self._lock:
            return self.store.counts()[0]

    # -- the model ----------------------------------------------------------------------------
    @property
    def model(self):
        """The index's model, loaded on first use and checked against the weights it was built with."""
        if self._model is None:
            stored = self.store.get_meta("model")
            if stored is None:
                self._model = self._claim(*_load_new(self._asked))
            else:
                self._take_asked(stored)  # another process may have made the index since it was opened
                if self._model is None:
                    self._model = self._stored_model(stored)
        return self._model

    def _claim(self, model, ref: str):
        """Make `model` the index's own, once and atomically, before its first row: of two processes
        indexing into a new file at once, the first to record its model owns the index, and the
        other goes on only if it has the same weights (else it is refused in one line)."""
        mine = {
            "ref": ref,
            "name": model.config.name,
            "kind": model.config.kind,
            "fingerprint": model.fingerprint(),
            "dim": model.embedding_dim,
        }
        owner_of_index, self._claimed = self.store.set_meta_once("model", mine)
        if owner_of_index["fingerprint"] != mine["fingerprint"]:
            raise ModelChanged(
                f"{self.path} was just made by another process with {owner_of_index['ref']}, not {ref}; "
                f"index into another --db, or leave out --model to add to it with its own"
            )
        return model

    def _stored_model(self, stored: dict, text_only: bool = False):
        model = load_aimv2(stored["ref"], text_only=text_only)
        if model.fingerprint() != stored["fingerprint"]:
            raise ModelChanged(
                f"{self.path}: the model at {stored['ref']} has changed since this index was built; "
                f"its vectors no longer compare with new ones - re-index into a new --db"
            )
        return model

    def _text_model(self):
        """For text terms: the index's model, or, until an image needs it, its text side only (a text
        query then reads a fraction of the weights: api.load(text_only=True))."""
        stored = self.store.get_meta("model")
        if self._model is not None or stored is None or not kinds.is_lit(stored):
            return self.model
        if self._text is None:
            self._text = self._stored_model(stored, text_only=True)
        return self._text

    @property
    def info(self) -> dict:
        with self._lock:
            return self._info()

    def _info(self) -> dict:
        ok, bad = self.store.counts()
        return {"path": str(self.path), "model": self.store.get_meta("model"), "images": ok, "bad_files": bad}

    def _embed_rows(self, items, errors: list, read: Callable, batch_size: int, cancel=None):
        """(item, unit-length float32 embedding) for images: LiT's projected embedding, else the mean of tokens."""
        m = self.model
        pool = "attn" if kinds.is_lit(m.config) else "mean"
        for item, feats in m.iter_embed(
            items, pool=pool, errors=errors, batch_size=batch_size, read=read, cancel=cancel
        ):
            e = feats["embedding"].astype(np.float32)
            yield item, e / max(float(np.linalg.norm(e)), 1e-12)

    # -- adding ---------------------------------------------------------------------------------
    def add(
        self,
        paths: Sequence,
        batch_size: int = 16,
        progress: Union[bool, Callable[[int, int], None]] = False,
        fast_decode: bool = False,
        cancel=None,
    ) -> Summary:
        """Index the images under `paths` (folders recursively, files, globs). Only new and changed
        files are embedded; files gone from a given folder are dropped. Each batch commits on its own,
        so an interrupted or cancelled run keeps what it did and the next run continues from there.
        progress: True for a bar on stderr, or a callback progress(done, total) per image.
        cancel: anything with is_set() (a threading.Event): once set, the open batch is dropped and
        errors.Cancelled raised. fast_decode: JPEGs decode at reduced size first (Preprocessor.fast_decode)."""
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        with self._lock:
            if self.store.read_only:
                raise UserError(
                    f"{self.path}: opened read-only (a read-only disk or file); it can be searched, not added to"
                )
            stored = self.store.get_meta("model")  # another process may have recorded one since this opened
            if stored is not None:
                self._take_asked(stored)  # the model asked for is the index's, even when nothing needs embedding
            generation = self.store.generation()
            try:
                summary = self._add(paths, batch_size, progress, fast_decode, cancel)
            except sqlite3.DatabaseError as e:
                raise db_error(self.path, e) from None
            finally:
                self._refresh_if_changed(generation)  # even after a cancel: what was committed
                owner.run(release_cache)  # a pass over photos of many shapes leaves no cache behind
            return summary

    def _refresh_if_changed(self, generation: int) -> None:
        try:
            if self.store.generation() != generation:
                self._refresh_vectors()
        except sqlite3.DatabaseError:  # the disk's fault, already being reported: the next search rewrites it
            pass

    def _add(self, paths, batch_size, progress, fast_decode, cancel) -> Summary:
        paths = [os.path.expanduser(str(p)) for p in paths]  # "~/Pictures" from Python, as a shell would
        files, missing = expand_paths(paths)
        if not files and not any(Path(p).is_dir() for p in paths):  # an emptied folder still drops its rows
            raise UserError("nothing to index: " + "; ".join(f"{p}: {why}" for p, why in missing))
        out = Summary(missing=missing)
        known = self.store.stats()
        todo = []
        keys = canonical_all(files)  # one photo, one row: `~/pictures` and `~/Pictures`, an alias and its target
        for key in dict.fromkeys(keys):
            try:
                st = os.stat(key)
            except OSError as e:
                out.bad.append((key, f"cannot stat ({e.strerror})"))
                continue
            old = known.get(key)
            if old is not None and (old[0], old[1]) == (st.st_size, st.st_mtime_ns):
                if old[3]:  # recorded as bad: not an image of the index
                    out.still_bad += 1
                else:
                    out.unchanged += 1
            else:
                todo.append((key, st.st_size, st.st_mtime_ns, old))
        roots = [os.path.join(r, "") for r in canonical_all(p for p in paths if Path(p).is_dir())]
        seen = set(keys)
        gone = [p for p in known if p not in seen and any(p.startswith(r) for r in roots)]
        todo = self._reuse_moved(todo, gone, known, out)
        if todo:
            try:
                self._embed_files(todo, out, batch_size, progress, fast_decode, cancel)
            except BaseException:  # Ctrl-C, a cancel, a crash: the committed batches stay, the open one is dropped
                self.store.rollback()
                raise
        self.store.delete(gone)
        self.store.commit()
        out.removed = len(gone) - out.moved
        out.total = len(self)
        return out

    def _reuse_moved(self, todo: list, gone: list, known: dict, out: Summary) -> list:
        """Files moved or renamed within the indexed folders keep their vectors: a new path with the size
        of a vanished file is hashed, and equal bytes take the vanished file's row. Returns what is left."""
        vanished = {}  # (size, sha1) of embedded files no longer where they were
        for p in gone:
            size, _, digest, bad = known[p]
            if digest and not bad:
                vanished.setdefault(size, set()).add(digest)
        if not vanished:
            return todo
        left, rows = [], []
        for item in todo:
            key, size, mtime, old = item
            digest = None
            if old is None and size in vanished:
                try:
                    digest = _sha1(key)
                except OSError:
                    pass
            row = self.store.row_of_hash(digest) if digest in vanished.get(size, ()) else None
            if row is None:
                left.append(item)
                continue
            rows.append(Row(key, size, mtime, digest, row[1], row[2], row[0]))
            out.moved += 1
        self.store.put(rows)
        self.store.commit()
        return left

    def _embed_files(self, todo: list, out: Summary, batch_size: int, progress, fast_decode: bool, cancel) -> None:
        meta = {key: (size, mtime, old) for key, size, mtime, old in todo}
        found: dict = {}  # path -> (sha1, width, height), filled by the decode workers

        draft = self.model.preprocessor_for(fast_decode).draft_size

        def read(key: str):
            img = load_image(key, draft)  # one clear UserError per bad file
            try:  # the bytes are in the page cache now: hashing costs a copy
                digest = _sha1(key)
            except OSError as e:
                raise UserError(f"{key}: cannot read ({e.strerror})") from None
            size = img.size
            if draft:  # a reduced decode: the file's own size comes from its header
                with Image.open(key) as header:
                    size = header.size
            found[key] = (digest, *size)
            return img

        errors: list = []
        pending: list[Row] = []

        def flush():
            while errors:  # bad files are rows too: recorded with their reason, retried when they change
                key, why = errors.pop(0)
                size, mtime, _ = meta[key]
                pending.append(Row(key, size, mtime, error=why))
                out.bad.append((key, why))
                tick()
            self.store.put(pending)
            self.store.commit()
            pending.clear()

        bar, done = None, 0
        if progress is True:
            bar = tqdm(total=len(todo), unit="img", desc="index", dynamic_ncols=True)

        def tick():
            nonlocal done
            done += 1
            if bar is not None:
                bar.update(1)
            elif callable(progress):
                progress(done, len(todo))

        try:
            for key, vec in self._embed_rows([k for k, *_ in todo], errors, read, batch_size, cancel):
                size, mtime, old = meta[key]
                digest, w, h = found.pop(key)
                pending.append(Row(key, size, mtime, digest, w, h, vec))
                if old is None:
                    out.new += 1
                else:
                    out.changed += 1
                tick()
                if len(pending) >= batch_size:
                    flush()
            flush()
        finally:
            if bar is not None:
                bar.close()

    # -- searching ------------------------------------------------------------------------------
    def _refresh_vectors(self) -> Optional[tuple]:
        """Rewrite the memory-mapped vectors file from the store (vectors.py); (paths, matrix). On a
        read-only disk, or when another process commits meanwhile, the file is left as it is."""
        stored = self.store.get_meta("model")
        if not stored:
            return None
        generation = self.store.generation()
        paths, m = self.store.matrix(stored["dim"])
        if not self.store.read_only and self.store.generation() == generation:
            try:
                vectors.write(self.path, generation, paths, m)
            except UserError:  # a full or read-only disk: search reads SQLite instead, nothing is lost
                pass
        return paths, m

    def _matrix(self):
        """Paths and their float32 matrix: the memory-mapped vectors file when it matches the store,
        else the store's blobs (and the file rewritten for the next process)."""
        version = self.store.version()
        if self._cache is None or self._cache[0] != version:
            stored = self.store.get_meta("model")
            if not stored:
                paths, m = [], np.zeros((0, 1), np.float16)
            else:
                found = vectors.read(self.path, self.store.generation(), stored["dim"])
                paths, m = found if found is not None else self._refresh_vectors()
            self._cache = (version, paths, np.asarray(m, np.float32))
        return self._cache[1], self._cache[2]

    def _encode(self, term: Term) -> np.ndarray:
        m = self.model if term.image else self._text_model()
        if not term.image:
            if not kinds.is_lit(m.config):
                raise UserError(
                    f"{self.path} was built with {m.config.name}, an image-only model: search it "
                    f"with images, or index with a LiT model (e.g. demo-lit) for text search"
                )
            return m.encode_text([str(term.value)])[0]
        errors: list = []
        rows = list(self._embed_rows([term.value], errors, None, 1))
        if not rows:
            raise UserError(errors[0][1] if errors else f"{term.value}: could not embed the query image")
        return rows[0][1]

    def search(self, text: Optional[str] = None, image=None, k: int = 10, query=None) -> list[Hit]:
        """The k images nearest the query (cosine similarity), best first. Ask with text="...",
        image=path, or query= terms with weights: '"2:golden retriever" + pool.jpg - fruit', or a
        list of (text or Path, weight) pairs (index/query.py)."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise UserError(f"k = {k!r}: ask for at least one result (a whole number)")
        terms = terms_of(text, image, query)  # a malformed query fails before anything loads
        with self._lock:
            try:
                paths, matrix = self._matrix()
                if not paths:
                    raise UserError(f"{self.path}: the index holds no images yet; add some with `mlx-aimv2 index`")
                q = combine([self._encode(t) for t in terms], terms)  # the weighted sum of the terms
            except sqlite3.DatabaseError as e:
                raise db_error(self.path, e) from None
        idx, scores = top_k(matrix, q, int(k))
        return [Hit(paths[i], float(s)) for i, s in zip(idx, scores)]

    def _vectors(self) -> tuple[list[str], np.ndarray]:
        """Paths and matrix, read under the lock, SQLite's errors worded (store.db_error)."""
        with self._lock:
            try:
                return self._matrix()
            except sqlite3.DatabaseError as e:
                raise db_error(self.path, e) from None

    def paths(self) -> list[str]:
        """Every embedded image's path, in the store's order (cached until the index changes)."""
        return self._vectors()[0]

    def similar(self, path: str, k: int = 10) -> list[Hit]:
        """The k images nearest an indexed one ("more like this"), from its stored vector: no model."""
        paths, matrix = self._vectors()
        try:
            row = paths.index(str(path)) if str(path) in paths else paths.index(canonical(path))
        except ValueError:
            raise UserError(f"{path}: not an image of {self.path}") from None
        idx, scores = top_k(matrix, matrix[row], k)
        return [Hit(paths[i], float(s)) for i, s in zip(idx, scores)]

    def dupes(self, threshold: float = DEFAULT_THRESHOLD) -> list[list[Hit]]:
        """Groups of near-duplicate images (index/dupes.py): each a list of Hits, the first image with
        score 1 and the others with their similarity to it; the largest group first."""
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise UserError(f"threshold {threshold!r}: give a cosine similarity in (0, 1], e.g. {DEFAULT_THRESHOLD}")
        paths, matrix = self._vectors()
        found = []
        for g in groups(matrix, float(threshold)):
            found.append([Hit(paths[i], s) for i, s in zip(g, pair_scores(matrix, g))])
        return found


def _sha1(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


def _load_new(name: Optional[str]):
    """The model for a new index, and what to record to load it again: the one asked for, else the
    default LiT model (text and image search)."""
    if name is not None:
        return load_aimv2(name), _model_ref(name)
    return load_default("lit")


def _writable(path: Path) -> bool:
    """Whether the index file and its folder (SQLite's WAL files) may be written: file modes, and a
    read-only mount, which os.access reports even to root."""
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)
