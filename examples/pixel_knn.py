"""The pixel-space floor of docs/ablation.md: the same k-NN the probes use, on raw 64-px pixels of
the held-out synthetic set instead of encoder features. Shows that an attribute is in the pixels.

    python examples/pixel_knn.py                     # writes runs/ablation/pixel_knn.json
    python examples/pixel_knn.py --out docs/pixel_knn.json   # refreshes the repository's copy
"""

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from mlx_aimv2.data import write_synthetic
from mlx_aimv2.data.synth import ATTRIBUTES
from mlx_aimv2.eval.probe import knn, synthetic_attribute


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="runs/ablation/synth_eval", help="made as examples/ablation.py makes it")
    ap.add_argument("--out", default="runs/ablation/pixel_knn.json")
    a = ap.parse_args()
    data = Path(a.data)
    if not (data / "captions.jsonl").is_file():
        write_synthetic(data, 3000, size=64, seed=12345)  # the ablation's held-out set
    top1 = {}
    for attr in ATTRIBUTES:
        ds = synthetic_attribute(data, attr)
        x = np.stack([np.asarray(Image.open(f).convert("RGB"), np.float32).ravel() / 255 for f in ds.files])
        x -= x.mean(axis=0)  # centre, so cosine similarity compares layouts rather than brightness
        pred = knn(x[ds.split], ds.labels[ds.split], x[~ds.split], classes=len(ds.classes))
        top1[attr] = round(float((pred == ds.labels[~ds.split]).mean() * 100), 1)
        print(f"{attr:>10}: pixel k-NN {top1[attr]:5.1f}%")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(
        json.dumps({"command": "python examples/pixel_knn.py", "data": str(data), "top1": top1}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
