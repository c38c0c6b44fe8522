"""Ovis2's image preprocessing and its image prompt, as transformers' Ovis2ImageProcessor and
Ovis2Processor do them (AIDC-AI's original remote code crops differently: the transformers one is
followed, exactly).

An image becomes a grid of side x side tiles plus a thumbnail: the grid with the fewest tiles whose
crops cover more than 90 % of the image (`covering_grid`); the image resized (PIL bicubic) onto that
grid's canvas and cut row by row; the whole image resized to side x side first, when there is more
than one tile; each scaled to [0, 1] and normalised with CLIP's mean and std. transformers reads the
chosen (rows, columns) as (columns, rows) when it sizes the canvas, so a 3:1 wide image is squashed
onto a tall canvas: followed here too, so that the model sees what it sees in transformers.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from ..preprocess import CLIP_MEAN, CLIP_STD

START, ATOM, GRID, COL, ROW, END = "<IMG_START>", "<IMG_ATOM>", "<IMG_GRID>", "<IMG_COL>", "<IMG_ROW>", "<IMG_END>"
INDICATOR_TOKENS = (START, GRID, COL, ROW, END)  # in the visual embedding table's order


def _grids(max_tiles: int) -> list[tuple[int, int]]:
    return sorted(((a, b) for a in range(1, max_tiles + 1) for b in range(1, max_tiles + 1) if a * b <= max_tiles),
                  key=lambda g: g[0] * g[1])  # fmt: skip


def _covered(left: int, upper: int, right: int, lower: int, side: int) -> float:
    """The area of a crop that survives its resize to side x side (its long edge capped at side)."""
    w, h = right - left, lower - upper
    w, h = max(w, h), min(w, h)
    if w > side:
        h, w = h / w * side, side
    return w * h


@lru_cache(maxsize=256)
def covering_grid(height: int, width: int, side: int, max_tiles: int = 12, threshold: float = 0.9) -> tuple[int, int]:
    """(rows, columns): the fewest tiles whose crops keep more than `threshold` of the image's area."""
    scored = []
    for rows, cols in _grids(max_tiles):
        rh, cw = height // rows, width // cols
        crops = [(c * cw, r * rh, width if c == cols - 1 else (c + 1) * cw, height if r == rows - 1 else (r + 1) * rh)
                 for r in range(rows) for c in range(cols)]  # fmt: skip
        scored.append(((rows, cols), sum(_covered(*crop, side) for crop in crops) / (height * width)))
    enough = [s for s in scored if s[1] > threshold]
    if enough:
        return min(enough, key=lambda s: (s[0][0] * s[0][1], -s[1]))[0]
    return min(scored, key=lambda s: (-s[1], s[0][0] * s[0][1]))[0]


def _normalised(image: Image.Image) -> np.ndarray:
    x = np.asarray(image, dtype=np.float32) / 255.0
    return (x - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)


def preprocess(image: Image.Image, side: int, max_tiles: int = 12) -> tuple[np.ndarray, tuple[int, int]]:
    """(crops (n, side, side, 3) float32, the grid (rows, columns) the prompt describes)."""
    image = image.convert("RGB")
    if max_tiles <= 1:
        return _normalised(image.resize((side, side), Image.BICUBIC))[None], (1, 1)
    # transformers unpacks the (rows, columns) it chose as (columns, rows): its canvas is cols tall
    columns, rows = covering_grid(image.height, image.width, side, max_tiles)
    canvas = image.resize((side * columns, side * rows), Image.BICUBIC)
    tiles = [
        canvas.crop((c * side, r * side, (c + 1) * side, (r + 1) * side)) for r in range(rows) for c in range(columns)
    ]
    if len(tiles) > 1:
        tiles.insert(0, image.resize((side, side), Image.BICUBIC))
    return np.stack([_normalised(t) for t in tiles]), (rows, columns)


def image_prompt(grid: tuple[int, int], tokens_per_crop: int) -> str:
    """The text that stands for one image in a prompt: the thumbnail's visual tokens, then each tile's,
    with <IMG_COL> between columns and <IMG_ROW> between rows."""
    rows, cols = grid
    text = START + ATOM * tokens_per_crop + GRID
    if rows * cols > 1:
        for r in range(rows):
            for c in range(cols):
                text += ATOM * tokens_per_crop + (COL if c < cols - 1 else "")
            text += ROW if r < rows - 1 else ""
    return text + END
