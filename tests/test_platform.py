"""How the package starts on each platform: the OpenBLAS restart runs only our own code and only
from the command, never from an import or a program; the slow-BLAS notice is a filterable warning;
Metal's wired-memory limit is set only for large models."""

import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest
from helpers import ROOT

from mlx_aimv2 import cpu, environment

needs_openblas = pytest.mark.skipif(
    sys.platform != "linux" or not os.path.exists(cpu.OPENBLAS), reason="Debian's OpenBLAS is not installed"
)


def _bare_env(**extra):
    """The environment of a user who installed OpenBLAS but did not preload it."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MLX_AIMV2_NO_RESTART")}
    return {**env, **extra}


def _console_script() -> str:
    exe = Path(sys.executable).parent / "mlx-aimv2"
    if not exe.is_file():
        pytest.skip("the mlx-aimv2 console script is not installed")
    return str(exe)


@needs_openblas
def test_restart_runs_our_package_not_the_working_directorys(tmp_path):
    hostile = tmp_path / "mlx_aimv2"
    hostile.mkdir()
    for f in ("__init__.py", "__main__.py"):
        (hostile / f).write_text("open(__file__ + '.ran', 'w').write('x'); raise SystemExit(99)\n")
    r = subprocess.run(
        [_console_script(), "doctor"], cwd=tmp_path, env=_bare_env(), capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert not list(hostile.glob("*.ran"))
    assert "openblas" in r.stdout and "(preloaded)" in r.stdout  # the restart happened


@needs_openblas
@pytest.mark.parametrize("how", ["console script", "python -m"])
def test_both_ways_of_starting_the_cli_restart_alike(tmp_path, how):
    cmd = [_console_script()] if how == "console script" else [sys.executable, "-m", "mlx_aimv2"]
    r = subprocess.run([*cmd, "doctor"], cwd=tmp_path, env=_bare_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "(preloaded)" in r.stdout and "SLOW" not in r.stdout and "warning" not in r.stderr


@needs_openblas
def test_a_program_calling_cli_main_is_not_replaced(tmp_path):
    code = (
        "import sys; from mlx_aimv2 import cli; sys.argv = ['mlx-aimv2', 'models']\n"
        "try:\n    cli.main()\nexcept SystemExit:\n    pass\nprint('still the same process')"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=_bare_env(), capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert "still the same process" in r.stdout and "aimv2-large-patch14-224" in r.stdout


@needs_openblas
def test_pytest_main_from_a_program_returns(tmp_path):
    """Our conftest once replaced the calling process to preload OpenBLAS."""
    code = (
        f"import pytest; rc = pytest.main(['-q', '-p', 'no:cacheprovider', {str(ROOT / 'tests' / 'test_config.py')!r}])\n"
        "print('pytest.main returned', int(rc))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=_bare_env(), capture_output=True, text=True, timeout=300
    )
    assert "pytest.main returned 0" in r.stdout, r.stdout[-1000:] + r.stderr[-1000:]


def test_no_restart_off_the_cpu_backend(monkeypatch):
    calls = []
    monkeypatch.setattr(os, "execve", lambda *a: calls.append(a))
    monkeypatch.setattr(os.path, "exists", lambda p: True)
    monkeypatch.setenv("LD_PRELOAD", "")
    monkeypatch.delenv("MLX_AIMV2_NO_RESTART", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(cpu, "backend", lambda: "cuda")
    cpu.restart_with_openblas()
    assert calls == []
    monkeypatch.setattr(cpu, "backend", lambda: "cpu")
    cpu.restart_with_openblas()
    assert len(calls) == 1
    argv = calls[0][1]
    assert "-m" not in argv and argv[argv.index("-c") + 1].startswith("import sys; sys.path[0] = ")


@needs_openblas
def test_slow_blas_is_a_warning_an_app_can_filter(tmp_path):
    code = (
        "import warnings, mlx_aimv2\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    warnings.simplefilter('always')\n"
        "    mlx_aimv2.load('demo')\n"
        "print([w.category.__name__ for w in seen])\n"
        "print([str(w.message) for w in seen])\n"
        "warnings.simplefilter('ignore', mlx_aimv2.SlowBLASWarning)\n"
        "mlx_aimv2.load('demo')\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=_bare_env(), capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert "['SlowBLASWarning']" in r.stdout
    # OpenBLAS is installed here, only not preloaded: the advice is the preload, not an apt-get install
    assert "installed but not loaded" in r.stdout and "apt-get" not in r.stdout, r.stdout
    assert r.stderr.strip() == ""  # the import says nothing, the filtered load says nothing


def test_wired_limit_only_for_large_models_on_metal_and_only_while_they_compute(monkeypatch):
    assert not environment.wired_limit_for(10 << 30) or mx.metal.is_available()
    limits = [0]

    def set_wired_limit(n):  # as MLX's: sets the limit, returns the one before
        limits.append(n)
        return limits[-2]

    monkeypatch.setattr(mx.metal, "is_available", lambda: True)
    monkeypatch.setattr(mx, "device_info", lambda: {"max_recommended_working_set_size": 48 << 30})
    monkeypatch.setattr(mx, "set_wired_limit", set_wired_limit)
    assert not environment.wired_limit_for(100 << 20)
    assert environment.wired_limit_for(4 << 30) == 48 << 30
    with environment.wired(environment.wired_limit_for(4 << 30)):
        assert limits == [0, 48 << 30]  # raised for the call
    assert limits == [0, 48 << 30, 0]  # and restored after: an idle app pins nothing
    with environment.wired(environment.wired_limit_for(100 << 20)):
        pass
    assert limits == [0, 48 << 30, 0]  # a small model never touches it
