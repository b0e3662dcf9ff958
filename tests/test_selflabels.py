import math

import pytest
import torch

from avdet.config import SelfLabelConfig
from avdet.selflabels import peakiness, self_labels


def _inputs():
    hm = torch.zeros(2, 4, 4)
    hm[0, 1, 2] = 3.0            # peaked heatmap
    vis = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])
    aud = torch.tensor([[0.0, 1.0, 3.0], [1.0, 0.0, 0.0]])  # sum: [0,3,3] (tie -> 1), [2,0,0]
    return hm, vis, aud


def test_class_box_score_and_confidence():
    hm, vis, aud = _inputs()
    out = self_labels(hm, vis, aud, SelfLabelConfig(beta=0.5, upsample=False), (32, 32))
    assert [r["index"] for r in out] == [0, 1]
    first, second = out
    assert first["cls"] == 1 and second["cls"] == 0
    assert first["box"] == [16.0, 8.0, 24.0, 16.0]
    assert first["score"] == pytest.approx(3.0)
    # one peak among 16 cells: (max − mean)/std = (3 − 3/16)/sqrt(9/16 − 9/256) = sqrt(15)
    assert first["peakiness"] == pytest.approx(math.sqrt(15))
    p = math.exp(3) / (1 + 2 * math.exp(3))
    assert first["confidence"] == pytest.approx(p * (1 - math.exp(-math.sqrt(15) / 2.0)))
    # flat heatmap: no peak -> confidence 0
    assert second["peakiness"] == 0.0 and second["confidence"] == 0.0


def test_filtering_by_min_confidence():
    hm, vis, aud = _inputs()
    out = self_labels(hm, vis, aud, SelfLabelConfig(min_confidence=0.1), (32, 32))
    assert [r["index"] for r in out] == [0]


def test_peakiness_shape():
    assert peakiness(torch.randn(5, 3, 3)).shape == (5,)


def test_config_checks_new_fields():
    from avdet.config import ConfigError, load_config
    cfg = load_config(SelfLabelConfig, overrides=["peakiness_scale=1.5", "upsample=false"])
    assert cfg.peakiness_scale == 1.5 and cfg.upsample is False
    with pytest.raises(ConfigError, match="peakiness_scale"):
        load_config(SelfLabelConfig, overrides=["peakiness_scale=0"])


def test_class_agnostic_self_labels_are_class_zero_with_the_peakiness_confidence():
    """No classifiers (a class-agnostic localiser): every frame is class 0 with p(y*) = 1, so the confidence is the
    peakiness term alone; the boxes are those of the class-aware call."""
    hm, vis, aud = _inputs()
    cfg = SelfLabelConfig(beta=0.5, upsample=False)
    out = self_labels(hm, None, None, cfg, (32, 32))
    assert [r["cls"] for r in out] == [0, 0]
    assert out[0]["confidence"] == pytest.approx(1 - math.exp(-math.sqrt(15) / 2.0))
    assert out[1]["confidence"] == 0.0
    assert [r["box"] for r in out] == [r["box"] for r in self_labels(hm, vis, aud, cfg, (32, 32))]
    with pytest.raises(ValueError, match="both"):
        self_labels(hm, vis, None, cfg, (32, 32))
