"""The vlm extra's one door: what needs mlx-lm (Ovis2's language model) is imported through here,
when a vision-language model is used, so that `import mlx_aimv2`, the CLI and every other model load
without it; without it installed, one line says how to add it."""

from ..errors import UserError

INSTALL = "Ovis2 needs mlx-lm, which is not installed: pip install 'mlx-aimv2[vlm]'"


def _needs_mlx_lm(e: ModuleNotFoundError) -> UserError:
    if (e.name or "").split(".")[0] != "mlx_lm":
        raise e
    return UserError(INSTALL)


def chat_class():
    """vlm.chat.Ovis2Chat."""
    try:
        from .chat import Ovis2Chat
    except ModuleNotFoundError as e:
        raise _needs_mlx_lm(e) from None
    return Ovis2Chat


def converter():
    """checkpoints.ovis2.convert_ovis2."""
    try:
        from ..checkpoints.ovis2 import convert_ovis2
    except ModuleNotFoundError as e:
        raise _needs_mlx_lm(e) from None
    return convert_ovis2
