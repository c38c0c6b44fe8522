"""Embedding throughput: mlx-aimv2 against transformers on PyTorch, same weights, same CPU, same run.

AIMv2-L/14-224 with random weights, saved once as a transformers checkpoint; mlx-aimv2 loads it
through its converter, transformers with from_pretrained. Rounds are interleaved (ours, stock, torch,
ours, ...) so machine noise hits all alike. Torch runs in a worker process of its own without the
OpenBLAS preload (inside a preloaded process its MKL/OpenMP threads fight OpenBLAS's and it runs ~3x
slower, which would flatter us). "mlx stock kernels" is our model on MLX's own CPU kernels
(mx.fast SDPA, nn.silu: the model code with cpu.use_kernels off) on one stream, as Apple's ml-aim MLX backend runs; "one CPU stream"
isolates the gain of spreading a batch over streams. Peak memory: a fresh child per
implementation and batch that loads only its own model (its VmHWM, Linux).

    python benchmarks/embed.py               # L/14-224, batch 1 and 8 (~6 min here)
    python benchmarks/embed.py --quick       # a 4-block model, for a smoke run
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import L14, PEAK_MIB_CODE, emit, encoder_flops, gemm_peak_gflops, median  # noqa: E402

SMALL = dict(L14, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=2)

TORCH_WORKER = r"""
import sys, time, numpy as np, torch
from transformers import Aimv2VisionModel
m = Aimv2VisionModel.from_pretrained(sys.argv[1]).eval()
print(torch.get_num_threads(), flush=True)
for line in sys.stdin:
    b = int(line)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((b, 3, 224, 224)).astype(np.float32))
    t = time.perf_counter()
    with torch.inference_mode():
        m(pixel_values=x)
    print(time.perf_counter() - t, flush=True)
"""

MEMORY_CHILD = r"""
import sys, numpy as np
impl, folder, b = sys.argv[1], sys.argv[2], int(sys.argv[3])
x = np.random.default_rng(0).standard_normal((b, 224, 224, 3)).astype(np.float32)
if impl == "torch":
    import torch
    from transformers import Aimv2VisionModel
    m = Aimv2VisionModel.from_pretrained(folder).eval()
    with torch.inference_mode():
        m(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
else:
    import mlx.core as mx, mlx_aimv2
    m = mlx_aimv2.load(folder)
    mx.eval(m.features(mx.array(x), pool="none"))
print(_peak_mib())  # common.PEAK_MIB_CODE: VmHWM on Linux, ru_maxrss (bytes) on macOS
"""


def no_preload_env():
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    env["MLX_AIMV2_NO_RESTART"] = "1"
    return env


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--reps", type=int, default=0, help="timed rounds (default 5 at batch 1, 3 at batch 8)")
    ap.add_argument("--out", default=None, help="append JSON lines here")
    a = ap.parse_args()

    import mlx.core as mx
    import numpy as np
    import torch
    from transformers import Aimv2VisionConfig, Aimv2VisionModel

    import mlx_aimv2
    from mlx_aimv2 import cpu
    from mlx_aimv2.cpu import loaded_blas
    from mlx_aimv2.environment import backend

    arch = SMALL if a.quick else L14
    tmp = tempfile.TemporaryDirectory()
    folder = Path(tmp.name) / "ckpt"
    torch.manual_seed(0)
    Aimv2VisionModel(Aimv2VisionConfig(**arch)).save_pretrained(folder)
    ours = mlx_aimv2.load(str(folder))
    worker = subprocess.Popen(
        [sys.executable, "-c", TORCH_WORKER, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=no_preload_env(),
    )
    torch_threads = int(worker.stdout.readline())
    peak = gemm_peak_gflops()  # and again at the end: the share of the peak uses the better of the two
    gflop = encoder_flops(arch["hidden_size"], arch["num_hidden_layers"], arch["intermediate_size"], 256) / 1e9
    emit(
        {
            "what": "setup",
            "arch": "small" if a.quick else "AIMv2-L/14-224",
            "gflop_per_image": round(gflop, 2),
            "mlx": mx.__version__,
            "backend": backend(),
            "blas": loaded_blas(),
            "torch": torch.__version__,
            "torch_threads": torch_threads,
            "torch_process": "separate, no preload",
        },
        a.out,
    )

    def mlx_run(b, mode):
        import time

        x = mx.array(np.random.default_rng(0).standard_normal((b, 224, 224, 3)).astype(np.float32))
        cpu.use_kernels(ours.module, enabled=mode != "stock")  # stock: MLX's own ops, as on Metal
        try:
            t = time.perf_counter()
            mx.eval(ours.features(x, pool="none") if mode == "full" else ours.vision(x))
            return time.perf_counter() - t
        finally:
            cpu.use_kernels(ours.module)

    # features' split over the CPU streams, traced whole (cpu.per_stream is lazy) and compiled per input shape
    compiled = mx.compile(lambda x: cpu.per_stream(lambda part: (ours._forward(part, "none", None)["tokens"],), x)[0])

    def compiled_run(b):
        import contextlib
        import time

        x = mx.array(np.random.default_rng(0).standard_normal((b, 224, 224, 3)).astype(np.float32))
        t = time.perf_counter()
        with cpu.blas_threads(1) if b > 1 else contextlib.nullcontext():
            mx.eval(compiled(x))
        return time.perf_counter() - t

    def torch_run(b):
        worker.stdin.write(f"{b}\n")
        worker.stdin.flush()
        return float(worker.stdout.readline())

    impls = {
        "mlx-aimv2": lambda b: mlx_run(b, "full"),
        "mlx-aimv2, compiled forward": compiled_run,
        "mlx-aimv2, one CPU stream": lambda b: mlx_run(b, "one"),
        "mlx stock kernels, one stream (as ml-aim)": lambda b: mlx_run(b, "stock"),
        "transformers (torch)": torch_run,
    }
    for b in (int(x) for x in a.batches.split(",")):
        for fn in impls.values():
            fn(b)  # warm-up
        reps = a.reps or (5 if b == 1 else 3)
        times = {k: [] for k in impls}
        for _ in range(reps):
            for k, fn in impls.items():
                times[k].append(fn(b))
        peak = max(peak, gemm_peak_gflops())
        base = median(times["transformers (torch)"])
        for k, ts in times.items():
            child = "torch" if k.startswith("transformers") else "mlx"
            if k not in ("mlx-aimv2", "transformers (torch)"):
                child = None
            env = no_preload_env() if child == "torch" else dict(os.environ)
            rss = (
                child
                and subprocess.run(
                    [sys.executable, "-c", PEAK_MIB_CODE + MEMORY_CHILD, child, str(folder), str(b)],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.split()[-1]
            )
            emit(
                {
                    "what": "embed",
                    "impl": k,
                    "batch": b,
                    "img_per_s": round(b / median(ts), 3),
                    "s_per_batch": round(median(ts), 3),
                    "vs_torch": round(base / median(ts), 2),
                    "gflop_per_s": round(gflop * b / median(ts), 1),
                    "of_gemm_peak": round(gflop * b / median(ts) / peak, 3),
                    "gemm_peak_gflop_s": round(peak, 1),
                    "reps": reps,
                    "times": [round(t, 3) for t in ts],
                    "peak_rss_mib": round(float(rss)) if k in ("mlx-aimv2", "transformers (torch)") else None,
                },
                a.out,
            )
    worker.stdin.close()
    worker.wait()


if __name__ == "__main__":
    main()
