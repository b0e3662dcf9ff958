"""On/off-screen recognition accuracy (seed 001's Table 1): known answers for the threshold and the three rules."""
import numpy as np
import pytest

from avdet.metrics.onscreen import onscreen_accuracy


def test_rules_and_threshold_by_hand():
    d_on = np.array([0.5, 0.1, 0.3, 0.05])
    dist = np.array([0.4, 0.5, 1.6, 1.7])            # matching pairs
    neg = np.array([1.4, 1.5, np.nan, 1.6])          # non-matching pairs (one frame has none)
    on = np.array([True, True, False, False])
    r = onscreen_accuracy(d_on, dist, neg, on)
    assert r["threshold"] == pytest.approx((np.median(dist) + 1.5) / 2)   # (1.05 + 1.5) / 2
    assert r["m"] == {"accuracy": 1.0, "on_recall": 1.0, "off_recall": 1.0}
    assert r["d"]["accuracy"] == 0.5 and r["d"]["on_recall"] == 0.5 and r["d"]["off_recall"] == 0.5
    assert r["either"]["accuracy"] == 0.75                 # frame 2 said on by d
    assert (r["frames"], r["on_frames"], r["off_frames"]) == (4, 2, 2)


def test_refuses_what_it_cannot_score():
    with pytest.raises(ValueError, match="same non-zero number"):
        onscreen_accuracy(np.ones(2), np.ones(3), np.ones(2), np.ones(2, bool))
    with pytest.raises(ValueError, match="no non-matching pair"):
        onscreen_accuracy(np.ones(2), np.ones(2), np.full(2, np.nan), np.ones(2, bool))
