"""Fault injection for training: bad configs, a busy run folder, damaged checkpoints, signals,
non-finite weights and the leftovers of killed runs."""

import json
import signal

import mlx.core as mx
import pytest
from helpers import cli, tiny_config

from mlx_aimv2 import kinds, owner
from mlx_aimv2.atomic import TMP_PREFIX
from mlx_aimv2.data import write_synthetic
from mlx_aimv2.errors import UserError
from mlx_aimv2.train.trainer import Trainer

logs: list = []
LOGGED = dict(log=logs.append)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("synth"), 64, size=64, seed=2)


def cfg(synth, out, **kw):
    return tiny_config(synth, out, **{"save_every": 2, **kw})


def err(*args):
    r = cli(*args)
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    return r.output.strip().splitlines()[-1]


BAD_SETTINGS = {
    "steps=3.5": "'steps' = 3.5",
    "patch_size=0": "'patch_size' = 0",
    "accum=0": "'accum' = 0",
    "seed=-1": "'seed' = -1",
    "context_length=0": "'context_length' = 0",
    "betas=[2]": "'betas' = [2]",
    "lr=fast": "'lr' = 'fast'",
    "threads=0": "'threads' = 0",
    "threads=-1": "'threads' = -1",
    "crop_scale=[5]": "'crop_scale' = [5]",
    "image_size=0": "'image_size' = 0",
    "steps=true": "'steps' = True",
    "decoder.depth=0": "'decoder.depth' = 0",
    "dtype=float64": "'dtype' = 'float64'",
    "lr=NaN": "'lr' = nan: must be a finite number",
    "weight_decay=Infinity": "'weight_decay' = inf: must be a finite number",
}


@pytest.mark.parametrize("setting", list(BAD_SETTINGS))
def test_every_config_key_is_checked(synth, tmp_path, setting):
    line = err("train", "--data", synth, "--out", tmp_path / "r", "--set", setting)
    assert BAD_SETTINGS[setting] in line
    assert not (tmp_path / "r").exists()


def test_lr_nan_on_the_command_line(synth, tmp_path):
    line = err("train", "--data", synth, "--out", tmp_path / "r", "--lr", "nan")
    assert "'lr' = nan: must be a finite number" in line and not (tmp_path / "r").exists()


def test_a_run_that_cannot_start_leaves_nothing(synth, tmp_path):
    """No .lock, tokenizer or empty run folder after a failed start (issue 17); a folder that was
    there keeps exactly what it held."""
    err("train", "--data", tmp_path / "nonexistent", "--out", tmp_path / "r")
    assert not (tmp_path / "r").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    tiny = write_synthetic(tmp_path / "tiny", 4, size=32, seed=0)
    err("train", "--data", tiny, "--out", kept, "--batch-size", "8")  # cannot fill a batch, after the tokenizer
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]


def test_out_naming_a_file(synth, tmp_path):
    (tmp_path / "f").write_text("x")
    assert "is a file" in err("train", "--data", synth, "--out", tmp_path / "f")


def test_a_second_trainer_on_the_same_folder_is_refused(synth, tmp_path):
    first = Trainer(cfg(synth, tmp_path / "r"), **LOGGED)
    with pytest.raises(UserError, match="another training process"):
        Trainer(cfg(synth, tmp_path / "r"), **LOGGED)
    first.run(progress=False)  # and the lock goes with the run
    Trainer(cfg(synth, tmp_path / "r", steps=6), resume=True, **LOGGED).run(progress=False)


