"""mlx-aimv2: AIMv2 vision encoders in MLX - feature extraction, conversion and pre-training.

`import mlx_aimv2` stays light: no torch, no transformers.
"""
__version__ = "0.1.0"

from .api import AIMv2, convert, load  # noqa: E402
from .config import ModelConfig, TextConfig, VisionConfig, PRESETS  # noqa: E402
from .errors import UserError  # noqa: E402
from .models import AIMv2LiT, AIMv2VisionEncoder  # noqa: E402


def _warn_if_slow_blas():
    import os
    import sys
    # the `mlx-aimv2` command restarts itself with OpenBLAS first, and warns itself if it cannot
    if os.path.basename(sys.argv[0] if sys.argv else "") != "mlx-aimv2":
        from .environment import warn_if_slow_blas
        warn_if_slow_blas()


_warn_if_slow_blas()

__all__ = ["load", "convert", "AIMv2", "AIMv2VisionEncoder", "AIMv2LiT", "ModelConfig", "VisionConfig",
           "TextConfig", "PRESETS", "UserError", "__version__"]
