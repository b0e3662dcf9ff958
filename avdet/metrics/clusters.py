"""Cluster quality against ground-truth classes: NMI, ARI, Hungarian accuracy, purity (METHOD.md §5).

All are computed from the contingency matrix n_kc (cluster k, class c), N = Σ n_kc, a_k = row sums, b_c = column
sums. Definitions (the usual ones, matching scikit-learn's defaults):

- NMI = I(U; V) / ((H(U) + H(V)) / 2)  (arithmetic normalisation); 1.0 when both labellings are a single group.
- ARI = (Σ C(n_kc,2) − E) / (½(Σ C(a_k,2) + Σ C(b_c,2)) − E),  E = Σ C(a_k,2)·Σ C(b_c,2) / C(N,2)
  (Hubert & Arabie); 1.0 when the denominator vanishes (both labellings trivial and identical).
- Hungarian accuracy = fraction of samples whose cluster is one-to-one matched to their class.
- Purity = Σ_k max_c n_kc / N.
"""
from __future__ import annotations

import numpy as np

from avdet.matching import confusion, hungarian

__all__ = ["contingency", "nmi", "adjusted_rand_index", "hungarian_accuracy", "purity", "cluster_metrics"]


def contingency(pseudo, true) -> np.ndarray:
    """(N,), (N,) arbitrary non-negative ints -> (K, C) counts with K = max(pseudo)+1, C = max(true)+1."""
    pseudo = np.asarray(pseudo, dtype=np.int64).ravel()
    true = np.asarray(true, dtype=np.int64).ravel()
    if pseudo.size == 0:
        raise ValueError("cannot score an empty labelling")
    return confusion(pseudo, true, int(pseudo.max()) + 1, int(true.max()) + 1)


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def nmi(pseudo, true) -> float:
    """Normalised mutual information (arithmetic mean of the two entropies), in [0, 1]."""
    n = contingency(pseudo, true)
    total = float(n.sum())
    a, b = n.sum(axis=1).astype(np.float64), n.sum(axis=0).astype(np.float64)
    h_u, h_v = _entropy(a), _entropy(b)
    if h_u == 0.0 and h_v == 0.0:
        return 1.0
    mi = 0.0
    step = max(1, (1 << 18) // max(1, n.shape[1]))      # row blocks: no K×C float copy (72 MB each at 3000²)
    for r0 in range(0, n.shape[0], step):
        block = n[r0:r0 + step].astype(np.float64)
        nz = block > 0
        cell = block[nz]
        mi += float((cell / total * np.log(cell * total / np.outer(a[r0:r0 + step], b)[nz])).sum())
    return max(0.0, min(1.0, mi / ((h_u + h_v) / 2.0)))


def _pairs(x: np.ndarray) -> np.ndarray:
    return x * (x - 1) / 2.0


def adjusted_rand_index(pseudo, true) -> float:
    """Adjusted Rand index, in [-1, 1] (0 in expectation for random labellings)."""
    n = contingency(pseudo, true).astype(np.float64)
    index = _pairs(n).sum()
    sum_a, sum_b = _pairs(n.sum(axis=1)).sum(), _pairs(n.sum(axis=0)).sum()
    expected = sum_a * sum_b / _pairs(n.sum()) if n.sum() > 1 else 0.0
    denom = 0.5 * (sum_a + sum_b) - expected
    if denom == 0.0:
        return 1.0
    return float((index - expected) / denom)


def hungarian_accuracy(pseudo, true) -> float:
    """Accuracy after the best one-to-one cluster -> class matching (unmatched clusters count as wrong)."""
    n = contingency(pseudo, true)
    mapping = hungarian(pseudo, true, n.shape[0], n.shape[1])
    matched = sum(int(n[k, c]) for k, c in enumerate(mapping) if c >= 0)
    return matched / float(n.sum())


def purity(pseudo, true) -> float:
    """Σ_k max_c n_kc / N: accuracy when every cluster takes its majority class."""
    n = contingency(pseudo, true)
    return float(n.max(axis=1).sum() / n.sum())


def cluster_metrics(pseudo, true) -> dict:
    """All four metrics: ``{"nmi", "ari", "hungarian_acc", "purity"}`` (floats)."""
    return {"nmi": nmi(pseudo, true), "ari": adjusted_rand_index(pseudo, true),
            "hungarian_acc": hungarian_accuracy(pseudo, true), "purity": purity(pseudo, true)}
