"""Prompt templates for zero-shot labels (`classify --template`, `zeroshot --templates`): one rule,
checked in one place. A template holds exactly one '{}' (or '{0}') where the label goes; a literal
brace is doubled ('{{'), as in str.format."""

from __future__ import annotations

import string
from typing import Sequence

from .errors import UserError

EXAMPLE = "'a photo of {}.'"


def check_template(template, where: str = "template") -> str:
    """The template, or one clear line saying what is wrong with it (`where` names its source)."""
    if not isinstance(template, str):
        raise UserError(f"{where}: a template is text with one '{{}}' for the label, e.g. {EXAMPLE}")
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as e:  # a lone '{' or '}'
        raise UserError(
            f"{where} {template!r}: {e}; write one '{{}}' where the label goes and double a literal brace ('{{{{')"
        ) from None
    if not fields:  # every label would get the same prompt (a '{{}}' is a literal pair of braces)
        raise UserError(f"{where} {template!r}: no '{{}}' where the label goes; write one, e.g. {EXAMPLE}")
    if len(fields) > 1:
        raise UserError(f"{where} {template!r}: {len(fields)} fields; write exactly one '{{}}' for the label")
    name, spec, conv = fields[0]
    if name not in ("", "0") or spec or conv:
        raise UserError(f"{where} {template!r}: the field {{{name}}} is not '{{}}'; write '{{}}' where the label goes")
    return template


def fill_template(template: str, labels: Sequence[str]) -> list[str]:
    """The prompt of each label: the template checked, then filled."""
    return [check_template(template).format(str(label)) for label in labels]
