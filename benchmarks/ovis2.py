"""Ovis2: time to the first token and tokens per second, mlx-aimv2 against transformers on PyTorch,
same weights, same CPU, same run; and the memory each published size needs (derived from shapes).

A random-weight Ovis2 of transformers is saved once (float32 safetensors); mlx-aimv2 reads that folder
in float32, transformers loads it with from_pretrained in a worker process of its own, without the
OpenBLAS preload (in a preloaded process its threads fight OpenBLAS's: see embed.py). The prompt is a
square image (the thumbnail alone: one crop) with 40 text tokens around it; greedy, no end token.
TTFT is the encoder, the prefill and the first token; tok/s is the rest over its time. At the tiny
shape a 4-bit row keeps the layers quantized (`convert -q --q-bits 4`, load(keep_quantized=True)) to
show what MLX's CPU quantized kernels cost; the library runs a quantized folder dequantized on the
CPU (float speed and memory), so at Ovis2-1B's shape 4-bit is a Metal / CUDA figure (benchmarks/gpu.py).

    python benchmarks/ovis2.py                  # tiny, then Ovis2-1B's shape (~6 min here)
    python benchmarks/ovis2.py --shapes tiny    # a smoke run
    python benchmarks/ovis2.py --memory-only    # the derived memory table, nothing run
    python benchmarks/ovis2.py --breakdown      # where Ovis2-1B's first token goes (~2 min)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, median  # noqa: E402

from mlx_aimv2.config import PRESETS  # noqa: E402
from mlx_aimv2.config.ovis2 import HIDDEN_STRIDE as STRIDE  # noqa: E402
from mlx_aimv2.config.ovis2 import OVIS2, QWEN, VISUAL_VOCAB  # noqa: E402

PATCH = 14


def _published(tower: str, lm: str) -> tuple:
    """A published Ovis2's shapes as SHAPES holds them, from config/ovis2.py (what `models` lists)."""
    v, q = PRESETS[tower].vision, QWEN[lm]
    return ((v.hidden_size, v.depth, v.num_heads, v.mlp_hidden),
            (q.hidden, q.layers, q.heads, q.kv_heads, q.mlp, q.vocab, q.tied), v.image_size, VISUAL_VOCAB)  # fmt: skip


SHAPES = {  # (tower, language model, image side, visual vocabulary) of the runs
    "tiny": ((64, 2, 2, 128), (64, 2, 4, 2, 128, 300, True), 56, 48),
    "Ovis2-1B": _published(*OVIS2["AIDC-AI/Ovis2-1B"]),
}


def memory_table() -> list:
    """Each published size's weights in bf16 and 4-bit (group 64: a bf16 scale and bias per group; the
    visual head and table, norms and the tower's patch embedding stay bf16), and its KV cache per
    1,000 tokens in bf16: config/ovis2.py's sums over the shapes (tested against transformers' count
    on a tiny Ovis2), derived, not measured."""
    from mlx_aimv2.config.ovis2 import kv_cache_bytes, ovis2_bytes, ovis2_params

    rows = []
    for name, (tower, lm) in OVIS2.items():
        rows.append({"model": name, "tower": tower, "language_model": f"Qwen2.5-{lm}",
                     "params_B": round(ovis2_params(tower, lm)[0] / 1e9, 2),
                     "bf16_GB": round(ovis2_bytes(tower, lm) / 1e9, 2), "4bit_GB": round(ovis2_bytes(tower, lm, 4) / 1e9, 2),
                     "kv_cache_MB_per_1k_tokens": round(kv_cache_bytes(lm, 1000) / 1e6, 1),
                     "derived": "from the shapes, not measured"})  # fmt: skip
    return rows


