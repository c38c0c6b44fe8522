"""How well a pre-training run's decoder captions held-out synthetic scenes: the share of captions
that name the scene's colour, its shape, and both, against chance (1 / number of colours, shapes).

    mlx-aimv2 data synth held --n 200 --size 112 --max-objects 1 --seed 9
    python benchmarks/caption.py --run runs/aimv2 --data held --out benchmarks/results/caption.jsonl

The scenes hold one object each (`--max-objects 1`), so every caption has one right colour and shape.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from common import emit  # noqa: E402

from mlx_aimv2.caption import load  # noqa: E402
from mlx_aimv2.data.synth import COLOURS, SHAPES  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--data", required=True, help="a synthetic set made with --max-objects 1")
    ap.add_argument("--beam", type=int, default=1)
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    rows = [json.loads(l) for l in (Path(a.data) / "captions.jsonl").read_text().splitlines()][: a.limit]
    captioner = load(a.run)
    t0 = time.perf_counter()
    captions = captioner([str(Path(a.data) / r["image"]) for r in rows], beam=a.beam)
    took = time.perf_counter() - t0
    colour = [r["labels"]["colour"] in c.split() for r, c in zip(rows, captions)]
    shape = [r["labels"]["shape"] in c.split() for r, c in zip(rows, captions)]
    both = [x and y for x, y in zip(colour, shape)]
    emit(
        {
            "bench": "caption",
            "run": a.run,
            "beam": a.beam,
            "images": len(rows),
            "colour_named": round(100 * sum(colour) / len(rows), 1),
            "shape_named": round(100 * sum(shape) / len(rows), 1),
            "both_named": round(100 * sum(both) / len(rows), 1),
            "chance_colour": round(100 / len(COLOURS), 1),
            "chance_shape": round(100 / len(SHAPES), 1),
            "images_per_s": round(len(rows) / took, 1),
            "examples": [[Path(r["image"]).name, c, r["caption"]] for r, c in zip(rows[:3], captions[:3])],
        },
        a.out,
    )


if __name__ == "__main__":
    main()
