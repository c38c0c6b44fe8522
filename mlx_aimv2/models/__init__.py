"""nn.Modules only: they know nothing of files, the hub or the CLI."""

from .. import kinds
from ..config import ModelConfig
from .encoder import AIMv2VisionEncoder, prefix_mask, sincos_2d
from .lit import AIMv2LiT


def build(config: ModelConfig):
    """The module a config describes, with zero-initialised weights (to be loaded)."""
    return AIMv2LiT(config) if kinds.is_lit(config) else AIMv2VisionEncoder(config.vision)


__all__ = ["build", "AIMv2VisionEncoder", "AIMv2LiT", "prefix_mask", "sincos_2d"]
