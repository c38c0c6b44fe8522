"""Compressed tar shards (webdataset's `ShardWriter("out-%05d.tar.gz")`, `.tgz`, `.tar.bz2`,
`.tar.xz`; `.tar.zst` with the `zstandard` package or Python 3.14's `compression.zstd`), streamed as
plain ones.

The stream reads a sample's image by its byte offset in the tar, which is what makes its position
exact to resume, and a compressed file has no offsets. So a compressed shard is decompressed once,
as a whole, into a plain tar in a cache folder, and every offset refers to that copy: the same
member handling, the same exact resume (the copy is made again, byte for byte, if it was evicted).
The cache keeps the newest copies up to a size (MLX_AIMV2_SHARD_CACHE_GB, default 16), in
MLX_AIMV2_SHARD_CACHE (default ~/.cache/mlx-aimv2/unpacked). Copies are written whole (a temporary
file renamed into place), so loader threads and processes that unpack one shard at once agree.
"""

from __future__ import annotations

import bz2
import hashlib
import lzma
import os
import threading
import zlib
from pathlib import Path
from typing import Callable, Optional

from ..atomic import TMP_PREFIX, remove_orphans, write_file
from ..errors import UserError
from ..paths import children

try:  # zstd: Python 3.14's own reader, else the zstandard package, else none (refused in one line)
    from compression import zstd as _zstd
except ImportError:
    _zstd = None
try:
    import zstandard
except ImportError:
    zstandard = None

COMPRESSED = {
    ".tar.gz": "gzip", ".tgz": "gzip", ".tar.bz2": "bz2", ".tbz2": "bz2", ".tar.xz": "xz", ".txz": "xz",
    ".tar.zst": "zstd", ".tar.zstd": "zstd",
}  # fmt: skip
_lock = threading.Lock()
_known: dict = {}  # shard path -> its copy, while the copy exists


def compression(path: str) -> Optional[str]:
    """The compression a shard's name says it has, or None for a plain tar."""
    name = str(path).lower()
    return next((kind for ext, kind in COMPRESSED.items() if name.endswith(ext)), None)


def cache_folder() -> Path:
    return Path(os.environ.get("MLX_AIMV2_SHARD_CACHE") or Path.home() / ".cache" / "mlx-aimv2" / "unpacked")


def plain_tar(path: str) -> str:
    """The plain tar to read `path` from: itself, or its decompressed copy (made when missing)."""
    if compression(path) is None:
        return path
    copy = _known.get(path)
    if copy is not None and os.path.exists(copy):
        return copy
    with _lock:  # one thread of this process unpacks a shard; the others wait for it
        copy = _copy_name(path)
        if not copy.exists():
            _unpack(path, copy)
            _evict(keep=copy)
        _known[path] = str(copy)
        return str(copy)


def check_readable(path: str) -> None:
    """Refuse, before a run starts, a compression this Python cannot read (zstd without a reader)."""
    if compression(path) == "zstd" and _zstd_reader() is None:
        raise UserError(
            f"{path}: a zstd-compressed shard, and no zstd reader is installed; pip install zstandard "
            f"(or use Python 3.14, or unpack it with `zstd -d`)"
        )


def _copy_name(path: str) -> Path:
    """Named by the shard's absolute path, size and modification time: a changed shard is unpacked again."""
    st = os.stat(path)
    key = f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}"
    return cache_folder() / (hashlib.sha1(key.encode()).hexdigest()[:24] + ".tar")


def _unpack(path: str, copy: Path) -> None:
    """Decompress `path` into `copy`, written whole (atomic.write_file: a killed unpacking leaves a
    temporary file the next one clears). A truncated or damaged archive keeps everything decoded
    before the damage, as a truncated plain tar does: the shard's reader uses that, counts the rest bad."""
    copy.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(copy.parent)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as out:
            whole = _decompress(path, out)
        marker = copy.with_suffix(".damaged")  # set before the copy appears: a reader sees both or neither
        marker.touch() if not whole else marker.unlink(missing_ok=True)

    write_file(copy, write)


def damaged(path: str) -> bool:
    """Whether a compressed shard's copy ended early (the archive is truncated or damaged)."""
    return compression(path) is not None and Path(plain_tar(path)).with_suffix(".damaged").exists()


def _decompress(path: str, out) -> bool:
    """Through the decompressor objects, which give out what their input so far decodes to (a file
    reader would drop the last buffer at a truncation); concatenated streams (several gzip members)
    are read one after another. A failed write (a full disk) is raised, damage ends the reading.
    True when the archive was read whole."""
    new = _decompressor(path)
    d = new()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            while chunk:
                try:
                    data = d.decompress(chunk)
                except Exception:  # the decoder's words for damage (zlib.error, LZMAError, EOFError, ZstdError)
                    return False
                out.write(data)
                chunk, d = (d.unused_data, new()) if d.eof and d.unused_data else (b"", d)
    return d.eof


def _decompressor(path: str) -> Callable:
    kind = compression(path)
    if kind == "gzip":
        return lambda: zlib.decompressobj(wbits=31)
    if kind == "bz2":
        return bz2.BZ2Decompressor
    if kind == "xz":
        return lzma.LZMADecompressor
    check_readable(path)
    return _zstd_reader()


def _zstd_reader() -> Optional[Callable]:
    """A maker of zstd decompressor objects: Python 3.14's compression.zstd, else the zstandard package."""
    if _zstd is not None:
        return _zstd.ZstdDecompressor
    if zstandard is not None:
        return lambda: _ZstdObject(zstandard.ZstdDecompressor().decompressobj())
    return None


class _ZstdObject:
    """zstandard's decompressobj with the eof / unused_data of the standard library's decompressors."""

    def __init__(self, obj):
        self.obj, self.unused_data = obj, b""

    def decompress(self, data: bytes) -> bytes:
        return self.obj.decompress(data)

    @property
    def eof(self) -> bool:
        return True  # zstandard's object does not say; a truncation shows as a member cut short


def _evict(keep: Path) -> None:
    """Drop the oldest copies while the cache is over its size (the one just made stays)."""
    limit = float(os.environ.get("MLX_AIMV2_SHARD_CACHE_GB", "16")) * (1 << 30)
    # finished copies only: another process's copy being written (atomic's temporary name) is not ours to drop
    done = [p for p in children(keep.parent, "*.tar", kind="file") if not p.name.startswith(TMP_PREFIX)]
    copies = sorted(done, key=lambda p: p.stat().st_mtime)
    total = sum(p.stat().st_size for p in copies)
    for p in copies:
        if total <= limit:
            break
        if p != keep:
            total -= p.stat().st_size
            p.unlink(missing_ok=True)
            p.with_suffix(".damaged").unlink(missing_ok=True)
