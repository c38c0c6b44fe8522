"""Where training samples come from, read lazily: tar shards as webdataset / img2dataset write them,
or a captions file (jsonl / csv / tsv) beside a folder of images, cut into byte ranges.

`find_sources` names the sources without reading them (start-up does not grow with the corpus);
each source yields its entries in a fixed order, a Sample or a Bad (skipped and counted, by reason,
never fatal). `open_dataset` reads them all into memory, for what needs the whole set at once.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Union

from ..errors import UserError
from ..formats import IMAGE_EXT
from ..paths import children, glob_files, has_magic, is_mac_litter_path, listed_lines
from . import unpacked

CHUNK_BYTES = 1 << 20  # a captions file is read as ranges of this many bytes (~10k rows): its "shards"


@dataclass
class Sample:
    caption: str
    path: Optional[str] = None  # an image file, or
    tar: Optional[str] = None  # a tar shard with the image's bytes at [offset, offset + size)
    offset: int = 0
    size: int = 0
    labels: Optional[dict] = None
    ext: str = ""  # a shard member's image extension (a file's comes from its path)

    def read_bytes(self) -> bytes:
        if self.path is not None:
            return Path(self.path).read_bytes()
        with open(unpacked.plain_tar(self.tar), "rb") as f:  # a compressed shard: its plain copy
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) < self.size:
            raise OSError(f"the shard ends {self.size - len(data)} bytes into this image")
        return data

    @property
    def name(self) -> str:
        return self.path or f"{self.tar}@{self.offset}"

    @property
    def suffix(self) -> str:
        """The image's extension, which picks its decoder (formats.open_image)."""
        return Path(self.path).suffix if self.path is not None else self.ext

    def to_json(self) -> list:
        """A compact, JSON-able form, for a checkpoint's record of the stream."""
        return [self.caption, self.path, self.tar, self.offset, self.size, self.ext, self.labels]

    @classmethod
    def from_json(cls, row: list) -> "Sample":
        c, p, t, o, s, e, labels = row
        return cls(caption=c, path=p, tar=t, offset=o, size=s, ext=e, labels=labels)


@dataclass
class Bad:
    where: str
    why: str  # "reason (detail)": the part before " (" is what the counts group by

    @property
    def reason(self) -> str:
        return self.why.split(" (")[0]


Entry = Union[Sample, Bad]


class TarShard:
    """A webdataset shard. A member's key is its path up to the first dot of its file name (a.b.jpg:
    key "a", suffix "b.jpg"); consecutive members with one key are a sample (webdataset writes them
    together), whose image pairs with key.txt or a "caption"/"text" field of key.json. Read as a
    stream: one sample's headers in memory at a time."""

    def __init__(self, path: str):
        self.path = path

    @property
    def name(self) -> str:
        return self.path

    def entries(self) -> Iterator[Optional[Entry]]:
        t = self.path
        try:
            plain = unpacked.plain_tar(t)  # offsets are the plain tar's: a compressed shard's copy
            end = os.path.getsize(plain)
            tf = tarfile.open(plain)
        except FileNotFoundError:
            yield Bad(t, "no such shard")
            return
        except (tarfile.TarError, OSError, EOFError) as e:
            yield Bad(t, f"unreadable tar shard ({e})")
            return
        with tf:
            key, group, read, broken = None, {}, 0, None
            try:
                for m in tf:  # headers only: tarfile seeks over the data
                    if not m.isfile() or is_mac_litter_path(m.name):  # a Mac's tar adds ._ twins
                        continue
                    if m.offset_data + m.size > end:
                        broken = "it ends inside a member"
                        break
                    folder, _, name = m.name.rpartition("/")
                    stem, dot, suffix = name.partition(".")
                    if not dot:
                        continue
                    k = f"{folder}/{stem}" if folder else stem
                    if k != key and group:
                        yield _pair(tf, t, key, group)
                        read, group = read + 1, {}
                    key = k
                    group["." + suffix.lower()] = m
            except (tarfile.TarError, OSError, EOFError) as e:
                broken = str(e)
            if not broken and unpacked.damaged(t):
                broken = "the compressed file ends early or is damaged"
            if broken and not read and not group:
                yield Bad(t, f"unreadable tar shard ({broken})")
                return
            if group:
                yield _pair(tf, t, key, group)
        if broken:  # what came before the damage was used
            yield Bad(t, f"truncated tar shard ({broken}; {read} keys before it were read)")


