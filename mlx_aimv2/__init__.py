"""mlx-aimv2: AIMv2 vision encoders in MLX - feature extraction, conversion and pre-training.

`import mlx_aimv2` stays light (no torch, no transformers, no mlx-data) and, in a program that
imports it, changes nothing outside the package: no thread starts, no signal handler, no logging
set-up (the one owner thread that runs MLX work starts at the first call that needs it; an atexit
hook lets it finish and clear MLX's streams). Only as the `mlx-aimv2` command does it act at import:
a Ctrl-C while the libraries load exits 130 quietly, and without MLX's compute backend it says what
to install in one line and exits 1 (a program importing us gets the ImportError instead).
"""

__version__ = "0.1.0"

import os as _os
import signal as _signal
import sys as _sys

_argv = getattr(_sys, "orig_argv", _sys.argv)
_AS_COMMAND = _os.path.basename(_sys.argv[0]) == "mlx-aimv2" or ["-m", "mlx_aimv2"] in [
    _argv[i : i + 2] for i in range(len(_argv))
]


def _interrupted_while_loading(*_):
    _sys.stderr.write("interrupted\n")
    _os._exit(130)  # nothing has started that could be lost; cli.console() puts Ctrl-C back


if _AS_COMMAND and _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
    _signal.signal(_signal.SIGINT, _interrupted_while_loading)

try:
    import mlx.core  # noqa: F401
except ImportError:
    _NO_MLX = (
        "mlx-aimv2 needs MLX's compute backend: on Linux pip install 'mlx-aimv2[cpu]' (or [cuda12] / "
        "[cuda13]); on a Mac pip install mlx"
    )
    # the `mlx-aimv2` command (or python -m mlx_aimv2) says it in one line; a program importing us gets
    # the ImportError it can catch
    if _AS_COMMAND:
        print(f"error: {_NO_MLX}", file=_sys.stderr)
        raise SystemExit(1) from None
    raise ImportError(_NO_MLX) from None

from .api import AIMv2, Encoder, ImageClassifier, LiTModel, convert, load, load_aimv2  # noqa: E402
from .config import PRESETS, ModelConfig, TextConfig, VisionConfig  # noqa: E402
from .cpu import SlowBLASWarning  # noqa: E402
from .errors import UserError  # noqa: E402
from .index import Index  # noqa: E402
from .models import AIMv2LiT, AIMv2VisionEncoder  # noqa: E402

__all__ = [
    "load",
    "load_aimv2",
    "convert",
    "AIMv2",
    "Encoder",
    "LiTModel",
    "ImageClassifier",
    "AIMv2VisionEncoder",
    "AIMv2LiT",
    "ModelConfig",
    "VisionConfig",
    "TextConfig",
    "PRESETS",
    "UserError",
    "SlowBLASWarning",
    "Index",
    "__version__",
]
