"""Where training samples come from: a captions file (jsonl / csv / tsv) beside a folder of images,
or webdataset-style tar shards of image + txt pairs. Bad rows are skipped and counted, never fatal."""

from __future__ import annotations

import csv
import glob
import io
import json
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
    """A captions file, a folder holding captions.{jsonl,csv,tsv}, or tar shards (file, folder or glob)."""
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
    if p.suffix == ".tar" or any(ch in path for ch in "*?["):
        tars = sorted(glob.glob(path)) if not p.is_file() else [path]
        if not tars:
            raise UserError(f"{path}: no tar shards match")
        return read_shards(tars)
    raise UserError(f"{path}: no such dataset; give a captions file (.jsonl/.csv/.tsv), a folder or tar shards")


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
    """Pair `key.{jpg,png,...}` with `key.txt` inside each shard; index the image bytes' offsets."""
    ds = Dataset([], [], ",".join(tars))
    for t in tars:
        try:
            with tarfile.open(t) as tf:
                members = {}
                for m in tf.getmembers():
                    if m.isfile():
                        key, _, ext = m.name.rpartition(".")
                        members.setdefault(key, {})["." + ext.lower()] = m
                for key, group in sorted(members.items()):
                    img = next((group[e] for e in IMAGE_EXT if e in group), None)
                    txt = group.get(".txt")
                    if img is None or txt is None:
                        ds.bad.append((f"{t}:{key}", "needs an image and a .txt caption"))
                        continue
                    cap = tf.extractfile(txt).read().decode("utf-8", errors="replace").strip()
                    if not cap:
                        ds.bad.append((f"{t}:{key}", "empty caption"))
                        continue
                    ds.samples.append(
                        Sample(caption=cap, tar=t, offset=img.offset_data, size=img.size, ext=Path(img.name).suffix)
                    )
        except (tarfile.TarError, OSError) as e:
            ds.bad.append((t, f"unreadable tar shard ({e})"))
    if not ds.samples:
        raise UserError(f"{tars[0]}: no image + caption pairs in the shards ({len(ds.bad)} bad entries)")
    return ds
