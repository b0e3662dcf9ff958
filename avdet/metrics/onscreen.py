"""On/off-screen sound recognition (seed 001, Table 1): is the sounding object in the frame at all?

Per frame the model gives d_on (the largest audio-proposal association, :func:`avdet.proposal_ssl.association`) and
the distance between the frame's attended feature and its audio in the common space, ‖f^att − f^s‖; a negative pair
(the frame with another clip's audio) gives the distance of a non-matching pair. The rules, as in seed 001:

- ``d``: on screen when d_on > 0.2;
- ``m``: on screen when the distance is below a threshold: the mean of the median distance of the matching pairs
  and that of the non-matching pairs, over every frame evaluated (no on/off label is used to set it);
- ``either``: the paper's m_on ‖ d_on.

Accuracy is the fraction of frames whose decision equals the truth (on-screen clips vs off-screen clips); per-class
recalls are given beside it, as the two sets need not be the same size.
"""
from __future__ import annotations

import numpy as np

__all__ = ["onscreen_accuracy", "RULES"]

RULES = ("m", "d", "either")


def onscreen_accuracy(d_on: np.ndarray, dist: np.ndarray, dist_neg: np.ndarray, on: np.ndarray,
                      d_threshold: float = 0.2) -> dict:
    """``{"threshold", "frames", "on_frames", "off_frames", "<rule>": {"accuracy", "on_recall", "off_recall"}}``
    for frames with d_on, their matching-pair distance ``dist``, a non-matching pair's ``dist_neg`` (NaN: none) and
    the truth ``on`` (bool)."""
    d_on, dist, dist_neg, on = (np.asarray(a) for a in (d_on, dist, dist_neg, on))
    on = on.astype(bool)
    if not (len(d_on) == len(dist) == len(dist_neg) == len(on)) or not len(on):
        raise ValueError(f"on/off-screen: {len(d_on)}, {len(dist)}, {len(dist_neg)}, {len(on)} values: need the "
                         f"same non-zero number of each")
    negatives = dist_neg[np.isfinite(dist_neg)]
    if not len(negatives):
        raise ValueError("on/off-screen: no non-matching pair (every frame of one clip?)")
    threshold = float((np.median(dist) + np.median(negatives)) / 2)
    decisions = {"m": dist < threshold, "d": d_on > d_threshold}
    decisions["either"] = decisions["m"] | decisions["d"]
    out = {"threshold": threshold, "d_threshold": d_threshold, "frames": int(len(on)), "on_frames": int(on.sum()),
           "off_frames": int((~on).sum())}
    for rule in RULES:
        said = decisions[rule]
        out[rule] = {"accuracy": float(np.mean(said == on)),
                     "on_recall": float(said[on].mean()) if on.any() else float("nan"),
                     "off_recall": float((~said[~on]).mean()) if (~on).any() else float("nan")}
    return out
