"""A synthetic captioned image set: scenes of coloured shapes at positions and sizes, with captions
that say what is where, so training and probing can be tried with nothing to download.

Each row of captions.jsonl also carries the scene's attributes for probes: the object count, and
the colour, shape, position and size of the first object (well defined for one-object scenes,
which is what probes of those attributes use)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from ..atomic import write_file
from ..errors import UserError

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (245, 130, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "diamond")
POSITIONS = {
    "top left": (0.25, 0.25),
    "top": (0.5, 0.22),
    "top right": (0.75, 0.25),
    "left": (0.22, 0.5),
    "center": (0.5, 0.5),
    "right": (0.78, 0.5),
    "bottom left": (0.25, 0.75),
    "bottom": (0.5, 0.78),
    "bottom right": (0.75, 0.75),
}
SIZES = {"small": 0.12, "large": 0.22}
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
ATTRIBUTES = {
    "colour": list(COLOURS),
    "shape": list(SHAPES),
    "position": list(POSITIONS),
    "size": list(SIZES),
    "count": [1, 2, 3],
}


def _draw(d: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill):
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)


def scene(rng: np.random.Generator, size: int = 128, max_objects: int = 3):
    """One image and its caption and attributes."""
    bg = rng.integers(90, 200, 3)
    grad = np.linspace(-25, 25, size)[None, :, None] * rng.choice([-1, 1])
    px = np.clip(bg[None, None] + grad + rng.normal(0, 6, (size, size, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(px)
    d = ImageDraw.Draw(img)
    count = int(rng.integers(1, max_objects + 1))
    places = rng.choice(list(POSITIONS), count, replace=False)
    objects = []
    for place in places:
        colour, shape, sz = rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(list(SIZES))
        fx, fy = POSITIONS[place]
        jitter = rng.normal(0, 0.03, 2)
        _draw(d, shape, (fx + jitter[0]) * size, (fy + jitter[1]) * size, SIZES[sz] * size, COLOURS[colour])
        objects.append((str(colour), str(shape), str(place), str(sz)))
    parts = [f"a {sz} {c} {s} {'in the' if p == 'center' else 'at the'} {p}" for c, s, p, sz in objects]
    caption = f"{COUNT_WORDS[count]} shape{'s' if count > 1 else ''}: " + ", ".join(parts)
    c, s, p, sz = objects[0]
    return img, caption, {"colour": c, "shape": s, "position": p, "size": sz, "count": count}


def write_synthetic(
    out: Path, n: int, size: int = 128, seed: int = 0, progress: bool = False, max_objects: int = 3, shards: int = 0
) -> Path:
    """Write n scenes to out/images/*.jpg and out/captions.jsonl, or with `shards`, to that many
    webdataset tar shards as img2dataset writes them (out/00000.tar: key.jpg, key.txt, key.json).
    Deterministic in its arguments."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    it = range(n)
    if progress:
        it = tqdm(it, desc="synth", unit="img")
    scenes = (scene(rng, size, max_objects) for _ in it)
    if shards:
        per = -(-n // shards)
        for k in range(shards):
            part = [(f"{k * per + i:09d}", next(scenes)) for i in range(min(per, n - k * per))]
            write_file(out / f"{k:05d}.tar", lambda tmp, part=part: _write_shard(tmp, part))
        return out
    (out / "images").mkdir(exist_ok=True)
    rows = []
    for i, (img, caption, attrs) in enumerate(scenes):
        name = f"images/{i:06d}.jpg"
        img.save(out / name, quality=92)
        rows.append(json.dumps({"image": name, "caption": caption, "labels": attrs}))
    write_file(out / "captions.jsonl", lambda tmp: tmp.write_text("\n".join(rows) + "\n"))
    return out


def write_labelled(out: Path, n: int, attribute: str, size: int = 128, seed: int = 0, progress: bool = False) -> Path:
    """n one-object scenes as a labelled image folder by `attribute` (colour, shape, position or
    size): out/train/CLASS/*.jpg and out/val/CLASS/*.jpg, a seeded 80/20 split. For fine-tuning
    (`train --objective classify`) and probes."""
    if attribute not in ATTRIBUTES or attribute == "count":
        raise UserError(f"--classes {attribute}: use one of {', '.join(a for a in ATTRIBUTES if a != 'count')}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    it = tqdm(range(n), desc="synth", unit="img") if progress else range(n)
    for i in it:
        img, _, attrs = scene(rng, size, max_objects=1)
        split = "train" if rng.random() < 0.8 else "val"
        folder = out / split / str(attrs[attribute])
        folder.mkdir(parents=True, exist_ok=True)
        write_file(folder / f"{i:06d}.jpg", lambda tmp, img=img: img.save(tmp, format="JPEG", quality=92))
    return out


def _write_shard(path: Path, samples: list) -> None:
    with tarfile.open(path, "w") as tf:
        for key, (img, caption, attrs) in samples:
            jpg = io.BytesIO()
            img.save(jpg, format="JPEG", quality=92)
            meta = json.dumps({"caption": caption, "labels": attrs}).encode()
            for suffix, data in (("jpg", jpg.getvalue()), ("txt", caption.encode()), ("json", meta)):
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
