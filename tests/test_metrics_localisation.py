import numpy as np
import pytest

from avdet.metrics.localisation import (boxes_to_map, ciou, localisation_metrics, map_iou, success_curve,
                                        whole_image_maps)


def test_boxes_to_map_thresholds_and_union():
    m = boxes_to_map([[0, 0, 2, 2], [3, 3, 5, 4], [0, 0, 5, 5]], [0.9, 0.6, 0.1], 0.5, 4, 6)
    expected = np.zeros((4, 6), np.float32)
    expected[0:2, 0:2] = 1
    expected[3:4, 3:5] = 1
    assert np.array_equal(m, expected)
    assert boxes_to_map([[0.4, 0.6, 1.6, 2.4]], None, 0.0, 4, 4).sum() == 2  # pixels whose centres are inside


def test_ciou_hand_case():
    gt = np.zeros((4, 4))
    gt[0:2, 0:2] = 1.0                     # 4 px
    pred = np.zeros((4, 4))
    pred[0:2, 0:3] = 1.0                   # 6 px, 4 on gt, 2 off
    assert ciou(pred, gt) == pytest.approx(4 / (4 + 2))
    assert map_iou(pred, gt) == pytest.approx(4 / 6)
    soft = gt * 0.5                        # consensus map: half the annotators
    assert ciou(pred, soft) == pytest.approx(2 / (2 + 2))
    assert ciou(np.zeros((2, 2)), np.zeros((2, 2))) == 0.0
    with pytest.raises(ValueError):
        ciou(np.zeros((2, 2)), np.zeros((3, 3)))


def test_metrics_and_auc():
    gt = np.zeros((10, 10))
    gt[:, :5] = 1.0
    half = gt.copy()                        # cIoU 1
    quarter = np.zeros((10, 10))
    quarter[:, :1] = 1.0                    # cIoU 0.2, IoU 0.2
    whole = np.ones((10, 10))               # cIoU 0.5, IoU 0.5
    r = localisation_metrics([half, quarter, whole], [gt, gt, gt])
    assert r["ciou_30"] == pytest.approx(2 / 3)
    assert r["iou50_success"] == pytest.approx(2 / 3)
    # success curve: t <= 0.2 -> 1 (5 points), 0.25..0.5 -> 2/3 (6 points), 0.55..1 -> 1/3 (10 points)
    curve = success_curve(np.array([1.0, 0.2, 0.5]))
    assert curve[:5] == pytest.approx([1.0] * 5) and curve[5:11] == pytest.approx([2 / 3] * 6)
    assert curve[11:] == pytest.approx([1 / 3] * 10)
    # trapezoids of width 0.05: 4·1 + (1+2/3)/2 + 5·2/3 + (2/3+1/3)/2 + 9·1/3
    expected = 0.05 * (4 + 5 / 6 + 10 / 3 + 0.5 + 3)
    assert r["auc"] == pytest.approx(expected)
    assert r["mean_ciou"] == pytest.approx((1.0 + 0.2 + 0.5) / 3)


def test_whole_image_baseline():
    gts = [np.pad(np.ones((5, 5)), ((0, 5), (0, 5))), np.ones((3, 4))]
    preds = whole_image_maps(gts)
    assert [p.shape for p in preds] == [(10, 10), (3, 4)]
    r = localisation_metrics(preds, gts)
    assert r["ciou_30"] == pytest.approx(0.5)      # cIoU 0.25 and 1.0