def _pair(tf: tarfile.TarFile, t: str, key: str, group: dict) -> Optional[Entry]:
    where = f"{t}:{key}"
    img = next((group[e] for e in IMAGE_EXT if e in group), None)
    if img is None:
        if ".txt" in group or ".json" in group:
            return Bad(where, "no image member")
        return None  # members of no sample (a shard's __index__, .parquet): not samples
    try:
        cap = _caption(tf, group)
    except UnicodeDecodeError:
        return Bad(where, "caption is not UTF-8")
    except (json.JSONDecodeError, ValueError):
        return Bad(where, "its .json is not valid JSON")
    if cap is None:
        return Bad(where, "no caption (.txt, or .json with a caption)")
    if not cap:
        return Bad(where, "empty caption")
    return Sample(caption=cap, tar=t, offset=img.offset_data, size=img.size, ext=Path(img.name).suffix)


def _caption(tf: tarfile.TarFile, group: dict) -> Optional[str]:
    if ".txt" in group:
        return tf.extractfile(group[".txt"]).read().decode("utf-8").strip()
    if ".json" in group:
        meta = json.loads(tf.extractfile(group[".json"]).read().decode("utf-8"))
        cap = meta.get("caption", meta.get("text")) if isinstance(meta, dict) else None
        return cap.strip() if isinstance(cap, str) else None
    return None


class CaptionRows:
    """The rows of a captions file that start in bytes [start, end): {"image", "caption"} per line
    (jsonl), or image and caption columns (csv / tsv, by header or the first two). Image paths are
    relative to `root`. A row is a line: a csv field spanning lines is counted as bad."""

    def __init__(self, file: Path, start: int, end: int, root: Path, columns: Optional[tuple], header: int):
        self.file, self.start, self.end, self.root = file, start, end, root
        self.columns, self.header = columns, header  # header: bytes of a csv header line to skip

    @property
    def name(self) -> str:
        return f"{self.file}[{self.start}:{self.end}]"

    def entries(self) -> Iterator[Entry]:
        try:
            f = open(self.file, "rb")
        except OSError as e:
            yield Bad(str(self.file), f"unreadable captions file ({e.strerror or e})")
            return
        with f:
            pos = max(self.start, self.header)
            if pos > 0:  # a row belongs to the range its first byte is in
                f.seek(pos - 1)
                if f.read(1) != b"\n":
                    f.readline()
            # rows are named by line in the file's first range (all of a small file), else by byte offset
            line_no = (2 if self.header else 1) if self.start == 0 else None
            while f.tell() < self.end:
                at = f.tell()
                raw = f.readline()
                if not raw:
                    break
                where = f"{self.file}:{line_no}" if line_no else f"{self.file}@{at}"
                line_no = line_no + 1 if line_no else None
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                if line.strip():
                    yield self._row(line, where)

    def _row(self, line: str, where: str) -> Entry:
        if self.columns is None:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                return Bad(where, "not valid JSON")
        else:
            cells = next(csv.reader([line], delimiter="\t" if self.file.suffix == ".tsv" else ","), [])
            i, c = self.columns
            row = {"image": cells[i], "caption": cells[c]} if len(cells) > max(i, c) else None
        if not isinstance(row, dict):
            return Bad(where, "expected an image and a caption")
        img, cap = row.get("image"), row.get("caption", row.get("label"))  # a labels file: the label
        if not isinstance(img, str) or not img.strip():
            return Bad(where, "no image path")
        if not isinstance(cap, str) or not cap.strip():
            return Bad(where, "empty or missing caption (or label)")
        path = self.root / img
        if not path.is_file():
            return Bad(where, f"image not found ({img})")
        return Sample(caption=cap.strip(), path=str(path), labels=row.get("labels"))


Source = Union[TarShard, CaptionRows]


