"""The measurements of one run on a CUDA machine (benchmarks/gpu.sh runs it there; `--quick` runs the
same code on this CPU with tiny sizes, as the dry run). One JSON line per figure, each a ratio
against a reference measured in the same run:

- matmul: the bf16 and fp32 GEMM rate of MLX (and of PyTorch where it has CUDA): the peaks;
- embed: AIMv2-L/14-224 (the same random weights) in MLX and in transformers, fp32 and bf16, at
  batch 1 / 8 / 64: images per second and MLX's ratio to PyTorch;
- train: one AIMv2 pre-training step (ViT-B/14 + its decoder, bf16 compute) against MLX's bf16 peak;
- tests: the parity and training tests run on this backend (passed / failed);
- ovis2: Ovis2-1B's shape (random weights): time to the first token and tokens per second in MLX,
  bf16 and with the language model and encoder blocks 4-bit, against transformers' bf16 on the GPU
  (benchmarks/ovis2.py's measure; mlx-lm's wheel travels with the small ones);
- fidelity: float16's and bfloat16's embeddings against float32's at each published size's shape
  (L, H, 1B, 3B; benchmarks/precision.py's measure, which takes 17 minutes for L alone on the CPU),
  as many sizes as the run's time budget allows.

    python benchmarks/gpu.py --out benchmarks/results/gpu --quick     # the dry run on this CPU
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# common.py by its path, the benchmarks folder kept off sys.path: on the GPU machine only what this
# script names should shadow nothing of transformers' own imports
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
_spec = importlib.util.spec_from_file_location("bench_common", Path(__file__).with_name("common.py"))
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)
L14, emit, median, train_flops_per_image = common.L14, common.emit, common.median, common.train_flops_per_image
_spec = importlib.util.spec_from_file_location("bench_precision", Path(__file__).with_name("precision.py"))
precision = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(precision)
sys.modules["common"] = common  # what ovis2.py imports by that name
_spec = importlib.util.spec_from_file_location("bench_ovis2", Path(__file__).with_name("ovis2.py"))
ovis2 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ovis2)

ROOT = Path(__file__).parent.parent
TINY = dict(L14, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=56)


def sync_time(fn, sync, reps: int) -> float:
    """Median seconds of fn() with the device synchronised around it, after two warm-up calls."""
    fn(), fn()
    sync()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t)
    return median(out)


def matmul(n: int, reps: int, out) -> dict:
    import mlx.core as mx

    peaks = {}
    for name, dtype in (("bf16", mx.bfloat16), ("fp32", mx.float32)):
        a, b = mx.random.normal((n, n)).astype(dtype), mx.random.normal((n, n)).astype(dtype)
        s = sync_time(lambda a=a, b=b: mx.eval(a @ b), mx.synchronize, reps)
        peaks[name] = 2 * n**3 / s / 1e12
        emit({"figure": "matmul", "impl": "mlx", "dtype": name, "n": n, "tflops": round(peaks[name], 3)}, out)
    torch = _torch()
    if torch is not None and torch.cuda.is_available():
        for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            a = torch.randn(n, n, device="cuda", dtype=dtype)
            s = sync_time(lambda a=a: a @ a, torch.cuda.synchronize, reps)
            emit(
                {"figure": "matmul", "impl": "torch", "dtype": name, "n": n, "tflops": round(2 * n**3 / s / 1e12, 3)},
                out,
            )
    return peaks


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def embed(vision: dict, batches: list, reps: int, out) -> None:
    """MLX against transformers on the same weights, each dtype and batch."""
    import mlx.core as mx

    import mlx_aimv2

    torch = _torch()
    from transformers import Aimv2VisionConfig, Aimv2VisionModel

    device = "cuda" if torch is not None and torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        ref = Aimv2VisionModel(Aimv2VisionConfig(**vision)).eval()
        ref.save_pretrained(tmp)
        size = vision["image_size"]
        for dtype, mdt, tdt in (("fp32", mx.float32, torch.float32), ("bf16", mx.bfloat16, torch.bfloat16)):
            ours = mlx_aimv2.load(tmp, dtype=mdt)
            theirs = ref.to(device=device, dtype=tdt)
            for b in batches:
                x = np.random.default_rng(0).normal(size=(b, size, size, 3)).astype(np.float32)
                xm = mx.array(x)
                xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device=device, dtype=tdt)
                t_mlx = sync_time(lambda m=ours, x=xm: mx.eval(m.features(x, pool="none")), mx.synchronize, reps)
                sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
                with torch.inference_mode():
                    t_torch = sync_time(lambda m=theirs, x=xt: m(pixel_values=x), sync, reps)
                emit({"figure": "embed", "dtype": dtype, "batch": b, "mlx_img_s": round(b / t_mlx, 2),
                      "torch_img_s": round(b / t_torch, 2), "ratio_mlx_to_torch": round(t_torch / t_mlx, 3),
                      "torch_device": device})  # fmt: skip


def ovis2_generate(shape: str, reps: int, out) -> None:
    """Ovis2's TTFT and tok/s in MLX (bf16; 4-bit kept quantized) against transformers' bf16."""
    import mlx.core as mx

    torch = _torch()
    device = "cuda" if torch is not None and torch.cuda.is_available() else "cpu"
    new = 32
    with tempfile.TemporaryDirectory() as tmp:
        prompt = ovis2.save_model(shape, Path(tmp))
        theirs = ovis2.time_transformers(Path(tmp), prompt, new, reps, device, "bfloat16")
        for bits in (None, 4):
            ours = ovis2.time_ours(Path(tmp), prompt, new, reps, bits, mx.bfloat16)
            emit({"figure": "ovis2", "shape": shape, "mlx": "bf16" if bits is None else "4-bit", "ttft_s": round(ours["ttft_s"], 4),
                  "tok_per_s": round(ours["tok_per_s"], 2), "torch_bf16_ttft_s": round(theirs["ttft_s"], 4),
                  "torch_bf16_tok_per_s": round(theirs["tok_per_s"], 2), "torch_device": device,
                  "ttft_ratio": round(theirs["ttft_s"] / ours["ttft_s"], 3),
                  "tok_per_s_ratio": round(ours["tok_per_s"] / theirs["tok_per_s"], 3)}, out)  # fmt: skip


def train(encoder: str, image_size: int, batch: int, reps: int, peak_tflops: float, out) -> None:
    import mlx.core as mx

    run = common.training_step(encoder, image_size, batch, dtype="bfloat16")
    model, one = run.model, run.one

    s = sync_time(one, mx.synchronize, reps)
    tflops = train_flops_per_image(model, image_size, 77) * batch / s / 1e12
    emit({"figure": "train", "encoder": encoder, "batch": batch, "dtype": "bf16", "step_s": round(s, 4),
          "img_s": round(batch / s, 1), "tflops": round(tflops, 3), "mfu_vs_mlx_bf16_peak": round(tflops / peak_tflops, 3)},
         out)  # fmt: skip


def tests(out, timeout: int) -> None:
    """The parity and training tests on this backend."""
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-p", "no:cacheprovider", "tests/test_parity.py",
                        "tests/test_train.py", "tests/test_losses.py"], cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout)  # fmt: skip
    last = (r.stdout.strip().splitlines() or ["(no output)"])[-1]
    emit(
        {"figure": "tests", "returncode": r.returncode, "summary": last, "seconds": round(time.perf_counter() - t)}, out
    )


def fidelity(sizes: dict, images: int, k: int, deadline: float, out) -> None:
    """Half precision's fidelity per shape, in order, starting no size after `deadline` (perf_counter):
    the largest last, as it takes longest to draw and save its random weights."""
    for size, shape in sizes.items():
        if time.perf_counter() > deadline:
            emit({"figure": "fidelity", "size": size, "skipped": "past the run's time budget"}, out)
            continue
        for row in precision.fidelity(shape, precision.photos(images), k):
            emit({"figure": "fidelity", "size": size, **row}, out)


def main():
    start = time.perf_counter()
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/gpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: the dry run on a CPU")
    ap.add_argument("--skip-tests", action="store_true")
    a = ap.parse_args()
    import mlx.core as mx

    out = Path(a.out) / f"gpu_{'quick' if a.quick else 'h200'}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    emit({"figure": "device", "mlx": mx.__version__, "device": str(mx.default_device()), "python": platform.python_version(),
          "info": {k: v for k, v in mx.device_info().items() if isinstance(v, (int, str))}}, out)  # fmt: skip
    peaks = matmul(512 if a.quick else 8192, 3 if a.quick else 20, out)
    embed(TINY if a.quick else L14, [1, 2] if a.quick else [1, 8, 64], 2 if a.quick else 10, out)
    train(
        "tiny" if a.quick else "vit-b",
        56 if a.quick else 224,
        2 if a.quick else 64,
        2 if a.quick else 10,
        peaks["bf16"],
        out,
    )
    ovis2_generate("tiny" if a.quick else "Ovis2-1B", 2 if a.quick else 5, out)
    if not a.skip_tests:
        tests(out, 600 if a.quick else 240)
    tiny = {k: TINY[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")}
    sizes = {"tiny": tiny} if a.quick else precision.SHAPES
    fidelity(sizes, 4 if a.quick else 25, 2 if a.quick else 10, start + (600 if a.quick else 390), out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
