"""Training throughput and model FLOP utilisation against the fp32 GEMM peak measured in the same run,
and the data loader's rate against what the step consumes.

ViT-S/14 encoder (384 wide, 12 blocks) at 224 px with the default decoder for that size (6 blocks,
1/2 of the encoder's parameters), full AIMv2 objective, fp32, compiled step.

    python benchmarks/train.py               # ~3 min here
    python benchmarks/train.py --encoder tiny --image-size 56 --batch 8    # smoke run
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, gemm_peak_gflops, median, step_arguments, timed, train_flops_per_image, training_step  # noqa: E402


def main():
    a = step_arguments(reps=4).parse_args()

    import mlx.core as mx

    from mlx_aimv2.cpu import loaded_blas
    from mlx_aimv2.data import TrainStream, find_sources, open_dataset, write_synthetic
    from mlx_aimv2.environment import backend
    from mlx_aimv2.tokenizer import train_bpe

    # the trainer's own objective and step
    run = training_step(a.encoder, a.image_size, a.batch, a.vocab, checkpointing=a.checkpointing)
    model, one = run.model, run.one

    one()
    one()  # compile + warm-up
    peak0 = gemm_peak_gflops()
    ts = timed(one, a.reps)
    peak1 = gemm_peak_gflops()
    peak = max(peak0, peak1)
    flops = train_flops_per_image(model, a.image_size, 77)
    img_s = a.batch / median(ts)
    from mlx.utils import tree_flatten

    enc_p = sum(v.size for _, v in tree_flatten(model.encoder.parameters()))
    dec_p = sum(v.size for _, v in tree_flatten(model.decoder.parameters()))
    emit(
        {
            "what": "train_step",
            "encoder": a.encoder,
            "encoder_params_M": round(enc_p / 1e6, 1),
            "decoder_params_M": round(dec_p / 1e6, 1),
            "image_size": a.image_size,
            "checkpointing": a.checkpointing,
            "batch": a.batch,
            "img_per_s": round(img_s, 2),
            "s_per_step": round(median(ts), 3),
            "train_gflop_per_image": round(flops / 1e9, 1),
            "achieved_gflop_s": round(flops * img_s / 1e9, 1),
            "gemm_peak_gflop_s": round(peak, 1),
            "mfu_vs_gemm_peak": round(flops * img_s / 1e9 / peak, 3),
            "backend": backend(),
            "blas": loaded_blas(),
            "mlx": mx.__version__,
        },
        a.out,
    )

    # the loader alone, on synthetic JPEGs larger than the crop, with the training transform
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic(Path(tmp), 512, size=int(a.image_size * 1.3))
        tokenizer = train_bpe((s.caption for s in open_dataset(tmp).samples), 512, Path(tmp) / "tok.json")
        stream = TrainStream(find_sources(tmp), tokenizer, a.image_size, a.batch, threads=2)
        it = iter(stream)
        next(it)
        k = max(1, 256 // a.batch)
        t = time.perf_counter()
        for _ in range(k):
            next(it)
        loader = k * a.batch / (time.perf_counter() - t)
    emit(
        {
            "what": "loader",
            "img_per_s": round(loader, 1),
            "step_needs_img_per_s": round(img_s, 2),
            "headroom": round(loader / img_s, 1),
            "threads": 2,
        },
        a.out,
    )


if __name__ == "__main__":
    main()
