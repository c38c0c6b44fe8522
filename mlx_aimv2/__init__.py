"""mlx-aimv2: AIMv2 vision encoders in MLX - feature extraction, conversion and pre-training.

`import mlx_aimv2` stays light: no torch, no transformers.
"""
__version__ = "0.1.0"

from .api import AIMv2, convert, load  # noqa: E402
from .config import ModelConfig, TextConfig, VisionConfig, PRESETS  # noqa: E402
from .errors import UserError  # noqa: E402
from .models import AIMv2LiT, AIMv2VisionEncoder  # noqa: E402


def _warn_if_slow_blas():
    """The one slow-BLAS warning (library and CLI alike), as a single line on stderr."""
    import sys
    if sys.platform == "linux":
        from .environment import BLAS_FIX, slow_blas
        if slow_blas():
            print(f"warning: MLX is using the mlx[cpu] wheel's reference BLAS (~40x slower matmuls); {BLAS_FIX}",
                  file=sys.stderr)


_warn_if_slow_blas()

__all__ = ["load", "convert", "AIMv2", "AIMv2VisionEncoder", "AIMv2LiT", "ModelConfig", "VisionConfig",
           "TextConfig", "PRESETS", "UserError", "__version__"]
