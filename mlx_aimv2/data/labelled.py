"""Labelled images for fine-tuning, as sources the training stream reads like captioned ones: each
sample's "caption" is its class name, which the objective maps to a class id.

Two forms:
- an image folder: one subfolder per class (ImageFolder), or `train/` and `val/` folders of them;
- a labels file: .jsonl rows {"image", "label"}, or .csv / .tsv with image and label columns (by
  header, else the first two), image paths relative to the file's folder (or `images`).

The classes are the folder names, or a `classes` .txt file (one per line), else the labels the file
holds; a label outside the classes is one error naming its row, before any step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from ..errors import UserError
from ..formats import IMAGE_EXT
from ..paths import files_under, subfolders
from .sources import Sample, Source, caption_ranges, entries

FILES_PER_SOURCE = 1000  # an image folder is cut into sources of this many files (its "shards")
CAPTION_FILES = ("captions.jsonl", "captions.csv", "captions.tsv")


class FileList:
    """A fixed list of (image path, class name): one shard of an image folder."""

    def __init__(self, name: str, items: list[tuple[str, str]]):
        self._name, self.items = name, items

    @property
    def name(self) -> str:
        return self._name

    def entries(self) -> Iterator[Sample]:
        for path, label in self.items:
            yield Sample(caption=label, path=path)


@dataclass
class Labelled:
    sources: list  # the training samples
    classes: list[str]
    held_out: Optional[list] = None  # an image folder's val/ split, as sources
    about: str = ""


def is_labels_file(p: Path) -> bool:
    return p.is_file() and p.suffix in (".jsonl", ".csv", ".tsv")


def open_labelled(path: str, images: Optional[str] = None, classes_file: Optional[str] = None) -> Labelled:
    """The labelled set at `path`; one UserError naming what to fix when it cannot train a classifier."""
    p = Path(path)
    if is_labels_file(p):
        return _labels_file(p, images, classes_file)
    if not p.is_dir():
        raise UserError(
            f"{path}: no such labelled set; give an image folder (one subfolder per class) or a labels file "
            f"(.jsonl / .csv / .tsv with image and label)"
        )
    if classes_file:
        raise UserError(f"classes = {classes_file}: an image folder's classes are its subfolders; drop classes")
    if (p / "train").is_dir() and (p / "val").is_dir():
        classes = _class_folders(p / "train")
        extra = sorted(set(_class_folders(p / "val", need=1)) - set(classes))
        if extra:
            raise UserError(f"{p / 'val'}: class folder(s) {', '.join(extra)} are not in {p / 'train'}")
        return Labelled(
            _folder_sources(p / "train", classes), classes, _folder_sources(p / "val", classes, empty_ok=True),
            f"{p / 'train'} ({len(classes)} classes), held out: {p / 'val'}",
        )  # fmt: skip
    if any((p / n).is_file() for n in CAPTION_FILES):
        raise UserError(
            f"{path}: holds a captions file, not one subfolder per class; for a synthetic set make a labelled "
            f"one with `mlx-aimv2 data synth DIR --classes shape`"
        )
    classes = _class_folders(p)
    return Labelled(_folder_sources(p, classes), classes, None, f"{p} ({len(classes)} classes)")


def _class_folders(root: Path, need: int = 2) -> list[str]:
    classes = [d.name for d in subfolders(root)]
    if len(classes) < need:
        found = f" ({classes[0]})" if classes else ""
        raise UserError(
            f"{root}: a classifier needs one subfolder of images per class, at least 2; found {len(classes)}{found}"
        )
    return classes


def _folder_sources(root: Path, classes: list[str], empty_ok: bool = False) -> list[Source]:
    items, empty = [], []
    for c in classes:
        found = files_under(root / c) if (root / c).is_dir() else []
        if not found:
            empty.append(c)
        items += [(str(f), c) for f in found]
    if empty and not empty_ok:
        raise UserError(
            f"{root}: class folder(s) with no images: {', '.join(empty)}; add images ({', '.join(IMAGE_EXT[:4])}...) "
            f"or remove the folder(s)"
        )
    if not items:
        raise UserError(f"{root}: no images in its class folders")
    # a fixed shuffle, then shards: each shard mixes the classes (the stream reshuffles shards and samples)
    random.Random(0).shuffle(items)
    return [
        FileList(f"{root}[{i}:{i + FILES_PER_SOURCE}]", items[i : i + FILES_PER_SOURCE])
        for i in range(0, len(items), FILES_PER_SOURCE)
    ]


def _labels_file(file: Path, images: Optional[str], classes_file: Optional[str]) -> Labelled:
    sources = caption_ranges(file, images)
    listed = _read_classes(classes_file) if classes_file else None
    seen: dict[str, str] = {}  # label -> the first row that has it
    for e in entries(sources):
        if isinstance(e, Sample) and e.caption not in seen:
            seen[e.caption] = e.name
    if listed is not None:
        unknown = [c for c in seen if c not in listed]
        if unknown:
            raise UserError(
                f"{file}: unknown label '{unknown[0]}' (the row of {seen[unknown[0]]}; {len(unknown)} label(s) not "
                f"in {classes_file}); add them there or fix the rows"
            )
        classes = listed
    else:
        classes = sorted(seen)
    if len(classes) < 2:
        raise UserError(f"{file}: a classifier needs at least 2 classes; its rows name {len(classes)}")
    return Labelled(sources, classes, None, f"{file} ({len(classes)} classes)")


def _read_classes(path: str) -> list[str]:
    f = Path(path)
    if not f.is_file():
        raise UserError(f"classes = {path}: no such file; give a .txt with one class name per line")
    names = [line.strip() for line in f.read_text(errors="replace").splitlines() if line.strip()]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"{path}: class name(s) listed twice: {', '.join(dupes)}")
    if len(names) < 2:
        raise UserError(f"{path}: lists {len(names)} class(es); a classifier needs at least 2")
    return names


class ClassLabelEncoder:
    """Class names -> (n, 1) int32 class labels. The stream carries a labelled sample's class name where a
    captioned one has its caption, and encodes it with this in the text encoder's place."""

    def __init__(self, classes: list[str]):
        self.classes = list(classes)
        self.index = {c: i for i, c in enumerate(self.classes)}

    def __call__(self, names: list[str]) -> np.ndarray:
        return np.array([[self.index[n]] for n in names], np.int32)
