"""mlx-aimv2: AIMv2 vision encoders in MLX - feature extraction, conversion and pre-training.

`import mlx_aimv2` stays light (no torch, no transformers, no mlx-data) and changes nothing outside
the package: no thread starts, no signal handler, no logging set-up (the one owner thread that runs
MLX work starts at the first call that needs it). Without MLX's compute backend, the `mlx-aimv2`
command says what to install in one line and exits 1; a program importing us gets an ImportError.
"""

__version__ = "0.1.0"

import os as _os
import sys as _sys

try:
    import mlx.core  # noqa: F401
except ImportError:
    _NO_MLX = (
        "mlx-aimv2 needs MLX's compute backend: on Linux pip install 'mlx-aimv2[cpu]' (or [cuda12] / "
        "[cuda13]); on a Mac pip install mlx"
    )
    # the `mlx-aimv2` command (or python -m mlx_aimv2) says it in one line; a program importing us gets
    # the ImportError it can catch
    _argv = getattr(_sys, "orig_argv", _sys.argv)
    if _os.path.basename(_sys.argv[0]) == "mlx-aimv2" or ["-m", "mlx_aimv2"] in [
        _argv[i : i + 2] for i in range(len(_argv))
    ]:
        print(f"error: {_NO_MLX}", file=_sys.stderr)
        raise SystemExit(1) from None
    raise ImportError(_NO_MLX) from None

from .api import AIMv2, Encoder, ImageClassifier, LiTModel, convert, load  # noqa: E402
from .config import PRESETS, ModelConfig, TextConfig, VisionConfig  # noqa: E402
from .cpu import SlowBLASWarning  # noqa: E402
from .errors import UserError  # noqa: E402
from .index import Index  # noqa: E402
from .models import AIMv2LiT, AIMv2VisionEncoder  # noqa: E402

__all__ = [
    "load",
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
