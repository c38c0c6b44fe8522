import os
import sys
from pathlib import Path

import mlx.core as mx
import pytest

from mlx_aimv2 import cpu


def pytest_configure(config):
    """`python -m pytest` on Linux runs 7x faster with Debian's OpenBLAS; LD_PRELOAD acts only at
    process start, so the suite restarts itself with it, as the `mlx-aimv2` command does
    (cpu.openblas_env), once pytest has given back the terminal it captures."""
    env = cpu.openblas_env()
    started_as_pytest = Path(sys.argv[0]).name in ("pytest", "py.test") or Path(sys.argv[0]).parent.name == "pytest"
    if env is None or not started_as_pytest:  # pytest.main() inside a program: never replace that program
        return
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        capture.stop_global_capturing()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *cpu.interpreter_flags(), "-m", "pytest", *sys.argv[1:]], env)


sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _seed():
    mx.random.seed(0)


@pytest.fixture(autouse=True)
def _in_a_scratch_folder(tmp_path_factory, monkeypatch):
    """Every test runs in its own empty working directory: a command's default output (runs/aimv2,
    ...) lands there, never in the checkout, and no test depends on what a user ran in it."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


_REFERENCES = ("torch", "transformers")  # the test extra's references; absent on a lean install


def _skip_without_references():
    try:
        return (yield)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] in _REFERENCES:
            pytest.skip(f"compares against {e.name}, which is not installed: pip install -e '.[test]'")
        raise


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    return (yield from _skip_without_references())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    return (yield from _skip_without_references())