def test_resume_falls_back_to_the_newest_intact_checkpoint(synth, tmp_path):
    out = tmp_path / "r"
    Trainer(cfg(synth, out, steps=4, keep=3), **LOGGED).run(progress=False)
    newest = kinds.newest_checkpoint(out)
    assert newest.name == "step_00000004"
    data = (newest / "model.safetensors").read_bytes()
    (newest / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    logs.clear()
    t = Trainer(cfg(synth, out, steps=6), resume=True, **LOGGED)
    assert t.step == 2 and t.resume_from.name == "step_00000002"
    assert any("cannot resume from step_00000004" in line for line in logs)
    state = json.loads((t.resume_from / "state.json").read_text())
    del state["step"]
    (t.resume_from / "state.json").write_text(json.dumps(state))
    del t
    with pytest.raises(
        UserError, match="none of the 2 checkpoint.* can be resumed; the newest: .*unreadable checkpoint files"
    ):
        Trainer(cfg(synth, out, steps=6), resume=True, **LOGGED)


def test_non_finite_weights_are_never_checkpointed(synth, tmp_path):
    out = tmp_path / "r"
    t = Trainer(cfg(synth, out, steps=2, save_every=1000), **LOGGED)
    t.run(progress=False)
    good = kinds.newest_checkpoint(out)
    w = t.model.encoder.trunk.blocks[0].mlp.fc2.weight
    # the run's arrays live on the library's MLX thread (owner.py): the test's are made there too
    t.model.encoder.trunk.blocks[0].mlp.fc2.weight = owner.run(mx.full, w.shape, float("nan"))
    t.step = 3
    assert t.save() == good and kinds.newest_checkpoint(out) == good
    t.model.encoder.trunk.blocks[0].mlp.fc2.weight = owner.run(mx.full, w.shape, 6e29)
    assert t.save() == good


def test_sigterm_checkpoints_like_ctrl_c(synth, tmp_path, monkeypatch):
    out = tmp_path / "r"
    t = Trainer(cfg(synth, out, steps=50, save_every=1000), **LOGGED)
    real = t._key

    def key(step):
        if step == 2:
            signal.raise_signal(signal.SIGTERM)
        return real(step)

    monkeypatch.setattr(t, "_key", key)
    r = t.run(progress=False)
    assert r["interrupted"] and 2 <= r["step"] < 50
    assert kinds.newest_checkpoint(out).name == f"step_{r['step']:08d}"


def test_orphans_of_killed_runs_are_cleaned_up(synth, tmp_path):
    out = tmp_path / "r"
    Trainer(cfg(synth, out, steps=2), **LOGGED).run(progress=False)
    (out / "checkpoints" / f"{TMP_PREFIX}abc").mkdir()
    (out / f"{TMP_PREFIX}def").mkdir()
    (out / f"{TMP_PREFIX}999999999-ghi").mkdir()  # its writer's pid is gone
    (out / "checkpoints" / "user-notes").mkdir()
    Trainer(cfg(synth, out, steps=3), resume=True, **LOGGED)
    assert not list(out.rglob(f"{TMP_PREFIX}*")) and (out / "checkpoints" / "user-notes").is_dir()


def test_resume_from_the_saved_config(synth, tmp_path):
    """The README's form: only --out and --resume; the run's own config does the rest."""
    out = tmp_path / "r"
    r = cli(
        *[
            "train",
            "--data",
            str(synth),
            "--out",
            str(out),
            "--encoder",
            "tiny",
            "--image-size",
            "56",
            "-b",
            "8",
            "--steps",
            "2",
            "--set",
            "vocab_size=300",
            "--no-progress",
        ],
    )
    assert r.exit_code == 0, r.output
    r = cli(*["train", "--out", str(out), "--resume", "--steps", "3", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "step 3:" in r.output and kinds.newest_checkpoint(out).name == "step_00000003"
    assert "keeps its batch_size" in err("train", "--out", out, "--resume", "-b", "16", "--steps", "4")


def test_mirrored_captions_only_when_asked(synth, tmp_path):
    assert not Trainer(cfg(synth, tmp_path / "a"), **LOGGED).stream.mirror
    assert Trainer(cfg(synth, tmp_path / "b", mirror_captions=True), **LOGGED).stream.mirror


def test_huge_captions_do_not_stall_the_tokenizer(tmp_path):
    """2.6-million-character captions (uncapped, BPE training on them took minutes)."""
    from mlx_aimv2.tokenizer import MAX_CAPTION_CHARS, train_bpe

    huge = "a red circle " * 200_000
    tok = train_bpe([huge, "a blue square"] * 3, 300, tmp_path / "t.json")
    assert (tok([huge]) == tok([huge[:MAX_CAPTION_CHARS]])).all()


def test_an_interrupted_run_reports_its_final_steps_own_loss(synth, tmp_path):
    """Ctrl-C at step 154 said `step 154: loss 0.8201`, step 150's logged loss: the result's loss is
    the final step's, and the last logged record says which step it is from."""
    seen = []
    t = Trainer(cfg(synth, tmp_path / "r", steps=20, log_every=4, save_every=1000), **LOGGED)
    r = t.run(progress=False, until=6, on_step=lambda rec: seen.append((rec["step"], rec["loss"])))
    assert r["interrupted"] and r["step"] == 6 and seen[-1] == (6, r["loss"])
    assert r["last"]["step"] == 4 and r["last"]["loss"] == pytest.approx(dict(seen)[4], abs=1e-6)
    assert r["loss"] != r["last"]["loss"]
