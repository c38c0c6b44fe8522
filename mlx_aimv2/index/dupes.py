"""Near-duplicate groups: images whose embeddings are closer than a threshold (cosine), joined
transitively (a re-encode of a crop of a photo groups with the photo).

Exact: every pair is scored, a block of rows at a time against the rows after it, so memory stays
at block x n floats; the time is n^2 x d multiply-adds (benchmarks/library.py measures it).
The default threshold comes from benchmarks/dupes.py's generated set of edited copies.
"""

from __future__ import annotations

import numpy as np

DEFAULT_THRESHOLD = 0.95


def groups(matrix: np.ndarray, threshold: float = DEFAULT_THRESHOLD, block: int = 2048) -> list[list[int]]:
    """Row indices of `matrix` (n, d; unit rows) in groups of two or more near-duplicates, the
    largest group first, each group in row order."""
    n = len(matrix)
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    m = np.asarray(matrix, np.float32)
    for start in range(0, n, block):
        rows = m[start : start + block]
        sims = rows @ m[start:].T  # this block against itself and every later row
        ii, jj = np.nonzero(np.triu(sims >= threshold, k=1))
        for i, j in zip(ii + start, jj + start):
            a, b = root(int(i)), root(int(j))
            if a != b:
                parent[max(a, b)] = min(a, b)
    found: dict[int, list[int]] = {}
    for i in range(n):
        found.setdefault(root(i), []).append(i)
    return sorted((g for g in found.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))


def pair_scores(matrix: np.ndarray, group: list[int]) -> list[float]:
    """Each member's similarity to the group's first image (float16 storage can put it a hair over 1)."""
    m = np.asarray(matrix, np.float32)
    return [min(float(m[group[0]] @ m[i]), 1.0) for i in group]
