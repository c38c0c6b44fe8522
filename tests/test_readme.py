"""The README's first command (the main job) works on a machine with no network and no hub cache:
it falls back to the bundled demo checkpoint. The command is read from the README itself."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT


def readme_commands():
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [l for l in block.splitlines() if l.strip() and not l.startswith("#")]


def test_main_job_command_runs_offline_with_the_demo(tmp_path):
    main_job = readme_commands()[0]
    install, run = main_job.split("&&")
    assert install.strip().startswith("pip install -e")
    args = shlex.split(run)
    assert args[0] == "mlx-aimv2"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hf"))
    # run in a temporary folder holding the repository's inputs, so outputs never touch the user's files
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    r = subprocess.run(
        [sys.executable, "-m", "mlx_aimv2", *args[1:]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "demo" in r.stderr and "grace_hopper.jpg: embedding" in r.stdout
    pca = [a for a in args if a.endswith(".png")]
    if pca:
        assert (tmp_path / pca[0]).is_file()


def test_test_command_is_what_ci_runs():
    tests = readme_commands()[1]
    assert "python -m pytest" in tests
    assert "python -m pytest" in (ROOT / ".ci" / "run").read_text()


def test_offline_search_commands_run_on_what_ships(tmp_path):
    """The README's fresh-clone search line: index examples/ with the bundled demo-lit, then search."""
    line = next(l for l in (ROOT / "README.md").read_text().splitlines() if l.startswith("mlx-aimv2 index examples/"))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hf"))
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    outputs = []
    for part in line.split("&&"):
        args = shlex.split(part)
        assert args[0] == "mlx-aimv2"
        r = subprocess.run(
            [sys.executable, "-m", "mlx_aimv2", *args[1:]],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        outputs.append(r)
    assert "25 new" in outputs[0].stdout and "demo-lit" in outputs[0].stderr
    # what the commands leave is what the repository ignores, and SQLite's side files are gone
    left = sorted(p.name for p in tmp_path.iterdir() if p.name not in ("examples", "hf"))
    assert left == ["lib.aimv2", "lib.aimv2.vectors"], left
    for name in left:
        ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", "--no-index", name])
        assert ignored.returncode == 0, f"{name} would show in git status of the checkout"
    hits = [l.split() for l in outputs[1].stdout.splitlines() if l.strip()]
    assert len(hits) == 3 and all(Path(h[-1]).is_file() for h in hits)
    # the query describes examples/scenes' image 4 (its caption: captions.jsonl): it comes first
    assert hits[0][-1].endswith("scenes/images/000004.jpg"), outputs[1].stdout


def test_the_app_example_indexes_in_the_background_searches_meanwhile_and_cancels(tmp_path):
    """docs/app.md's example, run as written: a worker thread indexes, the main thread searches."""
    script = ROOT / "examples" / "app_indexing.py"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    r = subprocess.run(
        [sys.executable, str(script), str(ROOT / "examples"), "--db", str(tmp_path / "app.aimv2")],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "meanwhile, search:" in r.stdout and "done: 25 new" in r.stdout, r.stdout
    r = subprocess.run(
        [sys.executable, str(script), str(ROOT / "examples"), "--db", str(tmp_path / "c.aimv2"), "--cancel-after", "4"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert r.returncode == 0 and "cancelled:" in r.stdout, r.stdout + r.stderr[-2000:]
    import mlx_aimv2

    with mlx_aimv2.Index(tmp_path / "c.aimv2", create=False) as lib:
        assert 0 < len(lib) < 25 and len(lib) % 4 == 0  # whole committed batches only


def _doc_commands(page: str, *starts: str) -> list:
    """The lines of a docs page's bash blocks that start with any of `starts`, in order."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "docs" / page).read_text(), re.S)
    return [l.split("  #")[0].strip() for b in blocks for l in b.splitlines() if l.startswith(starts)]


def test_the_zero_shot_example_runs_as_written_on_a_fresh_clone(tmp_path):
    """`zeroshot --data data/colours/val` answered "no such folder": the page now makes the data first."""
    lines = _doc_commands("probes.md", "mlx-aimv2 data synth data/colours", "mlx-aimv2 zeroshot --model demo-lit")
    assert len(lines) == 2 and lines[0].startswith("mlx-aimv2 data synth"), lines
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    for line in lines:
        r = subprocess.run([sys.executable, "-m", "mlx_aimv2", *shlex.split(line)[1:]], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
        assert r.returncode == 0, (line, r.stderr[-1500:])
    assert "top-1" in r.stdout and (tmp_path / "zeroshot.json").is_file()


def test_the_readme_is_a_first_hour_page():
    """Under 15 KB, the Python quick start on its first screen, how to cite, the weights' licence and
    the platform floors; no figure that changes with every commit (a count of tests)."""
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) < 15_000
    first = "\n".join(text.splitlines()[:120])
    assert "```python" in first and "mlx_aimv2.load(" in first and ".classify(" in first and ".search(" in first
    assert "```bibtex" in text and "2411.14402" in text and "apple-amlr" in text
    assert "macOS 14" in text and "glibc 2.35" in text
    assert not re.search(r"\b\d+ tests\b", text)
    for target in re.findall(r"\]\((docs/[^)#]+)", text):  # every page it links to exists
        assert (ROOT / target).is_file(), target


def test_the_docs_build_as_a_site_with_no_broken_link(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs site needs mkdocs-material: pip install -e '.[test]'")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").is_file()
