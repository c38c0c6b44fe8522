"""The paper's ablations, small: objective (AIMv2 / image-only / text-only) and decoder size
(1/2, 1/4, 1/8 of the encoder), each encoder probed the same way, with a random-init floor.

Runs on the synthetic shapes set on a 2-core CPU in about 25 minutes (docs/ablation.md: 25 minutes of
wall time on the project's 2-vCPU machine):

    python examples/ablation.py --out runs/ablation --docs docs

Each run trains the "small" encoder (128 wide, 4 blocks, 56 px, 16 patches); finished runs are
skipped when the script is run again. Results go to --docs (default: the --out folder, so a plain run
never rewrites the repository's docs/ablation.{json,png}; `--docs docs` refreshes them).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mlx_aimv2 import load
from mlx_aimv2.config import load_config
from mlx_aimv2.data import open_dataset, write_synthetic
from mlx_aimv2.eval import probe as P
from mlx_aimv2.tokenizer import train_bpe
from mlx_aimv2.train.trainer import Trainer

RUNS = {  # name: (objective, decoder ratio)
    "AIMv2 (image + text), decoder 1/2": ("aimv2", 0.5),
    "image only (AIMv1-like)": ("image", 0.5),
    "text only (captioning)": ("text", 0.5),
    "AIMv2, decoder 1/4": ("aimv2", 0.25),
    "AIMv2, decoder 1/8": ("aimv2", 0.125),
}
ATTRS = ("colour", "shape", "position", "size", "count")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/ablation")
    ap.add_argument("--docs", default=None, help="where the table, JSON and plot go (default: --out)")
    ap.add_argument("--n", type=int, default=3000, help="synthetic training images")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--probe-epochs", type=int, default=30)
    a = ap.parse_args()
    out = Path(a.out)
    docs = Path(a.docs) if a.docs else out
    data, evalset = out / "synth", out / "synth_eval"
    if not (data / "captions.jsonl").is_file():
        write_synthetic(data, a.n, size=64, seed=0)
    if not (evalset / "captions.jsonl").is_file():
        write_synthetic(evalset, 3000, size=64, seed=12345)  # held-out scenes; object attributes use the 1-object ones
    tok = out / "tokenizer.json"
    if not tok.is_file():
        train_bpe((s.caption for s in open_dataset(str(data)).samples), 512, tok)
    results = {}
    for name, (objective, ratio) in RUNS.items():
        run = out / run_dir(name)
        t0 = time.time()
        seconds = run / "train_seconds.txt"
        if not (run / "encoder" / "model.safetensors").is_file():
            cfg = load_config(
                overrides=dict(
                    data=str(data),
                    out=str(run),
                    mirror_captions=True,
                    encoder="small",
                    image_size=56,
                    batch_size=a.batch,
                    steps=a.steps,
                    warmup=50,
                    lr=2e-3,
                    objective=objective,
                    tokenizer=str(tok),
                    save_every=10_000,
                    decoder={"ratio": ratio},
                    log_every=10,
                )
            )
            Trainer(cfg, resume=(run / "checkpoints").is_dir()).run(progress=True)
            seconds.write_text(f"{time.time() - t0:.0f}\n")
        train_s = float(seconds.read_text()) if seconds.is_file() else None
        results[name] = {
            "objective": objective,
            "decoder_ratio": ratio,
            "train_s": train_s,
            **probe(load(str(run / "encoder")), evalset, out / "features", a.probe_epochs),
        }
        print(name, json.dumps(results[name]))
    floor = P.reinitialize(load(str(out / run_dir(next(iter(RUNS))) / "encoder")))
    results["random init (floor)"] = {
        "objective": "-",
        "decoder_ratio": None,
        "train_s": 0,
        **probe(floor, evalset, None, a.probe_epochs),
    }
    write_report(results, docs, a)


def run_dir(name: str) -> str:
    return name.split(" (")[0].replace(" ", "_").replace(",", "").replace("/", "-")


def probe(model, evalset: Path, cache, epochs: int) -> dict:
    sets = {t: P.synthetic_attribute(evalset, t) for t in ATTRS}
    top1 = P.probe_all(model, sets, cache, epochs=epochs, progress=False)
    mean = {m: round(sum(top1[t][m] for t in ATTRS) / len(ATTRS), 2) for m in P.METHODS}
    return {"top1": top1, "mean": mean}


def write_report(results: dict, docs: Path, a) -> None:
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "ablation.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "| run | train (s) | "
        + " | ".join(f"{t} (attn)" for t in ATTRS)
        + " | mean attentive | mean linear | mean k-NN |",
        "|---|" + "---|" * (len(ATTRS) + 4),
    ]
    for name, r in results.items():
        secs = "-" if not r["train_s"] else f"{r['train_s']:.0f}"
        lines.append(
            f"| {name} | {secs} | "
            + " | ".join(f"{r['top1'][t]['attentive']:.1f}" for t in ATTRS)
            + f" | **{r['mean']['attentive']:.1f}** | {r['mean']['linear']:.1f} | {r['mean']['knn']:.1f} |"
        )
    (docs / "ablation_table.md").write_text("\n".join(lines) + "\n")  # pasted into docs/ablation.md
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(results)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for i, m in enumerate(P.METHODS):
        ax.bar(x + (i - 1) * 0.27, [results[n]["mean"][m] for n in names], 0.27, label=m)
    ax.set_xticks(x, [n.replace(", ", ",\n").replace(" (", "\n(") for n in names], fontsize=8)
    ax.set_ylabel("mean top-1 over 5 attributes (%)")
    ax.set_title(f"Small-scale AIMv2 ablations: synthetic shapes, {a.steps} steps x {a.batch}")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(docs / "ablation.png", dpi=110)
    print((docs / "ablation_table.md").read_text())


if __name__ == "__main__":
    main()
