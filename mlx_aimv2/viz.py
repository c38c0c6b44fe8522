"""Pictures: patch-feature PCA beside the image, and loss curves."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from .errors import UserError
from .preprocess import load_image, to_rgb


def pca_rgb(tokens: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(N, D) patch features -> (h, w, 3) uint8: the first three principal components as RGB."""
    x = tokens.astype(np.float64) - tokens.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    c = x @ vt[:3].T
    lo, hi = np.percentile(c, 1, axis=0), np.percentile(c, 99, axis=0)
    c = np.clip((c - lo) / np.maximum(hi - lo, 1e-8), 0, 1)
    return (c.reshape(grid[0], grid[1], 3) * 255).astype(np.uint8)


def save_pca(images: Sequence[Image.Image], tokens: Sequence[np.ndarray], grids, out: Path, cell: int = 224) -> Path:
    """One row per image: the image, then its PCA map (nearest-upsampled so patches stay visible)."""
    rows = []
    for img, tok, grid in zip(images, tokens, grids):
        h = cell
        w = max(int(round(cell * grid[1] / grid[0])), 1)
        left = img.convert("RGB").resize((w, h), Image.BICUBIC)
        right = Image.fromarray(pca_rgb(tok, grid)).resize((w, h), Image.NEAREST)
        row = Image.new("RGB", (2 * w + 8, h), "white")
        row.paste(left, (0, 0))
        row.paste(right, (w + 8, 0))
        rows.append(row)
    canvas = Image.new("RGB", (max(r.width for r in rows), sum(r.height + 8 for r in rows) - 8), "white")
    y = 0
    for r in rows:
        canvas.paste(r, (0, y))
        y += r.height + 8
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


# what a run measures on held-out data (eval_every), as its panel beside the losses
ACCURACY = {"knn_top1": "k-NN top-1 (%) on eval_data", "val_top1": "held-out top-1 (%)"}


def plot_curves(records: list[dict], out: Path, keys=("loss", "loss_image", "loss_text")) -> Path:
    """Loss curves from metrics records (dicts with "step" and the keys), and beside them the k-NN
    probe's accuracy when the run evaluated (eval_every)."""
    metric = next((k for k in ACCURACY if any(r.get(k) is not None for r in records)), None)
    probe = [(r["step"], r[metric]) for r in records if r.get(metric) is not None] if metric else []
    fig = Figure(figsize=(11 if probe else 7, 4))  # no pyplot: an app's own matplotlib backend stays as it is
    axes = fig.subplots(1, 2 if probe else 1)
    ax = axes[0] if probe else axes
    for k in keys:
        pts = [(r["step"], r[k]) for r in records if k in r and r[k] is not None]
        if pts:
            ax.plot(*zip(*pts), label=k)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    if probe:
        axes[1].plot(*zip(*probe), marker="o", color="tab:green")
        axes[1].set_xlabel("step")
        axes[1].set_ylabel(ACCURACY[metric])
        axes[1].grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def contact_sheet(paths: Sequence[str], labels: Sequence[str], out: Path, cell: int = 160, columns: int = 5) -> Path:
    """The hits of a search as a grid of thumbnails, each with its label (rank, score, file name) below;
    an image that no longer opens gets a grey tile."""
    rows = max(1, -(-len(paths) // columns))
    text_h = 28
    sheet = Image.new("RGB", (columns * (cell + 8) + 8, rows * (cell + text_h + 8) + 8), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (p, label) in enumerate(zip(paths, labels)):
        x, y = 8 + (i % columns) * (cell + 8), 8 + (i // columns) * (cell + text_h + 8)
        try:
            thumb = to_rgb(load_image(p, draft=cell))  # any format the index reads (HEIC, RAW, ...)
            thumb.thumbnail((cell, cell), Image.BICUBIC)
        except Exception:
            thumb = Image.new("RGB", (cell, cell), (200, 200, 200))
        sheet.paste(thumb, (x + (cell - thumb.width) // 2, y + (cell - thumb.height) // 2))
        for j, line in enumerate(label.split("\n")[:2]):
            draw.text((x, y + cell + 2 + 12 * j), line[: cell // 6], fill="black")
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(out)
    except OSError as e:
        raise UserError(f"{out}: cannot write the contact sheet ({e.strerror or e})") from None
    return out


def save_completion(
    real: np.ndarray, predicted: np.ndarray, error: np.ndarray, prefix: int, out: Path, cell: int = 256
) -> Path:
    """Three panels: the image, the image with every patch after the first `prefix` replaced by the
    decoder's prediction (the prefix outlined), and each predicted patch's error (brighter = worse)."""
    h, w = real.shape[:2]
    gh, gw = error.shape
    scale = cell / max(h, w)
    size = (max(int(w * scale), 1), max(int(h * scale), 1))
    heat = error / max(float(error.max()), 1e-12)
    heat = (np.stack([heat, heat * 0.45, 1 - heat], -1) * 255).astype(np.uint8)
    panels = [
        Image.fromarray(real).resize(size, Image.NEAREST),
        Image.fromarray(predicted).resize(size, Image.NEAREST),
        Image.fromarray(heat).resize(size, Image.NEAREST),
    ]
    sheet = Image.new("RGB", (3 * size[0] + 32, size[1] + 36), "white")
    draw = ImageDraw.Draw(sheet)
    titles = ("image", f"first {prefix} patches, then predicted", "error of each prediction")
    for i, (panel, title) in enumerate(zip(panels, titles)):
        x = 8 + i * (size[0] + 8)
        sheet.paste(panel, (x, 28))
        draw.text((x, 8), title, fill="black")
    pw, ph = size[0] / gw, size[1] / gh  # outline the prefix on the middle panel
    x0 = 16 + size[0]
    for j in range(prefix):
        r, c = divmod(j, gw)
        draw.rectangle([x0 + c * pw, 28 + r * ph, x0 + (c + 1) * pw - 1, 28 + (r + 1) * ph - 1], outline=(0, 160, 0))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
