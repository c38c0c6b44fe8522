"""Run by test_isolation as an app would: one public call of the library made on a worker thread,
joined, and then the process simply ends (no clean-up of its own). MLX work left on a thread that
dies while the interpreter finalizes aborts the process ("terminate called without an active
exception", signal 6); the test counts the runs that end any other way than exit 0.

    python exit_worker.py CALL WORKDIR      CALL: load embed index search classify caption export train chat
"""

import os
import sys
import threading
from pathlib import Path

import numpy as np

import mlx_aimv2

call, work = sys.argv[1], Path(sys.argv[2])
sys.path.insert(0, str(Path(__file__).parent))
from helpers import PHOTO, tiny_config  # noqa: E402

IMAGE = np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)


def train(out: Path):
    from mlx_aimv2.train.trainer import Trainer

    Trainer(tiny_config(work / "synth", out, steps=2), log=lambda *a: None, progress=False).run()


CALLS = {
    "load": lambda: mlx_aimv2.load("demo"),
    "embed": lambda: mlx_aimv2.load("demo").embed([PHOTO, IMAGE]),
    "index": lambda: mlx_aimv2.Index(work / "lib.aimv2", model="demo-lit").add([work / "synth"]),
    "search": lambda: mlx_aimv2.Index(work / "lib.aimv2").search(text="a red circle", k=3),
    "classify": lambda: mlx_aimv2.load("demo-lit").classify([IMAGE], ["red", "blue"]),
    "caption": lambda: __import__("mlx_aimv2.caption").caption.load(work / "run")([IMAGE]),
    "export": lambda: __import__("mlx_aimv2.checkpoints.export").checkpoints.export.export(
        "demo", work / f"exported-{os.getpid()}"
    ),
    "train": lambda: train(work / f"run-{threading.get_ident()}"),
    "chat": lambda: __import__("mlx_aimv2.vlm.chat").vlm.chat.Ovis2Chat(work / "ovis2").generate("what?", [PHOTO], 4),
}

box = {}
t = threading.Thread(target=lambda: box.update(result=CALLS[call]()))
t.start()
t.join()
if "result" not in box:
    sys.exit(f"{call} raised on its thread (see above)")
print("ok", call)
