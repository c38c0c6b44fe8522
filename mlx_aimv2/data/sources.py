"""Where training samples come from: a captions file (jsonl / csv / tsv) beside a folder of images,
or webdataset-style tar shards of image + txt pairs. Bad rows are skipped and counted, never fatal."""

from __future__ import annotations

import csv
import glob
import io
import json
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import UserError
from ..formats import IMAGE_EXT


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
        with open(self.tar, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)

    @property
    def name(self) -> str:
        return self.path or f"{self.tar}@{self.offset}"

    @property
    def suffix(self) -> str:
        """The image's extension, which picks its decoder (formats.open_image)."""
        return Path(self.path).suffix if self.path is not None else self.ext


@dataclass
class Dataset:
    samples: list
    bad: list = field(default_factory=list)  # (where, why)
    root: str = ""

    def __len__(self):
        return len(self.samples)


def open_dataset(path: str, images: Optional[str] = None) -> Dataset:
    """A captions file, a folder holding captions.{jsonl,csv,tsv}, or tar shards: a folder of them, a
    glob, a brace pattern as webdataset writes it (shards/{00000..01023}.tar), or a .txt file listing
    them one per line."""
    p = Path(path)
    if p.is_file() and p.suffix in (".jsonl", ".csv", ".tsv"):
        return read_captions(p, images)
    if p.is_dir():
        for name in ("captions.jsonl", "captions.csv", "captions.tsv"):
            if (p / name).is_file():
                return read_captions(p / name, images)
        tars = sorted(p.glob("*.tar"))
        if tars:
            return read_shards([str(t) for t in tars])
        raise UserError(
            f"{p}: no captions.jsonl / .csv / .tsv and no .tar shards in this folder; "
            f"make a synthetic set with `mlx-aimv2 data synth {p} --n 1000`"
        )
    if p.is_file() and p.suffix == ".txt":  # a list of shards
        root = p.parent
        tars = [
            str(root / line.strip()) for line in p.read_text().splitlines() if line.strip() and not line.startswith("#")
        ]
        if not tars:
            raise UserError(f"{path}: the shard list is empty; write one tar path per line")
        return read_shards(tars)
    if p.suffix == ".tar" or any(ch in path for ch in "*?[{"):
        tars = [path] if p.is_file() else expand_shards(path)
        if not tars:
            raise UserError(f"{path}: no tar shards match")
        return read_shards(tars)
    raise UserError(f"{path}: no such dataset; give a captions file (.jsonl/.csv/.tsv), a folder or tar shards")


_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_LIST = re.compile(r"\{([^{}]*,[^{}]*)\}")


def braces(pattern: str) -> list[str]:
    """Expand webdataset's brace patterns left to right: {000..123} (zero-padded as written), {a,b,c}."""
    found = [m for m in (_RANGE.search(pattern), _LIST.search(pattern)) if m]
    if not found:
        return [pattern]
    m = min(found, key=lambda m: m.start())
    head, tail = pattern[: m.start()], pattern[m.end() :]
    if m.re is _LIST:
        return [x for part in m.group(1).split(",") for x in braces(head + part + tail)]
    lo, hi = m.group(1), m.group(2)
    if int(hi) < int(lo):
        raise UserError(f"{pattern}: the range {{{lo}..{hi}}} counts down; write the smaller number first")
    width = len(lo) if lo.startswith("0") else 0
    return [x for i in range(int(lo), int(hi) + 1) for x in braces(head + str(i).zfill(width) + tail)]


def expand_shards(pattern: str) -> list[str]:
    """Shards named by a brace pattern and/or glob, in order. A brace pattern names its shards
    exactly, so one that is missing is kept and counted as bad where it is read."""
    out = []
    for p in braces(pattern):
        out += sorted(glob.glob(p)) if any(ch in p for ch in "*?[") else [p]
    return out


