"""Fine-tuning an encoder, measured: head-only, LoRA at two ranks and full fine-tuning (layer-wise
decay) against the frozen attentive probe, on one labelled image folder (train/ and val/):
held-out top-1, trainable parameters, peak memory and time per step, side by side in one run.

    mlx-aimv2 data synth shapes --n 2400 --size 112 --classes shape --seed 7
    python benchmarks/finetune.py --data shapes --out benchmarks/results/finetune.jsonl
    python benchmarks/finetune.py --make-digits digits   # a small real set: scikit-learn's scanned digits (pip install scikit-learn)
    python benchmarks/finetune.py --data digits --no-flip --out benchmarks/results/finetune.jsonl
    python benchmarks/finetune.py --plot benchmarks/results/finetune.jsonl --figure docs/finetune.png
    python benchmarks/finetune.py --table benchmarks/results/finetune.jsonl

The probe is eval/probe.py's attentive probe on the frozen encoder's cached tokens (its own
schedule, no augmentation); the fine-tunes are `mlx-aimv2 train --objective classify` runs with the
same head, on augmented images (flips, crops of 80-100 % of the area: a smaller crop can cut a
synthetic scene's only object out), for --steps steps each, the trainer's defaults otherwise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402
from common import emit  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

import mlx_aimv2  # noqa: E402
from mlx_aimv2.config import load_config  # noqa: E402
from mlx_aimv2.eval.probe import features, image_folder, run_probes  # noqa: E402
from mlx_aimv2.models import lora  # noqa: E402
from mlx_aimv2.models.classifier import AttentiveHead  # noqa: E402
from mlx_aimv2.train.trainer import Trainer  # noqa: E402

VARIANTS = {  # name: the run's settings
    "head": dict(tune="head", lr=1e-3),
    "lora r4": dict(tune="lora", lora_rank=4, lora_alpha=8.0, lr=1e-3),
    "lora r16": dict(tune="lora", lora_rank=16, lora_alpha=32.0, lr=1e-3),
    "full": dict(tune="full", layer_decay=0.75, lr=3e-4),
}


def fine_tune(data: str, init: str, name: str, steps: int, batch: int, seed: int, hflip: bool) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(
            overrides=dict(
                objective="classify", data=data, init=init, out=out, steps=steps, batch_size=batch,
                warmup=max(1, steps // 10), min_lr=1e-6, log_every=5, save_every=10**6, seed=seed,
                crop_scale=(0.8, 1.0), hflip=hflip, **VARIANTS[name],
            )
        )  # fmt: skip
        mx.reset_peak_memory()
        t = Trainer(cfg, log=lambda *a: None, progress=False)
        trained = sum(v.size for _, v in tree_flatten(t.model.trainable_parameters()))
        total = lora.count_parameters(t.model)
        t.run(progress=False)
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
        timed = [r["images_per_s"] for r in rows if "images_per_s" in r]
        speed = statistics.median(timed[1:] or timed)  # the first interval includes compilation
        return {
            "val_top1": rows[-1]["val_top1"], "trainable": trained, "parameters": total,
            "peak_memory_mib": round(mx.get_peak_memory() / 2**20), "seconds_per_step": round(batch / speed, 3),
            "train_loss": rows[-1]["loss"],
        }  # fmt: skip


def frozen_probe(data: str, init: str, seed: int) -> dict:
    ds = image_folder(Path(data))
    model = mlx_aimv2.load(init)
    mx.reset_peak_memory()
    tokens = features(model, ds.files, progress=False)
    acc = run_probes(tokens, ds, ["attentive"], seed=seed, progress=False)["attentive"]
    head = sum(v.size for _, v in tree_flatten(AttentiveHead(tokens.shape[-1], len(ds.classes)).parameters()))
    return {"val_top1": acc, "trainable": head, "peak_memory_mib": round(mx.get_peak_memory() / 2**20)}


def make_digits(out: Path, seed: int = 0) -> None:
    """sklearn's 1,797 scanned 8x8 handwritten digits as a train/ val/ folder of 112 px images."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    for i, (img, y) in enumerate(zip(d.images, d.target)):
        folder = Path(out) / ("train" if rng.random() < 0.8 else "val") / str(y)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (255 - img * 255 / 16).astype(np.uint8)  # dark strokes on white, as the scenes' shapes
        Image.fromarray(pixels).convert("RGB").resize((112, 112), Image.BICUBIC).save(folder / f"{i:05d}.png")
    print(f"wrote {len(d.images)} digits to {out}/train and {out}/val")


