"""EASE (Steck 2019): closed-form item-item weights, as a baseline and as a ranker feature."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

L2 = 250.0


def ease_weights(seen: sp.csr_matrix, l2: float = L2, dtype=np.float64) -> np.ndarray:
    """[n_items, n_items] weights B (zero diagonal): a user's score of item j is sum_h B[h, j]
    over the items h the user has seen. The solve is O(n_items^3) time and n_items^2 memory."""
    matrix = seen.astype(dtype)
    gram = (matrix.T @ matrix).toarray()
    gram[np.diag_indices_from(gram)] += l2
    inverse = np.linalg.inv(gram)
    weights = -inverse / np.diag(inverse)
    np.fill_diagonal(weights, 0.0)
    return weights


def strongest_weights(weights: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` largest positive weights: ([n, k] int32 columns, -1 = none; [n, k] float32)."""
    k = min(k, weights.shape[1])
    top = np.argpartition(-weights, k - 1, axis=1)[:, :k]
    values = np.take_along_axis(weights, top, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    top, values = np.take_along_axis(top, order, axis=1), np.take_along_axis(values, order, axis=1)
    positive = values > 0
    return np.where(positive, top, -1).astype(np.int32), np.where(positive, values, 0.0).astype(np.float32)
