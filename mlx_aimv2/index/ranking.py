"""Exact nearest neighbours by cosine similarity: one matrix-vector product and a partial sort.

Brute force is the default on purpose: 100,000 vectors of 768 floats answer in about 30 ms on two
CPU cores (benchmarks/search.py), exact, with nothing to build or keep in sync; the time grows
linearly, so an approximate index pays off only past about a million images (docs/search.md).
"""

from __future__ import annotations

import numpy as np


def top_k(matrix: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `matrix` (n, d), unit length, most similar to `query` (d,): (indices, scores), best first;
    ties keep the earlier row first."""
    q = np.asarray(query, np.float32)
    q = q / max(float(np.linalg.norm(q)), 1e-12)
    scores = matrix @ q
    k = min(k, len(scores))
    if k < len(scores):
        part = np.argpartition(-scores, k - 1)[:k]
    else:
        part = np.arange(len(scores))
    order = part[np.lexsort((part, -scores[part]))]
    return order, scores[order]