def find_sources(path: str, images: Optional[str] = None) -> list[Source]:
    """A captions file, a folder holding captions.{jsonl,csv,tsv}, or tar shards: a folder of them, a
    glob, a brace pattern as webdataset writes it (shards/{00000..01023}.tar), or a .txt file listing
    them one per line. Nothing is read but names (and a captions file's size and header)."""
    p = Path(path)
    if p.is_file() and p.suffix in (".jsonl", ".csv", ".tsv"):
        return caption_ranges(p, images)
    if p.is_dir():
        for name in ("captions.jsonl", "captions.csv", "captions.tsv"):
            if (p / name).is_file():
                return caption_ranges(p / name, images)
        tars = [c for c in children(p, kind="file") if c.name.endswith(".tar") or unpacked.compression(c.name)]
        if tars:  # plain and compressed shards alike
            return _shards([str(t) for t in tars])
        raise UserError(
            f"{p}: no captions.jsonl / .csv / .tsv and no .tar shards in this folder; "
            f"make a synthetic set with `mlx-aimv2 data synth {p} --n 1000`"
        )
    if p.is_file() and p.suffix == ".txt":  # a list of shards
        root = p.parent
        tars = [str(root / line) for line in listed_lines(p.read_text(errors="replace").splitlines())]
        if not tars:
            raise UserError(f"{path}: the shard list is empty; write one tar path per line")
        return _shards(tars)
    if p.suffix == ".tar" or unpacked.compression(path) or any(ch in path for ch in "*?[{"):
        tars = [path] if p.is_file() else expand_shards(path)
        if not tars:
            raise UserError(f"{path}: no tar shards match")
        return _shards(tars)
    raise UserError(f"{path}: no such dataset; give a captions file (.jsonl/.csv/.tsv), a folder or tar shards")


def _shards(paths: list) -> list:
    """TarShards, plain or compressed (data/unpacked.py); a compression this Python cannot read is
    refused before the run starts."""
    for t in paths:
        unpacked.check_readable(t)
    return [TarShard(t) for t in paths]


def caption_ranges(file: Path, images: Optional[str] = None) -> list[CaptionRows]:
    """A captions file as byte ranges of CHUNK_BYTES: its shards, read in any order by any rank."""
    root = Path(images) if images else file.parent
    columns, header = None, 0
    if file.suffix in (".csv", ".tsv"):
        with open(file, "rb") as f:
            first = f.readline()
        cells = next(csv.reader([first.decode("utf-8", "replace")], delimiter="\t" if file.suffix == ".tsv" else ","))
        names = [h.strip().lower() for h in cells]
        text = "caption" if "caption" in names else "label"  # a labels file: its label column
        if "image" in names and text in names:
            columns, header = (names.index("image"), names.index(text)), len(first)
        else:
            columns = (0, 1)
    size = file.stat().st_size
    starts = range(0, max(size, 1), CHUNK_BYTES)
    return [CaptionRows(file, a, min(a + CHUNK_BYTES, size), root, columns, header) for a in starts]


_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_LIST = re.compile(r"\{([^{}]*,[^{}]*)\}")


MAX_NAMED = 100_000  # a brace pattern naming more shards than this is matched against the disk instead


def _groups(pattern: str) -> list[tuple]:
    """The brace groups of a pattern, left to right: (start, end, the names it stands for)."""
    out, pos = [], 0
    while True:
        found = [m for m in (_RANGE.search(pattern, pos), _LIST.search(pattern, pos)) if m]
        if not found:
            return out
        m = min(found, key=lambda m: m.start())
        if m.re is _LIST:
            out.append((m.start(), m.end(), m.group(1).split(",")))
        else:
            lo, hi = m.group(1), m.group(2)
            if int(hi) < int(lo):
                raise UserError(f"{pattern}: the range {{{lo}..{hi}}} counts down; write the smaller number first")
            width = len(lo) if lo.startswith("0") else 0
            out.append((m.start(), m.end(), _Range(int(lo), int(hi), width)))
        pos = m.end()


