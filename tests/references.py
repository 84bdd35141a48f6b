"""Independent references for tests: written from method.md's words in float64 numpy, so a test
compares the module against a second reading of the spec, not against the module's own helpers."""
from __future__ import annotations

import numpy as np


def anchor_norm(a, rounds: int = 3) -> np.ndarray:
    """method.md §2 ``Norm``: ``rounds`` times divide each column by its sum, then each row by
    its sum; finally the symmetric part ``(T + Tᵀ)/2``. (..., N, N) → (..., N, N), float64."""
    t = np.asarray(a, dtype=np.float64).copy()
    for _ in range(rounds):
        for j in range(t.shape[-1]):                  # columns, one by one
            t[..., :, j] /= t[..., :, j].sum(-1, keepdims=True)
        for i in range(t.shape[-2]):                  # then rows
            t[..., i, :] /= t[..., i, :].sum(-1, keepdims=True)
    return (t + np.swapaxes(t, -1, -2)) / 2


def minmax_tokens(x) -> np.ndarray:
    """Each class (last axis) min-max normalised over the tokens (axis -2) to [0, 1]. float64."""
    x = np.asarray(x, dtype=np.float64)
    lo, hi = x.min(-2, keepdims=True), x.max(-2, keepdims=True)
    return (x - lo) / (hi - lo)
