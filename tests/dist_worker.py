"""Run by test_distributed under `mlx.launch` (or alone): train a few steps, then each rank writes
its own weights so the test can compare ranks and runs."""
import sys
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from mlx_aimv2.train import Trainer, load_config

data, out, tokenizer = sys.argv[1:4]
cfg = load_config(overrides=dict(data=data, out=out, encoder="tiny", image_size=56, batch_size=8, steps=6,
                                 warmup=2, lr=2e-3, log_every=1, save_every=1000, tokenizer=tokenizer, threads=1))
t = Trainer(cfg, log=lambda *a: None)
t.run(progress=False)
rank = mx.distributed.init().rank()
mx.save_safetensors(str(Path(out) / f"weights.rank{rank}.safetensors"), dict(tree_flatten(t.model.parameters())))
