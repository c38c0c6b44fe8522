"""Data parallel over mx.distributed: two ranks on 127.0.0.1 (ring backend) end with identical
weights, equal to a one-process run with the same global batch."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_aimv2.data import open_dataset, write_synthetic
from mlx_aimv2.tokenizer import train_bpe

WORKER = Path(__file__).parent / "dist_worker.py"


def _launcher():
    exe = shutil.which("mlx.launch") or str(Path(sys.executable).parent / "mlx.launch")
    if not Path(exe).exists() and not shutil.which(exe):
        pytest.fail("mlx.launch not found next to the Python interpreter")
    return exe


def test_two_ranks_match_each_other_and_one_process(tmp_path):
    data = write_synthetic(tmp_path / "synth", 64, size=64, seed=3)
    tok = tmp_path / "tok.json"
    train_bpe((s.caption for s in open_dataset(str(data)).samples), 300, tok)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent.parent),
                                                       os.environ.get("PYTHONPATH", "")]))
    one = subprocess.run([sys.executable, str(WORKER), str(data), str(tmp_path / "one"), str(tok)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    port = 20000 + os.getpid() % 20000
    two = subprocess.run([_launcher(), "-n", "2", "--backend", "ring", "--starting-port", str(port), "--",
                          sys.executable, str(WORKER), str(data), str(tmp_path / "two"), str(tok)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-2000:]
    r0 = mx.load(str(tmp_path / "two" / "weights.rank0.safetensors"))
    r1 = mx.load(str(tmp_path / "two" / "weights.rank1.safetensors"))
    ref = mx.load(str(tmp_path / "one" / "weights.rank0.safetensors"))
    assert r0.keys() == r1.keys() == ref.keys()
    for k in r0:
        assert mx.array_equal(r0[k], r1[k]).item(), k                      # ranks agree exactly
        assert np.allclose(np.array(r0[k]), np.array(ref[k]), atol=2e-5), k  # and match one process
    moved = max(float(mx.abs(ref[k] - v).max()) for k, v in
                mx.load(str(tmp_path / "one" / "checkpoints" / "step_00000006" / "model.safetensors")).items())
    assert moved == 0.0  # the saved checkpoint is the final state
    # only rank 0 writes checkpoints and metrics, and they record both ranks' data positions
    import json
    state = json.loads((tmp_path / "two" / "checkpoints" / "step_00000006" / "state.json").read_text())
    assert len(state["positions"]) == 2
    assert len((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()) == 6
