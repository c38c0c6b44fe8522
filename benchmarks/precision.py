"""What half precision costs in fidelity (issue 30, item 3): the same encoder loaded in float32, float16
and bfloat16, embedding the same photos; per shape, the cosine of each pooled embedding to float32's
and the overlap of each photo's 10 nearest neighbours among the others with float32's (the search a
photo library runs). Weights are random (no hub here), drawn as transformers initialises AIMv2, at
each published size's shape.

    python benchmarks/precision.py --sizes large --out benchmarks/results/precision_cpu.jsonl

On this CPU bfloat16 and float16 are emulated and slow (their time is not the point here); on Metal and
CUDA they run at about twice float32's speed with half the memory.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import emit  # noqa: E402

ROOT = Path(__file__).parent.parent
SHAPES = {  # transformers' Aimv2VisionConfig arguments of each published 224-px encoder
    "large": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=8),
    "huge": dict(hidden_size=1536, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=12),
    "1B": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=24, num_attention_heads=16),
    "3B": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=24),
}


def neighbours(e: np.ndarray, k: int) -> list[set]:
    """Each row's k nearest other rows by cosine."""
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    s = e @ e.T
    np.fill_diagonal(s, -np.inf)
    return [set(np.argsort(-row)[:k].tolist()) for row in s]


def photos(n: int) -> list[str]:
    """The Grace Hopper photo and the 24 scenes, the first n of them."""
    scenes = sorted(str(p) for p in (ROOT / "examples" / "scenes" / "images").glob("*.jpg"))
    return ([str(ROOT / "examples" / "grace_hopper.jpg")] + scenes)[:n]


def fidelity(shape: dict, images: list[str], k: int) -> list[dict]:
    """One encoder shape with transformers' random weights, loaded in float32, float16 and bfloat16:
    per half precision, the pooled embeddings' cosine to float32's and the top-k neighbour overlap."""
    import mlx.core as mx
    import torch
    from transformers import Aimv2VisionConfig, Aimv2VisionModel

    import mlx_aimv2

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        Aimv2VisionModel(Aimv2VisionConfig(**{"image_size": 224, "patch_size": 14, **shape})).save_pretrained(tmp)
        ref = mlx_aimv2.load(tmp, dtype=mx.float32).embed(images)
        near = neighbours(ref, k)
        for name, dtype in (("float16", mx.float16), ("bfloat16", mx.bfloat16)):
            e = mlx_aimv2.load(tmp, dtype=dtype).embed(images)
            cos = (e * ref).sum(1) / np.linalg.norm(e, axis=1) / np.linalg.norm(ref, axis=1)
            overlap = np.mean([len(x & y) / k for x, y in zip(neighbours(e, k), near)])
            rows.append({"dtype": name, "images": len(images), "cosine_mean": round(float(cos.mean()), 6),
                         "cosine_min": round(float(cos.min()), 6), f"top{k}_overlap": round(float(overlap), 4),
                         "finite": bool(np.isfinite(e).all())})  # fmt: skip
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="large", help="comma-separated: large, huge, 1B, 3B")
    ap.add_argument("--images", type=int, default=25)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    from mlx_aimv2.environment import backend

    for size in a.sizes.split(","):
        for row in fidelity(SHAPES[size], photos(a.images), a.k):
            emit({"what": "precision", "size": size, **row, "backend": backend()}, a.out)


if __name__ == "__main__":
    main()