def save_model(shape: str, folder: Path) -> dict:
    """A random-weight transformers Ovis2 of `shape`, saved; returns the prompt and image to time."""
    import torch
    from transformers import Ovis2Config, Ovis2ForConditionalGeneration, Ovis2VisionConfig, Qwen2Config

    (d, depth, heads, mlp), (h, layers, qh, kv, inter, vocab, tied), side, vv = SHAPES[shape]
    vision = Ovis2VisionConfig(hidden_size=d, intermediate_size=mlp, num_hidden_layers=depth, num_attention_heads=heads,
                               image_size=side, patch_size=PATCH, hidden_stride=STRIDE, vocab_size=vv)  # fmt: skip
    text = Qwen2Config(hidden_size=h, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=qh,
                       num_key_value_heads=kv, vocab_size=vocab, tie_word_embeddings=tied)  # fmt: skip
    image_token, indicators = vocab - 6, list(range(vocab - 5, vocab))
    config = Ovis2Config(vision_config=vision.to_dict(), text_config=text.to_dict(), visual_vocab_size=vv, hidden_size=h,
                         vocab_size=vocab, image_token_id=image_token, visual_indicator_token_ids=indicators,
                         tie_word_embeddings=tied)  # fmt: skip
    torch.manual_seed(0)
    Ovis2ForConditionalGeneration(config).eval().save_pretrained(folder)
    atoms = (-(-side // PATCH // STRIDE)) ** 2
    rng = __import__("numpy").random.default_rng(0)
    words = rng.integers(10, min(vocab - 10, 5000), 40).tolist()
    ids = words[:30] + [indicators[0]] + [image_token] * atoms + [indicators[1], indicators[4]] + words[30:]
    return {"ids": ids, "side": side}


TORCH_WORKER = r"""
import json, sys, time, numpy as np, torch
from transformers import Ovis2ForConditionalGeneration
folder, prompt, new, reps, device, dtype = sys.argv[1], json.loads(sys.argv[2]), *map(int, sys.argv[3:5]), *sys.argv[5:7]
dtype = getattr(torch, dtype)
m = Ovis2ForConditionalGeneration.from_pretrained(folder, dtype=dtype).eval().to(device)
ids = torch.tensor([prompt["ids"]], device=device)
px = np.random.default_rng(0).standard_normal((1, 3, prompt["side"], prompt["side"])).astype(np.float32)
px = torch.from_numpy(px).to(device, dtype)
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
def run(n):
    sync()
    t = time.perf_counter()
    with torch.inference_mode():
        m.generate(input_ids=ids, pixel_values=px, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    sync()
    return time.perf_counter() - t
run(2)  # warm-up
first = [run(1) for _ in range(reps)]
whole = [run(new) for _ in range(reps)]
print(json.dumps({"first": first, "whole": whole, "threads": torch.get_num_threads()}))
"""


def time_transformers(folder: Path, prompt: dict, new: int, reps: int, device="cpu", dtype="float32") -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    args = [str(folder), json.dumps(prompt), str(new), str(reps), device, dtype]
    out = subprocess.run(
        [sys.executable, "-c", TORCH_WORKER, *args], env=env, capture_output=True, text=True, check=True
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    ttft = median(r["first"])
    return {"ttft_s": ttft, "tok_per_s": (new - 1) / max(median(r["whole"]) - ttft, 1e-9), "threads": r["threads"]}


def time_ours(folder: Path, prompt: dict, new: int, reps: int, bits, dtype=None) -> dict:
    """Kept quantized when `bits` (the CPU's default would run it dequantized). dtype: float32 default."""
    import mlx.core as mx
    import numpy as np

    from mlx_aimv2.checkpoints.ovis2 import load_ovis2, open_folder, quantize_ovis2

    model = load_ovis2(open_folder(folder), dtype or mx.float32)
    if bits:
        quantize_ovis2(model, {"bits": bits, "group_size": 64 if prompt["side"] > 56 else 32, "mode": "affine"})
        mx.eval(model.parameters())
    ids = mx.array([prompt["ids"]])
    px = mx.array(np.random.default_rng(0).standard_normal((1, prompt["side"], prompt["side"], 3)).astype(np.float32))
    px = px.astype(dtype or mx.float32)
    firsts, rests = [], []
    for rep in range(reps + 1):  # the first, a warm-up
        t = time.perf_counter()
        steps = model.tokens(ids, px, new)
        next(steps)
        t1 = time.perf_counter()
        for _ in steps:
            pass
        if rep:
            firsts.append(t1 - t)
            rests.append(time.perf_counter() - t1)
    return {"ttft_s": median(firsts), "tok_per_s": (new - 1) / median(rests)}


TORCH_ENCODER = """
import time, torch
from transformers import Aimv2VisionConfig, Aimv2VisionModel
torch.manual_seed(0)
m = Aimv2VisionModel(Aimv2VisionConfig(hidden_size={d}, intermediate_size={mlp}, num_hidden_layers={depth},
                                       num_attention_heads={heads}, image_size={side}, patch_size={patch})).eval()
x = torch.randn(1, 3, {side}, {side})
times = []
with torch.inference_mode():
    for _ in range({reps} + 1):
        t = time.perf_counter(); m(pixel_values=x); times.append(time.perf_counter() - t)
print(min(times[1:]))
"""


def breakdown(reps: int, out) -> None:
    """Where Ovis2-1B's first token goes in MLX on this machine (random weights, float32, one 448 px
    crop, 299 prompt tokens): the encoder (and PyTorch's, the same shape, for the ratio), the visual
    head, its softmax, the table, the language model's prefill; and MLX's quantized matmul against
    float at the language model's widths, for a 300-token prefill and for one token."""
    import mlx.core as mx
    import numpy as np
    from mlx_lm.models.cache import make_prompt_cache

    from mlx_aimv2 import cpu
    from mlx_aimv2.config import VisionConfig
    from mlx_aimv2.models.visual_tokenizer import visual_embeddings
    from mlx_aimv2.vlm.ovis2 import Ovis2

    (d, depth, heads, mlp), (h, layers, qh, kv, inter, vocab, tied), side, vv = SHAPES["Ovis2-1B"]
    vision = VisionConfig(
        hidden_size=d, depth=depth, num_heads=heads, mlp_hidden=mlp, patch_size=PATCH, image_size=side
    )
    text = dict(hidden_size=h, num_hidden_layers=layers, intermediate_size=inter, num_attention_heads=qh,
                num_key_value_heads=kv, vocab_size=vocab, rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=tied)  # fmt: skip
    m = Ovis2(vision, vv, STRIDE, text, vocab - 6, list(range(vocab - 5, vocab)))
    cpu.use_kernels(m.visual_tokenizer)
    mx.eval(m.parameters())
    px = mx.array(np.random.default_rng(0).standard_normal((1, side, side, 3)).astype(np.float32))
    ids = mx.array([[5] * 30 + [vocab - 5] + [vocab - 6] * 256 + [vocab - 4, vocab - 1] + [7] * 10])
    vt, lm = m.visual_tokenizer, m.language_model
    feats = vt.encoder(px)
    logits = vt.head_norm(vt.head_linear(vt.merge(feats)))
    probs = vt(px)
    embeds = m.input_embeddings(ids, px)
    mx.eval(feats, logits, probs, embeds)

    def best(fn):
        fn()
        return min(time_once(fn) for _ in range(reps))

    def time_once(fn):
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    parts = {
        "encoder_s": best(lambda: mx.eval(vt.encoder(px))),
        "head_s": best(lambda: mx.eval(vt.head_linear(vt.merge(feats)))),
        "softmax_s": best(lambda: mx.eval(mx.softmax(logits, axis=-1))),
        "table_s": best(lambda: mx.eval(visual_embeddings(probs, m.visual_embeddings_table))),
        "prefill_s": best(lambda: mx.eval(lm.model(ids, make_prompt_cache(lm), embeds))),
    }
    # PyTorch's encoder in a process of its own, without the OpenBLAS preload (see TORCH_WORKER)
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    code = TORCH_ENCODER.format(d=d, mlp=mlp, depth=depth, heads=heads, side=side, patch=PATCH, reps=reps)
    theirs = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    parts["torch_encoder_s"] = float(theirs.stdout.split()[-1])
    w = mx.random.normal((inter, h))
    wq = mx.quantize(w, 64, 4)
    for n in (300, 1):
        t = mx.random.normal((n, h))
        mx.eval(w, t, *wq)
        dense = best(lambda t=t: mx.eval(t @ w.T))
        packed = best(lambda t=t: mx.eval(mx.quantized_matmul(t, *wq, transpose=True, group_size=64, bits=4)))
        parts[f"q4_matmul_{n}_tokens_slowdown"] = packed / dense
    emit({"bench": "ovis2_breakdown", "shape": "Ovis2-1B", **{k: round(v, 4) for k, v in parts.items()},
          "blas": cpu.loaded_blas()}, out)  # fmt: skip


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=None, help="append the records (JSON lines) to this file")
    ap.add_argument("--memory-only", action="store_true")
    ap.add_argument("--breakdown", action="store_true", help="where Ovis2-1B's first token goes, then stop")
    args = ap.parse_args()
    if args.breakdown:
        return breakdown(args.reps, args.out)
    for row in memory_table():
        emit({"bench": "ovis2_memory", **row}, args.out)
    if args.memory_only:
        return
    import mlx.core as mx

    from mlx_aimv2 import cpu

    for shape in args.shapes:
        new = 32 if shape == "tiny" else 16
        with tempfile.TemporaryDirectory() as tmp:
            prompt = save_model(shape, Path(tmp))
            theirs = time_transformers(Path(tmp), prompt, new, args.reps)
            for bits in (None, 4) if shape == "tiny" else (None,):
                ours = time_ours(Path(tmp), prompt, new, args.reps, bits)
                emit({"bench": "ovis2_generate", "shape": shape, "prompt_tokens": len(prompt["ids"]),
                      "new_tokens": new, "mlx_aimv2": "float32" if bits is None else "4-bit, kept quantized",
                      "ttft_s": round(ours["ttft_s"], 4), "tok_per_s": round(ours["tok_per_s"], 2),
                      "transformers_ttft_s": round(theirs["ttft_s"], 4),
                      "transformers_tok_per_s": round(theirs["tok_per_s"], 2),
                      "ttft_ratio": round(theirs["ttft_s"] / ours["ttft_s"], 2),
                      "tok_per_s_ratio": round(ours["tok_per_s"] / theirs["tok_per_s"], 2),
                      "device": str(mx.default_device()), "blas": cpu.loaded_blas(),
                      "torch_threads": theirs["threads"]}, args.out)  # fmt: skip


if __name__ == "__main__":
    main()
