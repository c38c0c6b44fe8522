"""Near-duplicate grouping (`mlx-aimv2 dupes`) measured on a generated set of edited copies: N
synthetic originals, each with five edits (re-encoded at quality 60, halved in size, cropped 2.5 % a
side, 15 % brighter, saved as PNG), beside N other scenes of the same kind that have no copies.

For each threshold: pairwise precision (of the pairs put in one group, how many are copies of one
photo) and recall (of the true copy pairs, how many were grouped). The default threshold of
index/dupes.py is the one with the best F1 here, for the model measured.

    python benchmarks/dupes.py --model demo-lit --out benchmarks/results/dupes_demo_lit.jsonl
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from common import emit  # noqa: E402

import mlx_aimv2  # noqa: E402
from mlx_aimv2.data import write_synthetic  # noqa: E402
from mlx_aimv2.index.dupes import groups  # noqa: E402


def edited_copies(src: Path, out: Path) -> None:
    im = Image.open(src).convert("RGB")
    w, h = im.size
    im.save(out / f"{src.stem}-reencoded.jpg", quality=60)
    im.resize((w // 2, h // 2)).save(out / f"{src.stem}-resized.jpg")
    im.crop((w // 40, h // 40, w - w // 40, h - h // 40)).save(out / f"{src.stem}-cropped.jpg")
    ImageEnhance.Brightness(im).enhance(1.15).save(out / f"{src.stem}-brighter.jpg")
    im.save(out / f"{src.stem}-copy.png")


def pairs(sets) -> set:
    return {tuple(sorted(p)) for s in sets for p in itertools.combinations(s, 2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="demo-lit")
    ap.add_argument("--n", type=int, default=60, help="originals (and as many other scenes)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synth = write_synthetic(tmp / "synth", 2 * a.n, size=160, seed=11)
        photos = tmp / "photos"
        photos.mkdir()
        files = sorted((synth / "images").iterdir())
        for f in files[: a.n]:
            shutil.copy(f, photos / f.name)
            edited_copies(f, photos)
        for f in files[a.n :]:
            shutil.copy(f, photos / f.name)
        with mlx_aimv2.Index(tmp / "lib.aimv2", model=a.model) as lib:
            lib.add([photos])
            paths, matrix = lib._matrix()
    names = [Path(p).name.split("-")[0].split(".")[0] for p in paths]
    truth = pairs([[i for i, n in enumerate(names) if n == f.stem] for f in files[: a.n]])
    best = None
    for t in (0.85, 0.88, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99):
        found = pairs(groups(matrix, t))
        tp = len(found & truth)
        precision = tp / len(found) if found else 1.0
        recall = tp / len(truth)
        f1 = 2 * precision * recall / max(precision + recall, 1e-9)
        row = {
            "bench": "dupes",
            "model": a.model,
            "images": len(paths),
            "threshold": t,
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f1": round(f1, 4),
        }
        emit(row, a.out)
        if best is None or f1 > best["f1"]:
            best = row
    print(f"best F1 {best['f1']} at threshold {best['threshold']}")


if __name__ == "__main__":
    main()
