"""The objectives the one trainer knows: name -> class. A new objective is a file beside these and a
line here."""

from ...errors import UserError
from .aimv2 import AIMv2, ImageOnly, TextOnly
from .base import Objective, Shard
from .classify import Classify
from .lit import LiT

REGISTRY: dict[str, type[Objective]] = {o.name: o for o in (AIMv2, ImageOnly, TextOnly, LiT, Classify)}


def objective_class(name: str) -> type[Objective]:
    if name not in REGISTRY:
        raise UserError(f"config key 'objective' = {name!r}: use one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


__all__ = ["REGISTRY", "AIMv2", "Classify", "ImageOnly", "LiT", "Objective", "Shard", "TextOnly", "objective_class"]
