"""What quantization costs: fidelity of pooled embeddings and tokens against fp32 on real photos,
probe accuracy of the demo checkpoint, file size, memory and speed, for each bit width and group size.

Photos: examples/grace_hopper.jpg and scikit-image's bundled sample photos (pip install scikit-image).
Models: the demo checkpoint, and an AIMv2-L/14-224-shaped encoder with transformers' random
initialisation (NOT the published weights: those are not reachable offline here).

    python benchmarks/quantization.py --out benchmarks/results/quantization_cpu.jsonl
    python benchmarks/quantization.py --quick          # the demo only, no probes
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import L14, PEAK_MIB_CODE, emit  # noqa: E402

ROOT = Path(__file__).parent.parent
VARIANTS = [
    (8, 64, "affine"),
    (8, 128, "affine"),
    (6, 64, "affine"),
    (4, 32, "affine"),
    (4, 64, "affine"),
    (4, 128, "affine"),
    (4, 32, "mxfp4"),
]

MEMORY_CHILD = r"""
import sys, time, numpy as np, mlx.core as mx, mlx_aimv2
folder, keep, b = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
m = mlx_aimv2.load(folder, keep_quantized=keep)
x = mx.array(np.random.default_rng(0).standard_normal((b, 224, 224, 3)).astype(np.float32))
mx.eval(m.features(x[:1], pool="none"))
t = time.perf_counter()
mx.eval(m.features(x, pool="none"))
dt = time.perf_counter() - t
print(dt, _peak_mib())  # common.PEAK_MIB_CODE
"""


def photos() -> list[Path]:
    import skimage.data

    d = Path(skimage.data.__file__).parent
    names = [
        "astronaut.png",
        "chelsea.png",
        "coffee.png",
        "rocket.jpg",
        "motorcycle_left.png",
        "retina.jpg",
        "hubble_deep_field.jpg",
    ]
    return [ROOT / "examples" / "grace_hopper.jpg", *[d / n for n in names if (d / n).is_file()]]


def fidelity(ref: dict, q: dict) -> dict:
    """Pooled cosine (min over photos) and max relative token error (per token: |t_q - t| / |t|)."""
    import numpy as np

    cos, rel = [], []
    for f in ref:
        a, b = ref[f], q[f]
        pa, pb = a.mean(axis=0), b.mean(axis=0)
        cos.append(float(pa @ pb / np.linalg.norm(pa) / np.linalg.norm(pb)))
        rel.append(float((np.linalg.norm(b - a, axis=1) / np.linalg.norm(a, axis=1)).max()))
    return {
        "pooled_cosine_min": round(min(cos), 5),
        "pooled_cosine_mean": round(float(np.mean(cos)), 5),
        "max_rel_token_error": round(max(rel), 4),
    }


def tokens(folder: Path, files) -> dict:
    import mlx_aimv2

    m = mlx_aimv2.load(str(folder))  # on the CPU: dequantized layers, the same numbers as the quantized kernels
    return {str(f): t for f, t in zip(files, m.embed([str(f) for f in files], pool="none"))}


def size(folder: Path) -> int:
    return (folder / "model.safetensors").stat().st_size


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--probe-data", default="data/synth_eval", help="a synthetic probe set (made if missing)")
    a = ap.parse_args()
    import mlx_aimv2
    from mlx_aimv2.quantize import spec

    files = photos()
    tmp = Path(tempfile.mkdtemp())
    models = {"demo": mlx_aimv2.convert("demo", tmp / "demo-f32", dtype="float32")}
    if not a.quick:
        import torch
        from transformers import Aimv2VisionConfig, Aimv2VisionModel

        torch.manual_seed(0)
        Aimv2VisionModel(Aimv2VisionConfig(**L14)).save_pretrained(tmp / "l14-hf")
        models["AIMv2-L/14-224 shape, random weights"] = mlx_aimv2.convert(str(tmp / "l14-hf"), tmp / "l14-f32")
    emit({"what": "setup", "photos": [f.name for f in files], "models": list(models)}, a.out)

    for name, f32 in models.items():
        ref = tokens(f32, files)
        for bits, group, mode in VARIANTS:
            try:
                q = mlx_aimv2.convert(
                    str(f32), tmp / f"{f32.name}-{mode}{bits}g{group}", quantization=spec(bits, group, mode)
                )
            except mlx_aimv2.UserError as e:  # e.g. a group size that does not divide the demo's 192-wide layers
                emit(
                    {"what": "refused", "model": name, "bits": bits, "group_size": group, "mode": mode, "why": str(e)},
                    a.out,
                )
                continue
            emit(
                {
                    "what": "fidelity",
                    "model": name,
                    "bits": bits,
                    "group_size": group,
                    "mode": mode,
                    "size_ratio": round(size(q) / size(f32), 3),
                    "size_mib": round(size(q) / 2**20, 2),
                    **fidelity(ref, tokens(q, files)),
                },
                a.out,
            )

    if not a.quick:  # memory and speed of AIMv2-L at batch 8, each in a fresh process
        f32 = models["AIMv2-L/14-224 shape, random weights"]
        runs = [
            ("fp32", f32, "0"),
            ("8-bit g64, dequantized at load (CPU default)", tmp / "l14-f32-affine8g64", "0"),
            ("4-bit g64, dequantized at load (CPU default)", tmp / "l14-f32-affine4g64", "0"),
            ("8-bit g64, MLX quantized kernels", tmp / "l14-f32-affine8g64", "1"),
            ("4-bit g64, MLX quantized kernels", tmp / "l14-f32-affine4g64", "1"),
        ]
        base = None
        for label, folder, keep in runs:
            b = 8 if keep == "0" else 1  # the quantized kernels are slow on the CPU: one image
            out = subprocess.run(
                [sys.executable, "-c", PEAK_MIB_CODE + MEMORY_CHILD, str(folder), keep, str(b)],
                env=dict(os.environ),
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            img_s = b / float(out[0])
            base = base or img_s
            emit(
                {
                    "what": "speed_memory",
                    "model": "AIMv2-L/14-224 shape",
                    "variant": label,
                    "batch": b,
                    "img_per_s": round(img_s, 3),
                    "vs_fp32": round(img_s / base, 3),
                    "peak_rss_mib": round(float(out[1])),
                },
                a.out,
            )

        # the demo's probes: fp32 against each variant, on the synthetic probe set
        from mlx_aimv2.data import write_synthetic
        from mlx_aimv2.eval import probe as P

        data = Path(a.probe_data)
        if not (data / "captions.jsonl").is_file():
            write_synthetic(data, 3000, size=128, seed=99, max_objects=1)
        attrs = ("colour", "shape", "size")
        sets = {t: P.synthetic_attribute(data, t) for t in attrs}
        demo = models["demo"]
        for label, folder in [("fp32", demo)] + [
            (f"{m} {b}-bit g{g}", tmp / f"{demo.name}-{m}{b}g{g}")
            for b, g, m in VARIANTS
            if (tmp / f"{demo.name}-{m}{b}g{g}").is_dir()
        ]:
            t0 = time.perf_counter()
            top1 = P.probe_all(
                mlx_aimv2.load(str(folder)), sets, None, ("attentive", "linear", "knn"), 30, 0, progress=False
            )
            emit(
                {
                    "what": "probe",
                    "model": "demo",
                    "variant": label,
                    "top1": top1,
                    "mean": {
                        k: round(sum(top1[t][k] for t in attrs) / len(attrs), 2) for k in ("attentive", "linear", "knn")
                    },
                    "seconds": round(time.perf_counter() - t0),
                },
                a.out,
            )


if __name__ == "__main__":
    main()
