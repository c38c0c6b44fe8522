"""Data parallel over mx.distributed: two ranks on 127.0.0.1 (ring backend) end with identical
weights, equal to a one-process run with the same global batch."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_aimv2.data import open_dataset, write_synthetic
from mlx_aimv2.data.synth import write_labelled
from mlx_aimv2.kinds import newest_checkpoint as checkpoint_latest
from mlx_aimv2.tokenizer import train_bpe

WORKER = Path(__file__).parent / "dist_worker.py"


def _launcher():
    exe = shutil.which("mlx.launch") or str(Path(sys.executable).parent / "mlx.launch")
    if not Path(exe).exists() and not shutil.which(exe):
        pytest.fail("mlx.launch not found next to the Python interpreter")
    return exe


def _setup(tmp_path):
    data = write_synthetic(tmp_path / "synth", 64, size=64, seed=3)
    tok = tmp_path / "tok.json"
    train_bpe((s.caption for s in open_dataset(str(data)).samples), 300, tok)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH", "")])
    )
    return data, tok, env


def _start_two_ranks(tmp_path, data, tok, env, *extra):
    port = 20000 + (os.getpid() * 7 + len(extra)) % 20000
    logs = [open(tmp_path / "stdout", "w"), open(tmp_path / "stderr", "w")]  # files: a full pipe would block the ranks
    return subprocess.Popen(
        [
            _launcher(),
            "-n",
            "2",
            "--backend",
            "ring",
            "--starting-port",
            str(port),
            "--",
            sys.executable,
            str(WORKER),
            str(data),
            str(tmp_path / "two"),
            str(tok),
            *extra,
        ],
        env=env,
        stdout=logs[0],
        stderr=logs[1],
        text=True,
    )


def _output(tmp_path):
    return (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()


def _stop_all(proc, out: Path):
    """A failed test leaves no rank behind."""
    if proc.poll() is None:
        for f in out.glob("pid.rank*"):
            try:
                os.kill(int(f.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        proc.kill()
        proc.wait()


def _pids(out: Path, deadline=120):
    t0 = time.time()
    while time.time() - t0 < deadline:
        files = [out / f"pid.rank{r}" for r in (0, 1)]
        metrics = out / "metrics.jsonl"
        # a logged step means both ranks are inside the training loop, signal handlers installed
        if all(f.is_file() and f.read_text() for f in files) and metrics.is_file() and metrics.read_text().strip():
            return [int(f.read_text()) for f in files]
        time.sleep(0.2)
    pytest.fail("the ranks did not start")


def test_ctrl_c_to_one_rank_stops_both_at_the_same_step(tmp_path):
    data, tok, env = _setup(tmp_path)
    proc = _start_two_ranks(tmp_path, data, tok, env, "100000", "90")
    try:
        _, pid1 = _pids(tmp_path / "two")
        os.kill(pid1, signal.SIGINT)
        proc.wait(timeout=120)  # never hangs
    finally:
        _stop_all(proc, tmp_path / "two")
    out, errs = _output(tmp_path)
    steps = sorted(int(line.split("step ")[1].split()[0]) for line in out.splitlines() if "stopped at step" in line)
    assert len(steps) == 2 and steps[0] == steps[1] and "interrupted=True" in out, out + errs[-2000:]
    state = json.loads((checkpoint_latest(tmp_path / "two") / "state.json").read_text())
    assert state["step"] == steps[0]


def test_a_stopped_rank_is_named_and_does_not_hang_the_other(tmp_path):
    data, tok, env = _setup(tmp_path)
    proc = _start_two_ranks(tmp_path, data, tok, env, "100000", "12")
    _, pid1 = _pids(tmp_path / "two")
    os.kill(pid1, signal.SIGSTOP)
    try:
        t0 = time.time()
        while "no step finished" not in _output(tmp_path)[1] and time.time() - t0 < 60:
            time.sleep(0.5)
    finally:
        os.kill(pid1, signal.SIGKILL)
    try:
        proc.wait(timeout=60)
    finally:
        _stop_all(proc, tmp_path / "two")
    out, errs = _output(tmp_path)
    assert "rank 0: no step finished in 12 s while waiting on rank 1" in errs, errs[-2000:]


def test_a_killed_rank_is_named_within_seconds_with_the_checkpoint_to_resume(tmp_path):
    """Issue 17: kill -9 of one rank; the other exits in seconds with one line naming it and the
    checkpoint. The ranks are started as a scheduler would, without mlx.launch (which would kill
    the survivor itself): MLX_RANK and the ring's hostfile."""
    data, tok, env = _setup(tmp_path)
    port = 20000 + (os.getpid() * 11) % 20000
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{port}"], [f"127.0.0.1:{port + 1}"]]))
    out = tmp_path / "two"
    procs = []
    for r in (0, 1):
        err = open(tmp_path / f"stderr{r}", "w")
        cmd = [sys.executable, str(WORKER), str(data), str(out), str(tok), "100000", "600"]
        procs.append(subprocess.Popen(cmd, env=dict(env, MLX_RANK=str(r), MLX_HOSTFILE=str(hostfile)), stderr=err))
    try:
        _, pid1 = _pids(out)
        os.kill(pid1, signal.SIGKILL)
        code = procs[0].wait(timeout=300)  # a hang guard: the collective timeout given is 600 s
    finally:
        for p in procs:
            p.kill()
            p.wait()
    errs = (tmp_path / "stderr0").read_text()
    assert code == 1, (code, errs[-2000:])
    line = next((l for l in errs.splitlines() if "rank 0: lost rank 1" in l), None)
    assert line is not None and "--resume" in line, errs[-3000:]
    assert "Traceback" not in errs, errs[-3000:]