def plot(results: Path, figure: Path) -> None:
    from matplotlib.figure import Figure

    rows = [json.loads(line) for line in Path(results).read_text().splitlines() if line.strip()]
    sets = list(dict.fromkeys(r["data"] for r in rows))
    names = ["frozen probe", *VARIANTS]
    fig = Figure(figsize=(14, 4))
    panels = fig.subplots(1, 3)
    width = 0.8 / len(sets)
    measures = (
        ("held-out top-1 (%)", lambda r, whole: r.get("val_top1", 0)),
        (
            "trainable parameters (% of the model)",
            lambda r, whole: 100 * r.get("trainable", 0) / r.get("parameters", whole),
        ),
        ("seconds per step, batch 32 (probe: cached tokens)", lambda r, whole: r.get("seconds_per_step", 0)),
    )
    for j, s in enumerate(sets):
        got = {r["variant"]: r for r in rows if r["data"] == s}
        whole = next(r["parameters"] for r in got.values() if "parameters" in r)
        xs = [i + j * width for i in range(len(names))]
        for ax, (_, value) in zip(panels, measures):
            ax.bar(xs, [value(got[n], whole) if n in got else 0 for n in names], width, label=Path(s).name)
    for ax, (label, _) in zip(panels, measures):
        ax.set_xticks([i + width * (len(sets) - 1) / 2 for i in range(len(names))], names, fontsize=8)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
        ax.legend()
    panels[1].set_yscale("log")
    fig.tight_layout()
    fig.savefig(figure, dpi=110)
    print(f"saved {figure}")


def table(results: Path) -> str:
    """The results as a markdown table, one row per data set and variant."""
    rows = [json.loads(line) for line in Path(results).read_text().splitlines() if line.strip()]
    out = [
        "| data | variant | held-out top-1 | trainable parameters | peak MLX memory | time per step (batch 32) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        share = f" ({100 * r['trainable'] / r['parameters']:.1f} %)" if "parameters" in r else ""
        step = f"{r['seconds_per_step']:.2f} s" if "seconds_per_step" in r else "(cached tokens)"
        out.append(
            f"| {Path(r['data']).name} | {r['variant']} | {r['val_top1']:.1f} % | {r['trainable']:,}{share} "
            f"| {r['peak_memory_mib']} MiB | {step} |"
        )
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="a labelled image folder with train/ and val/")
    ap.add_argument("--init", default="demo")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", nargs="*", default=["frozen probe", *VARIANTS])
    ap.add_argument("--no-flip", action="store_true", help="no horizontal flips (digits: a flip changes them)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--make-digits", default=None, help="write sklearn's digits as a labelled folder here")
    ap.add_argument("--plot", default=None, help="a results .jsonl to plot")
    ap.add_argument("--figure", default="docs/finetune.png")
    ap.add_argument("--table", default=None, help="a results .jsonl to print as a markdown table")
    a = ap.parse_args()
    if a.make_digits:
        return make_digits(Path(a.make_digits), a.seed)
    mx.random.seed(a.seed)  # the probe's head starts from the global generator
    if a.plot:
        return plot(Path(a.plot), Path(a.figure))
    if a.table:
        return print(table(Path(a.table)))
    for name in a.variants:
        if name == "frozen probe":
            got = frozen_probe(a.data, a.init, a.seed)
        else:
            got = fine_tune(a.data, a.init, name, a.steps, a.batch, a.seed, not a.no_flip)
        emit({"bench": "finetune", "data": a.data, "init": a.init, "variant": name, "steps": a.steps,
              "batch": a.batch, "hflip": not a.no_flip, **got}, a.out)  # fmt: skip


if __name__ == "__main__":
    main()
