"""Queries that combine several text and image terms with weights, as rclip writes them:

    "2:golden retriever" + ./pool.jpg - fruit

Terms are joined by `+` or `-` (spaced, or as their own command-line words); `W:` before a term
weights it (default 1); a term naming an existing file is an image, anything else is text. The
query vector is the weighted sum of the terms' unit embeddings (search normalises it again).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

from ..errors import UserError

_SIGN = re.compile(r"(?:^|\s+)([+-])(?=\s|$)")  # a lone + or -: "t-shirt" and "-5" stay words
_WEIGHT = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*:\s*(.*)$", re.S)


@dataclass(frozen=True)
class Term:
    value: Union[str, os.PathLike]  # the words, or the image file
    weight: float = 1.0
    image: bool = False

    def __str__(self) -> str:
        return f"{self.weight:+g} x {'image' if self.image else 'text'} {str(self.value)!r}"


def parse(words: Union[str, Sequence[str]], files: bool = True) -> list[Term]:
    """Terms of a query given as one string or as command-line words ("a", "+", "b.jpg"). files=False:
    every term is text (a server's client must not name files on the server's disk)."""
    text = (words if isinstance(words, str) else " ".join(words)).strip()
    if not text:
        raise UserError("the query is empty; give words, an image file, or terms joined by + and -")
    parts = _SIGN.split(text)  # [term, sign, term, sign, term ...]; a leading sign leaves "" first
    terms = []
    for i in range(0, len(parts), 2):
        sign = -1.0 if i and parts[i - 1] == "-" else 1.0
        part = parts[i].strip()
        if not part:
            if i == 0:
                continue
            raise UserError(f"query {text!r}: a '+' or '-' with no term after it")
        weight = 1.0
        m = _WEIGHT.match(part)
        if m:
            weight, part = float(m.group(1)), m.group(2).strip()
            if not part:
                raise UserError(f"query {text!r}: the weight {m.group(1)} has no term after it")
        path = os.path.expanduser(part)
        is_image = files and os.path.isfile(path)
        terms.append(Term(path if is_image else part, sign * weight, is_image))
    if not terms or all(t.weight == 0 for t in terms):
        raise UserError(f"query {text!r}: no term with a weight above 0")
    return terms


def terms_of(text=None, image=None, query=None) -> list[Term]:
    """The API's three ways to ask, as terms: text=..., image=..., or query= (a string in the syntax
    above, or a list of Term / (value, weight) pairs; a value that is a path object is an image)."""
    given = [x is not None for x in (text, image, query)]
    if sum(given) != 1:
        raise UserError("search with one of: text=..., image=..., or query=... (terms with weights)")
    if text is not None:
        if not isinstance(text, str):
            raise UserError(f"text: give the query as a string, got {type(text).__name__} {text!r}")
        return [Term(text)]
    if image is not None:
        return [Term(image, 1.0, True)]
    if isinstance(query, str):
        return parse(query)
    terms = []
    for q in query:
        if isinstance(q, Term):
            terms.append(q)
            continue
        try:
            value, weight = q
            weight = float(weight)
        except (TypeError, ValueError):
            raise UserError(f"query: each term is a Term or a (text or image path, weight) pair, got {q!r}") from None
        terms.append(Term(value, weight, not isinstance(value, str)))
    if not terms:
        raise UserError("query: the list of terms is empty")
    return terms


def combine(vectors: Sequence[np.ndarray], terms: Sequence[Term]) -> np.ndarray:
    """The weighted sum of the terms' unit vectors."""
    out = np.zeros_like(np.asarray(vectors[0], np.float32))
    for v, t in zip(vectors, terms):
        v = np.asarray(v, np.float32)
        out += t.weight * v / max(float(np.linalg.norm(v)), 1e-12)
    if not np.linalg.norm(out) > 1e-6:
        raise UserError("the terms cancel out: their weighted sum is zero; change a weight")
    return out