def _one_and_two_ranks(tmp_path, env, args, salt):
    """Run the worker in one process (out: tmp_path/one) and as two ranks (tmp_path/two) with the same
    arguments (None marks the out folder); returns rank 0's, rank 1's and the one process's weights."""
    one = subprocess.run(
        [sys.executable, str(WORKER), *[str(tmp_path / "one") if a is None else a for a in args]],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    port = 20000 + (os.getpid() * salt) % 20000
    two = subprocess.run(
        [_launcher(), "-n", "2", "--backend", "ring", "--starting-port", str(port), "--", sys.executable, str(WORKER)]
        + [str(tmp_path / "two") if a is None else a for a in args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0 and (tmp_path / "two" / "weights.rank1.safetensors").is_file(), (
        two.stdout[-2000:] + two.stderr[-2000:]
    )
    return tuple(
        mx.load(str(tmp_path / run / f"weights.rank{r}.safetensors")) for run, r in (("two", 0), ("two", 1), ("one", 0))
    )


def test_two_ranks_match_each_other_and_one_process(tmp_path):
    data, tok, env = _setup(tmp_path)
    r0, r1, ref = _one_and_two_ranks(tmp_path, env, [str(data), None, str(tok)], 1)
    assert r0.keys() == r1.keys() == ref.keys()
    for k in r0:
        assert mx.array_equal(r0[k], r1[k]).item(), k  # ranks agree exactly
        assert np.allclose(np.array(r0[k]), np.array(ref[k]), atol=2e-5), k  # and match one process
    moved = max(
        float(mx.abs(ref[k] - v).max())
        for k, v in mx.load(str(tmp_path / "one" / "checkpoints" / "step_00000006" / "model.safetensors")).items()
    )
    assert moved == 0.0  # the saved checkpoint is the final state
    # only rank 0 writes checkpoints and metrics, and they record both ranks' data positions
    import json

    state = json.loads((tmp_path / "two" / "checkpoints" / "step_00000006" / "state.json").read_text())
    a, b = state["streams"]  # one captions file, two ranks: both read it all and keep every 2nd sample
    assert a["kind"] == b["kind"] == "stream" and a["pending"] != b["pending"]
    assert len((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()) == 6


def test_lit_tuning_on_two_ranks_matches_one_process(tmp_path):
    """The contrastive loss needs every rank's embeddings: gathered, with exact gradients."""
    data, tok, env = _setup(tmp_path)
    demo = str(Path(__file__).parent.parent / "weights" / "demo")
    r0, r1, ref = _one_and_two_ranks(tmp_path, env, [str(data), None, str(tok), "6", "600", demo], 3)
    saved = mx.load(str(tmp_path / "one" / "checkpoints" / "step_00000006" / "model.safetensors"))
    assert r0.keys() == r1.keys() == ref.keys() == saved.keys() and "log_logit_scale" in ref
    assert all(mx.array_equal(saved[k], ref[k]).item() for k in ref)  # the checkpoint is the final tuner
    for k in r0:
        assert mx.array_equal(r0[k], r1[k]).item(), k
        assert np.allclose(np.array(r0[k]), np.array(ref[k]), atol=3e-5), k
    # each rank cached only its half of the tokens
    assert sorted(p.name for p in (tmp_path / "two" / "token_cache").glob("part*.npy")) == ["part0.npy", "part1.npy"]
    losses = [json.loads(l)["loss"] for l in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two_losses = [json.loads(l)["loss"] for l in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert np.allclose(losses, two_losses, atol=1e-4), (losses, two_losses)


def test_lora_fine_tuning_on_two_ranks_matches_one_process(tmp_path):
    """Fine-tuning's loss is each rank's share of the global batch: two ranks == one process."""
    _, tok, env = _setup(tmp_path)
    data = write_labelled(tmp_path / "labelled", 48, "colour", size=64, seed=3)
    demo = str(Path(__file__).parent.parent / "weights" / "demo")
    r0, r1, ref = _one_and_two_ranks(tmp_path, env, [str(data), None, str(tok), "4", "600", demo, "classify"], 5)
    assert any("lora_a" in k for k in ref) and any(k.startswith("classifier.") for k in ref)
    for k in r0:
        assert mx.array_equal(r0[k], r1[k]).item(), k
        assert np.allclose(np.array(r0[k]), np.array(ref[k]), atol=3e-5), k
