import sys
from pathlib import Path

import mlx.core as mx
import pytest

from mlx_aimv2.environment import reexec_with_openblas

sys.path.insert(0, str(Path(__file__).parent))


def pytest_configure(config):
    """Linux: restart pytest with Debian's OpenBLAS preloaded when it is installed and not loaded
    (the mlx[cpu] wheel's own BLAS makes the suite ~20x slower). Output capture stops first, or
    the new process would write into pytest's capture file."""
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is not None:
        capman.suspend_global_capture(in_=True)
    reexec_with_openblas(["-m", "pytest", *sys.argv[1:]])
    if capman is not None:
        capman.resume_global_capture()


@pytest.fixture(autouse=True)
def _seed():
    mx.random.seed(0)
