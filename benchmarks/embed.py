"""Embedding throughput: mlx-aimv2 against transformers on PyTorch, same weights, same CPU, side by side.

For the AIMv2-L/14-224 architecture with random weights, at batch 1 and 8, in one process with the
runs interleaved (A B C A B C ...) so machine noise hits all alike. A third column runs our model
with MLX's stock CPU kernels (mx.fast SDPA, mx.sigmoid), which is what Apple's ml-aim MLX backend
uses. Peak memory comes from a fresh child process per implementation and batch.

    python benchmarks/embed.py                 # full: L/14-224, batch 1 and 8  (~5 min here)
    python benchmarks/embed.py --quick         # a smaller model, for a smoke run
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, encoder_flops, median, peak_rss_mib, timed  # noqa: E402

L14 = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=8,
           image_size=224, patch_size=14, use_head=False)
SMALL = dict(L14, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=2)


def build(arch: dict):
    """(torch model, our MLX model) with the same random weights."""
    import torch
    from transformers import Aimv2VisionConfig, Aimv2VisionModel
    import mlx.core as mx
    from mlx_aimv2 import checkpoints
    from mlx_aimv2.models import build as build_mlx

    torch.manual_seed(0)
    tm = Aimv2VisionModel(Aimv2VisionConfig(**arch)).eval()
    sd = {k: mx.array(v.detach().numpy()) for k, v in tm.state_dict().items() if "position_ids" not in k}
    w = checkpoints.to_mlx(sd)
    cfg = checkpoints.infer_config(w, {"num_attention_heads": arch["num_attention_heads"]})
    mm = build_mlx(cfg)
    checkpoints.load_into(mm, w, "benchmark", mx.float32)
    return tm, mm


def runners(tm, mm, batch: int, size: int):
    import torch
    import mlx.core as mx
    import mlx_aimv2.models.ops as ops

    x = np.random.default_rng(0).standard_normal((batch, size, size, 3)).astype(np.float32)
    xm, xt = mx.array(x), torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    fast = ops._cpu_fast

    def ours():
        mx.eval(mm(xm))

    def stock():
        ops._cpu_fast = lambda a: False
        try:
            mx.eval(mm(xm))
        finally:
            ops._cpu_fast = fast

    def hf():
        with torch.inference_mode():
            tm(pixel_values=xt)

    return {"mlx-aimv2": ours, "mlx stock kernels (as ml-aim)": stock, "transformers (torch)": hf}


def memory_child(impl: str, batch: int, quick: bool) -> float:
    """Peak RSS (MiB) of a fresh process that builds the model and embeds one batch."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import embed, common; "
            f"tm, mm = embed.build(embed.{'SMALL' if quick else 'L14'}); "
            f"r = embed.runners(tm, mm, {batch}, 224)[{impl!r}]; "
            f"del {'mm' if impl.startswith('transformers') else 'tm'}; import gc; gc.collect(); r(); "
            f"print(common.peak_rss_mib())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--reps", type=int, default=0, help="timed rounds (default 5 at batch 1, 3 at batch 8)")
    ap.add_argument("--out", default=None, help="append JSON lines here")
    ap.add_argument("--no-memory", action="store_true")
    a = ap.parse_args()
    from mlx_aimv2.environment import backend, loaded_blas
    import mlx.core as mx
    import torch
    arch = SMALL if a.quick else L14
    tm, mm = build(arch)
    gflop = encoder_flops(arch["hidden_size"], arch["num_hidden_layers"], arch["intermediate_size"], 256) / 1e9
    emit({"what": "setup", "arch": "small" if a.quick else "AIMv2-L/14-224", "gflop_per_image": round(gflop, 2),
          "mlx": mx.__version__, "backend": backend(), "blas": loaded_blas(), "torch": torch.__version__,
          "torch_threads": torch.get_num_threads()}, a.out)
    for batch in (int(b) for b in a.batches.split(",")):
        fns = runners(tm, mm, batch, 224)
        for fn in fns.values():
            fn()  # warm-up (and MLX's one-time kernel compile)
        reps = a.reps or (5 if batch == 1 else 3)
        times = {k: [] for k in fns}
        for _ in range(reps):  # interleaved rounds
            for k, fn in fns.items():
                times[k] += timed(fn, 1)
        base = median(times["transformers (torch)"])
        for k, ts in times.items():
            rec = {"what": "embed", "impl": k, "batch": batch, "img_per_s": round(batch / median(ts), 3),
                   "s_per_batch": round(median(ts), 3), "vs_torch": round(base / median(ts), 2),
                   "gflop_per_s": round(gflop * batch / median(ts), 1), "reps": reps}
            if not a.no_memory:
                rec["peak_rss_mib"] = round(memory_child(k, batch, a.quick))
            emit(rec, a.out)


if __name__ == "__main__":
    main()
