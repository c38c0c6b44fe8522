"""The objectives the one trainer knows: name -> class. A new objective is a file beside these and a
line here."""

from ...errors import UserError
from .aimv2 import AIMv2Objective, ImageOnly, TextOnly
from .base import Objective, RankShare
from .classify import Classify
from .lit import LiT

REGISTRY: dict[str, type[Objective]] = {o.name: o for o in (AIMv2Objective, ImageOnly, TextOnly, LiT, Classify)}


def objective_class(name: str) -> type[Objective]:
    if name not in REGISTRY:
        raise UserError(f"config key 'objective' = {name!r}: use one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


__all__ = [
    "REGISTRY",
    "AIMv2Objective",
    "Classify",
    "ImageOnly",
    "LiT",
    "Objective",
    "RankShare",
    "TextOnly",
    "objective_class",
]