def read_captions(file: Path, images: Optional[str] = None) -> Dataset:
    """Rows of {"image", "caption"}; image paths are relative to `images` (default: the file's folder)."""
    root = Path(images) if images else file.parent
    ds = Dataset([], [], str(file))
    text = file.read_text(errors="replace")
    if file.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError:
                ds.bad.append((f"{file}:{n}", "not valid JSON"))
    else:
        delim = "\t" if file.suffix == ".tsv" else ","
        reader = list(csv.reader(io.StringIO(text), delimiter=delim))
        header = [h.strip().lower() for h in reader[0]] if reader else []
        if "image" in header and "caption" in header:
            i, c = header.index("image"), header.index("caption")
            body = reader[1:]
            start = 2
        else:
            i, c, body, start = 0, 1, reader, 1
        rows = [
            (n, {"image": r[i], "caption": r[c]} if len(r) > max(i, c) else None) for n, r in enumerate(body, start)
        ]
    for n, row in rows:
        where = f"{file}:{n}"
        if not isinstance(row, dict):
            ds.bad.append((where, "expected an image and a caption"))
            continue
        img, cap = row.get("image"), row.get("caption")
        if not isinstance(img, str) or not img.strip():
            ds.bad.append((where, "no image path"))
        elif not isinstance(cap, str) or not cap.strip():
            ds.bad.append((where, "empty or missing caption"))
        elif not (root / img).is_file():
            ds.bad.append((where, f"image {img} not found"))
        else:
            ds.samples.append(Sample(caption=cap.strip(), path=str(root / img), labels=row.get("labels")))
    if not ds.samples:
        raise UserError(f"{file}: no usable rows ({len(ds.bad)} bad); each row needs an existing image and a caption")
    return ds


def read_shards(tars: list[str]) -> Dataset:
    """Pair each key's image with its caption (key.txt, or a "caption"/"text" field in key.json) inside
    each shard; index the image bytes' offsets. Keys follow webdataset: a member's key is its path up
    to the first dot of its file name (a.b.jpg: key "a", suffix "b.jpg"). Bad members and shards are
    skipped and counted, by reason."""
    ds = Dataset([], [], tars[0] if len(tars) == 1 else f"{len(tars)} shards ({tars[0]}, ...)")
    for t in tars:
        try:
            with tarfile.open(t) as tf:
                members: dict = {}
                for m in tf.getmembers():
                    if m.isfile():
                        folder, _, name = m.name.rpartition("/")
                        stem, dot, suffix = name.partition(".")
                        if not dot:
                            continue
                        members.setdefault(f"{folder}/{stem}" if folder else stem, {})["." + suffix.lower()] = m
                for key, group in sorted(members.items()):
                    _pair(ds, tf, t, key, group)
        except FileNotFoundError:
            ds.bad.append((t, "no such shard"))
        except (tarfile.TarError, OSError, EOFError) as e:
            ds.bad.append((t, f"unreadable tar shard ({e})"))
    if not ds.samples:
        raise UserError(f"{tars[0]}: no image + caption pairs in the shards ({len(ds.bad)} bad entries)")
    return ds


def _pair(ds: Dataset, tf: tarfile.TarFile, t: str, key: str, group: dict) -> None:
    where = f"{t}:{key}"
    img = next((group[e] for e in IMAGE_EXT if e in group), None)
    if img is None:
        if ".txt" in group or ".json" in group:
            ds.bad.append((where, "no image member"))
        return  # other members of no sample (a shard's __index__, .parquet): not samples
    try:
        cap = _caption(tf, group)
    except UnicodeDecodeError:
        ds.bad.append((where, "caption is not UTF-8"))
        return
    except (json.JSONDecodeError, ValueError):
        ds.bad.append((where, "its .json is not valid JSON"))
        return
    if cap is None:
        ds.bad.append((where, "no caption (.txt, or .json with a caption)"))
    elif not cap:
        ds.bad.append((where, "empty caption"))
    else:
        ds.samples.append(Sample(caption=cap, tar=t, offset=img.offset_data, size=img.size, ext=Path(img.name).suffix))


def _caption(tf: tarfile.TarFile, group: dict) -> Optional[str]:
    if ".txt" in group:
        return tf.extractfile(group[".txt"]).read().decode("utf-8").strip()
    if ".json" in group:
        meta = json.loads(tf.extractfile(group[".json"]).read().decode("utf-8"))
        cap = meta.get("caption", meta.get("text")) if isinstance(meta, dict) else None
        return cap.strip() if isinstance(cap, str) else None
    return None
