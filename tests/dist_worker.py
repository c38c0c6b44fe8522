"""Run by test_distributed under `mlx.launch` (or alone): train a few steps, then each rank writes
its own weights so the test can compare ranks and runs. Optional: steps, collective_timeout and a
frozen encoder to LiT-tune instead of pre-training, and "classify" to LoRA-fine-tune it on an image folder;
each rank writes its pid to <out>/pid.rank<r> so a test can signal one rank."""

import os
import sys
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from mlx_aimv2.config import load_config
from mlx_aimv2.errors import UserError
from mlx_aimv2.train.trainer import Trainer

data, out, tokenizer = sys.argv[1:4]
steps = int(sys.argv[4]) if len(sys.argv) > 4 else 6
timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 600.0
lit = (
    dict(
        objective="lit",
        init=sys.argv[6],
        text={"hidden_size": 32, "depth": 1, "num_heads": 2},
        projection_dim=32,
        context_length=32,
    )
    if len(sys.argv) > 6
    else {}
)
if len(sys.argv) > 7 and sys.argv[7] == "classify":  # LoRA fine-tuning of the frozen init on an image folder
    lit = dict(objective="classify", init=sys.argv[6], tune="lora", lora_rank=4, image_size=112)
cfg = load_config(
    overrides={
        **dict(
            data=data,
            out=out,
            encoder="tiny",
            image_size=56,
            batch_size=8,
            steps=steps,
            warmup=2,
            lr=2e-3,
            log_every=1,
            save_every=1000,
            tokenizer=tokenizer,
            threads=1,
            collective_timeout=timeout,
        ),
        **lit,
    }
)
rank = mx.distributed.init().rank()
t = Trainer(cfg, log=lambda *a: None)
(Path(out) / f"pid.rank{rank}").write_text(str(os.getpid()))
try:
    r = t.run(progress=False)
except UserError as e:  # as the CLI prints it
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
print(f"rank {rank} stopped at step {r['step']} interrupted={r['interrupted']}", flush=True)
mx.save_safetensors(str(Path(out) / f"weights.rank{rank}.safetensors"), dict(tree_flatten(t.model.parameters())))
