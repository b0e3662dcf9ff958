"""Pseudo-class (cluster) -> ground-truth class matching, for evaluation only (paper §4, METHOD.md §5).

Every matcher returns a mapping array (K,) int64: ``mapping[k]`` is the class assigned to cluster k, or -1 when the
cluster is unmatched (Hungarian with K > C, or an empty cluster). :func:`apply_mapping` turns pseudo-labels into
class predictions with it. Ties in a vote go to the lowest class id.

m-shot (paper Table 5) names each cluster from "the top m videos per cluster (based on the strength of association)":
:func:`per_video` turns frame rows into one row per video first (its cluster, its true class, its confidence), and
:func:`m_shot` then votes over videos. With ``videos=None`` it votes over frames (the earlier behaviour).
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["confusion", "hungarian", "majority", "per_video", "m_shot", "apply_mapping"]


def _check(pseudo, true, K: int, C: int) -> tuple[np.ndarray, np.ndarray]:
    pseudo = np.asarray(pseudo, dtype=np.int64).ravel()
    true = np.asarray(true, dtype=np.int64).ravel()
    if pseudo.shape != true.shape:
        raise ValueError(f"pseudo labels ({pseudo.size}) and true labels ({true.size}) differ in length")
    if pseudo.size and (pseudo.min() < 0 or pseudo.max() >= K):
        raise ValueError(f"pseudo labels must lie in [0, {K}), got range [{pseudo.min()}, {pseudo.max()}]")
    if true.size and (true.min() < 0 or true.max() >= C):
        raise ValueError(f"true labels must lie in [0, {C}), got range [{true.min()}, {true.max()}]; "
                         "drop unlabelled samples (-1) before matching")
    return pseudo, true


def confusion(pseudo, true, K: int, C: int) -> np.ndarray:
    """(N,), (N,) -> (K, C) int64 counts: entry [k, c] = #samples in cluster k with true class c."""
    pseudo, true = _check(pseudo, true, K, C)
    counts = np.zeros((K, C), dtype=np.int64)
    np.add.at(counts, (pseudo, true), 1)
    return counts


def hungarian(pseudo, true, K: int, C: int) -> np.ndarray:
    """One-to-one matching maximising the matched count (scipy ``linear_sum_assignment`` on the K×C counts).

    Returns (K,) int64 cluster -> class. With K > C, K − C clusters get -1;
    with K < C, C − K classes get no cluster.
    """
    counts = confusion(pseudo, true, K, C)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    mapping = np.full(K, -1, dtype=np.int64)
    mapping[rows] = cols
    return mapping


def majority(pseudo, true, K: int, C: int) -> np.ndarray:
    """Many-to-one: each cluster takes its most frequent true class (argmax per row); empty clusters -> -1."""
    counts = confusion(pseudo, true, K, C)
    mapping = counts.argmax(axis=1).astype(np.int64)
    mapping[counts.sum(axis=1) == 0] = -1
    return mapping


def per_video(pseudo, true, confidences, videos, reduce: str = "mean") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame rows -> one row per video: ``(pseudo (V,), true (V,), confidence (V,))`` in order of first appearance.

    A video's cluster is the one most of its frames fall in (ties: the higher ``reduce`` confidence, then the lower
    id); its confidence is the ``reduce`` ("mean" or "max") of the confidences of its frames in that cluster; its true
    class is the most frequent one of its frames (they share the video label).
    """
    if reduce not in ("mean", "max"):
        raise ValueError(f"reduce={reduce!r} must be 'mean' or 'max'")
    pseudo = np.asarray(pseudo, dtype=np.int64).ravel()
    true = np.asarray(true, dtype=np.int64).ravel()
    conf = np.asarray(confidences, dtype=np.float64).ravel()
    videos = list(videos)
    if not (len(videos) == pseudo.size == true.size == conf.size):
        raise ValueError(f"videos ({len(videos)}), pseudo ({pseudo.size}), true ({true.size}) and confidences "
                         f"({conf.size}) differ in length")
    rows: dict = {}
    for i, v in enumerate(videos):
        rows.setdefault(v, []).append(i)
    agg = np.mean if reduce == "mean" else np.max
    out_k, out_t, out_c = [], [], []
    for members in rows.values():
        members = np.asarray(members)
        best = None
        for k in np.unique(pseudo[members]):
            sel = members[pseudo[members] == k]
            key = (sel.size, float(agg(conf[sel])), -int(k))
            if best is None or key > best[0]:
                best = (key, int(k))
        out_k.append(best[1])
        out_c.append(best[0][1])
        out_t.append(int(np.bincount(true[members]).argmax()))
    return np.array(out_k, np.int64), np.array(out_t, np.int64), np.array(out_c, np.float64)


def m_shot(pseudo, true, confidences, K: int, C: int, m: int, videos=None, reduce: str = "mean") -> np.ndarray:
    """Majority vote over the true classes of the ``m`` most confident samples of each cluster (m = 1, 10 ...).

    Args:
        pseudo: (N,) cluster ids in [0, K).  true: (N,) class ids in [0, C).
        confidences: (N,) higher = more confident (e.g. the self-label confidence or p(y*)).
        m: samples per cluster that are "labelled"; clusters with fewer samples use all they have.
        videos: (N,) video id of each row, or None. Given, the samples are videos (:func:`per_video` with
            ``reduce``): the top-m videos of each cluster are labelled, one vote each, as in the paper's Table 5.
    Returns:
        (K,) int64 cluster -> class; empty clusters -> -1.
    """
    if m < 1:
        raise ValueError(f"m={m} must be >= 1")
    pseudo, true = _check(pseudo, true, K, C)
    conf = np.asarray(confidences, dtype=np.float64).ravel()
    if conf.shape != pseudo.shape:
        raise ValueError(f"confidences ({conf.size}) and labels ({pseudo.size}) differ in length")
    if videos is not None:
        pseudo, true, conf = per_video(pseudo, true, conf, videos, reduce)
    mapping = np.full(K, -1, dtype=np.int64)
    order = np.lexsort((-conf, pseudo))  # by cluster, then by confidence descending (stable)
    starts = np.searchsorted(pseudo[order], np.arange(K + 1))
    for k in range(K):
        members = order[starts[k]:starts[k + 1]][:m]
        if members.size:
            mapping[k] = int(np.bincount(true[members], minlength=C).argmax())
    return mapping


def apply_mapping(mapping: np.ndarray, pseudo) -> np.ndarray:
    """(K,) mapping, (N,) cluster ids -> (N,) predicted class ids (-1 for unmatched clusters)."""
    return np.asarray(mapping, dtype=np.int64)[np.asarray(pseudo, dtype=np.int64)]


def align_to(labels: np.ndarray, prev: np.ndarray, num_clusters: int) -> np.ndarray:
    """The renaming (K,) int64 (a permutation: new id of cluster k = ``rename[k]``) of ``labels``' cluster ids that
    agrees most with ``prev`` (Hungarian on the K×K overlap), so the classifiers' targets keep their meaning across
    k-means rounds (k-means names clusters arbitrarily); the renamed labels are ``rename[labels]``."""
    return align_overlap(confusion(labels, prev, num_clusters, num_clusters))


def align_overlap(overlap: np.ndarray) -> np.ndarray:
    """:func:`align_to` from the K×K overlap counts themselves ([k, j] = samples in new cluster k and previous
    cluster j; e.g. summed over processes): the renaming (K,) int64 with the largest total overlap."""
    rows, cols = linear_sum_assignment(np.asarray(overlap), maximize=True)
    rename = np.empty(len(rows), dtype=np.int64)
    rename[rows] = cols
    return rename