class _Range:
    """{lo..hi} as a sequence, never expanded: {00000..99999999} is 100 million names."""

    def __init__(self, lo: int, hi: int, width: int):
        self.lo, self.hi, self.width = lo, hi, width

    def __len__(self) -> int:
        return self.hi - self.lo + 1

    def __iter__(self):
        return (str(i).zfill(self.width) for i in range(self.lo, self.hi + 1))

    def regex(self) -> str:
        return r"(\d{%d,})" % max(self.width, 1)

    def holds(self, text: str) -> bool:
        return (not self.width or len(text) == self.width) and self.lo <= int(text) <= self.hi


def braces(pattern: str) -> Iterator[str]:
    """Webdataset's brace patterns expanded left to right, lazily: {000..123} (zero-padded as
    written), {a,b,c}."""
    groups = _groups(pattern)

    def expand(i: int, head: str):
        if i == len(groups):
            yield head
            return
        start, end, names = groups[i]
        rest_start = end
        literal = pattern[rest_start : groups[i + 1][0]] if i + 1 < len(groups) else pattern[rest_start:]
        for name in names:
            yield from expand(i + 1, head + name + literal)

    first = groups[0][0] if groups else len(pattern)
    return expand(0, pattern[:first]) if groups else iter([pattern])


def brace_count(pattern: str) -> int:
    """How many names a brace pattern stands for, without naming them."""
    return math.prod(len(names) for _, _, names in _groups(pattern))


def expand_shards(pattern: str) -> list[str]:
    """Shards named by a brace pattern and/or glob, in order. A brace pattern names its shards
    exactly, so one that is missing is kept and counted as bad where it is read; one that names more
    than MAX_NAMED is matched against the disk, and refused in one line when it names more than exist."""
    if brace_count(pattern) > MAX_NAMED:
        return _matched_on_disk(pattern)
    out = []
    for p in braces(pattern):
        out += [str(h) for h in glob_files(p)] if has_magic(p) else [p]
    return out


def _matched_on_disk(pattern: str) -> list[str]:
    groups, parts, pos = _groups(pattern), [], 0
    globbed = ""
    for start, end, names in groups:
        parts.append(re.escape(pattern[pos:start]))
        globbed += pattern[pos:start] + "*"
        parts.append(names.regex() if isinstance(names, _Range) else "(" + "|".join(map(re.escape, names)) + ")")
        pos = end
    parts.append(re.escape(pattern[pos:]))
    globbed += pattern[pos:]
    rx = re.compile("".join(parts))
    found = []
    for h in glob_files(globbed):
        m = rx.fullmatch(str(h))
        if m and all(not isinstance(n, _Range) or n.holds(m.group(i + 1)) for i, (_, _, n) in enumerate(groups)):
            found.append(str(h))
    named = brace_count(pattern)
    if len(found) < named:
        hint = f"; these run from {found[0]} to {found[-1]}: name that range" if found else ""
        raise UserError(f"{pattern}: names {named:,} shards but {len(found):,} exist{hint} (or give their folder)")
    return found


def entries(sources: list[Source]) -> Iterator[Entry]:
    for s in sources:
        for e in s.entries():
            if e is not None:
                yield e


def first_sample(sources: list[Source], path: str) -> Sample:
    """The corpus's first usable sample; a corpus with none is one error here, before any step."""
    bad: list = []
    for e in entries(sources):
        if isinstance(e, Sample):
            return e
        bad.append(e)
    raise none_usable(path, bad)


def none_usable(path: str, bad: list) -> UserError:
    first = f" (first: {bad[0].where}: {bad[0].why})" if bad else ""
    return UserError(
        f"{path}: no usable image + caption pair, {len(bad)} bad entries{first}; "
        f"each sample needs a readable image and a caption"
    )


@dataclass
class Dataset:
    samples: list
    bad: list = field(default_factory=list)  # Bad entries
    root: str = ""

    def __len__(self):
        return len(self.samples)


def open_dataset(path: str, images: Optional[str] = None) -> Dataset:
    """Every sample of a dataset in memory (LiT's token cache, retrieval, the tokenizer command):
    the same sources, read whole."""
    return read_all(find_sources(path, images), path)


def read_all(sources: list[Source], path: str) -> Dataset:
    ds = Dataset([], [], path)
    for e in entries(sources):
        (ds.samples if isinstance(e, Sample) else ds.bad).append(e)
    if not ds.samples:
        raise none_usable(path, ds.bad)
    return ds
