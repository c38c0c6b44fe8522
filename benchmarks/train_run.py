"""A real `mlx-aimv2 train` run, loader included, timed by its own metrics: ViT-S/14 at 224 px, batch 8,
on synthetic captioned JPEGs, for one or more source trees in turns (this one by default; `--src`
another checkout, for example the commit before a change). Unlike train.py's fixed batch, this is
what a user's run does: mlx-data's loader threads, the step, the logging.

    git worktree add /tmp/before <commit>
    python benchmarks/train_run.py --src /tmp/before . --out benchmarks/results/train_run_cpu.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, median  # noqa: E402

HERE = Path(__file__).resolve().parent.parent


def one_run(src: Path, data: Path, out: Path, a) -> dict:
    boot = f"import sys; sys.path.insert(0, {str(src)!r}); from mlx_aimv2.cli import main; main()"
    args = ["train", "--data", str(data), "--out", str(out), "--encoder", a.encoder, "--batch-size", str(a.batch),
            "--steps", str(a.steps), "--set", "log_every=1", "--set", "warmup=2", "--set", "vocab_size=512",
            "--set", "threads=2", "--set", f"save_every={a.steps * 10}"]  # fmt: skip
    env = dict(os.environ, MLX_AIMV2_NO_RESTART="1")
    subprocess.run([sys.executable, "-c", boot, *args], env=env, check=True, capture_output=True, text=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["images_per_s"] for r in rows if "images_per_s" in r and r["step"] > 2]  # past compilation
    return {"img_per_s": round(median(rates), 3), "steps_timed": len(rates)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", nargs="+", default=[str(HERE)], help="source trees (checkouts of this repository)")
    ap.add_argument("--encoder", default="vit-s")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    from mlx_aimv2.data import write_synthetic

    with tempfile.TemporaryDirectory() as tmp:
        data = write_synthetic(Path(tmp) / "data", 256, size=288, seed=0)
        for r in range(a.rounds):  # in turns: a machine that drifts slows every tree alike
            for i, src in enumerate(a.src):
                src = Path(src).resolve()
                commit = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"],
                                        capture_output=True, text=True).stdout.strip()  # fmt: skip
                res = one_run(src, data, Path(tmp) / f"run{r}_{i}", a)
                emit({"what": "train_run", "src": commit, "round": r, "encoder": a.encoder, "batch": a.batch, **res},
                     a.out)  # fmt: skip


if __name__ == "__main__":
    main()
