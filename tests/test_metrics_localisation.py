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


# ---- the field's protocols (BASELINES.md): hand-computed answers -------------------------------------------------

from avdet.metrics.localisation import (choose_score_threshold, class_aware_ciou, class_box_maps,  # noqa: E402
                                        consensus_map, dsol_multi_source, dsol_single_source, flickr_protocol, nsa,
                                        success_auc, success_ratio)


def _trapezoid(curve):
    return sum((a + b) / 2 * 0.05 for a, b in zip(curve[:-1], curve[1:]))


def test_consensus_map_flickr_rule():
    # annotator A: top-left 2x2; B: top two rows; C: bottom-right 2x2 (4x4 image)
    g = consensus_map([[[0, 0, 2, 2]], [[0, 0, 4, 2]], [[2, 2, 4, 4]]], 4, 4)
    expected = np.zeros((4, 4))
    expected[0:2, 0:2] = 1.0          # 2 annotators / 2
    expected[0:2, 2:4] = 0.5          # B only
    expected[2:4, 2:4] = 0.5          # C only
    assert np.array_equal(g, expected)
    # one annotator's two overlapping boxes count once: the overlap pixel is 1/2, not 2/2
    g = consensus_map([[[0, 0, 2, 2], [1, 1, 3, 3]]], 4, 4)
    assert g[1, 1] == 0.5 and g.sum() == pytest.approx(7 * 0.5)
    with pytest.raises(ValueError):
        consensus_map([], 4, 4, divisor=0)


def test_flickr_protocol_known_answer():
    g = consensus_map([[[0, 0, 2, 2]], [[0, 0, 4, 2]], [[2, 2, 4, 4]]], 4, 4)     # Σgt = 4·1 + 8·0.5 = 8
    top_left, whole, top_rows = np.zeros((4, 4)), np.ones((4, 4)), np.zeros((4, 4))
    top_left[0:2, 0:2] = 1             # 4 / (8 + 0) = 0.5
    top_rows[0:2, :] = 1               # (4 + 2) / (8 + 0) = 0.75;  whole: 8 / (8 + 4) = 2/3
    r = flickr_protocol([top_left, whole, top_rows], [g, g, g])
    assert r["mean_ciou"] == pytest.approx((0.5 + 2 / 3 + 0.75) / 3)
    assert r["ciou_50"] == pytest.approx(1.0)
    # success: t <= 0.5 -> 1 (11 pts), 0.55..0.65 -> 2/3 (3), 0.7..0.75 -> 1/3 (2), 0.8..1 -> 0 (5)
    curve = [1.0] * 11 + [2 / 3] * 3 + [1 / 3] * 2 + [0.0] * 5
    assert r["auc"] == pytest.approx(_trapezoid(curve))
    assert success_ratio([0.5, 2 / 3, 0.75], 0.7) == pytest.approx(1 / 3)
    assert success_auc([0.5, 2 / 3, 0.75]) == pytest.approx(r["auc"])


def test_dsol_single_source_known_answer():
    gt = np.zeros((8, 8))
    gt[0:4, 0:4] = 1                   # 16 px
    half, shifted = np.zeros((8, 8)), np.zeros((8, 8))
    half[0:4, 0:2] = 1                 # IoU 8/16 = 0.5
    shifted[0:4, 2:6] = 1              # IoU 8/24 = 1/3
    r = dsol_single_source([half, shifted, gt.copy()], [gt, gt, gt])
    assert r["iou_50"] == pytest.approx(2 / 3) and r["mean_iou"] == pytest.approx((0.5 + 1 / 3 + 1) / 3)
    # success: t <= 0.3 -> 1 (7 pts), 0.35..0.5 -> 2/3 (4), 0.55..1 -> 1/3 (10)
    assert r["auc"] == pytest.approx(_trapezoid([1.0] * 7 + [2 / 3] * 4 + [1 / 3] * 10))


def test_dsol_multi_source_class_aware_ciou_and_nsa():
    def box(r0, r1, c0, c1):
        m = np.zeros((8, 8))
        m[r0:r1, c0:c1] = 1
        return m
    s1 = {"gt": {0: box(0, 4, 0, 4), 1: box(4, 8, 4, 8), 2: box(0, 2, 6, 8)},
          "pred": {0: box(0, 4, 0, 4), 1: box(4, 8, 6, 8), 2: box(4, 8, 0, 4)},   # IoU 1, 0.5; silent 2: 16 px on
          "sounding": [0, 1], "silent": [2]}
    s2 = {"gt": {0: box(0, 8, 0, 4), 1: box(0, 4, 4, 8), 2: box(4, 8, 4, 8)},
          "pred": {2: np.ones((8, 8))},                                          # class 0 missed: IoU 0
          "sounding": [0], "silent": [1, 2]}                                     # 1: no map (all silent); 2: none
    assert class_aware_ciou(s1["pred"], s1["gt"], s1["sounding"]) == pytest.approx(0.75)
    assert class_aware_ciou(s2["pred"], s2["gt"], s2["sounding"]) == 0.0
    assert class_aware_ciou({}, {}, []) is None
    assert nsa(s1["pred"], [2], 8, 8) == pytest.approx(48 / 64)
    assert nsa(s2["pred"], [1, 2], 8, 8) == pytest.approx((64 + 0) / 128)
    r = dsol_multi_source([s1, s2])
    assert r["ciou_30"] == pytest.approx(0.5) and r["mean_ciou"] == pytest.approx(0.375)
    assert r["nsa"] == pytest.approx((0.75 + 0.5) / 2) and r["num_nsa_samples"] == 2
    # cIoU 0.75 and 0: success 1 at t = 0, 1/2 for 0.05..0.75 (15 pts), 0 after (5)
    assert r["auc"] == pytest.approx(_trapezoid([1.0] + [0.5] * 15 + [0.0] * 5))


def test_class_box_maps_threshold_and_classes():
    maps = class_box_maps([[0, 0, 2, 2], [2, 2, 4, 4], [0, 2, 2, 4], [1, 1, 3, 3]], [0.9, 0.8, 0.2, 0.9],
                          [0, 1, 1, -1], 0.5, 4, 4)
    assert sorted(maps) == [0, 1]                     # the 0.2 box is below the threshold; class -1 is unmatched
    assert maps[0][0:2, 0:2].sum() == 4 and maps[0].sum() == 4 and maps[1][2:4, 2:4].sum() == 4 == maps[1].sum()


def test_choose_score_threshold_on_training_targets():
    target = np.zeros((4, 4))
    target[0:2, 0:2] = 1
    frame1 = (np.array([[0, 0, 2, 2], [2, 2, 4, 4]]), np.array([0.7, 0.3]))   # t <= 0.3: 0.5; <= 0.7: 1; else 0
    frame2 = (np.array([[0, 0, 2, 2]]), np.array([0.5]))                      # t <= 0.5: 1; else 0
    # mean cIoU: t <= 0.3 -> 0.75, 0.35..0.5 -> 1, 0.55..0.7 -> 0.5: best 1 from t = 0.35 (the lowest of the ties)
    assert choose_score_threshold([frame1, frame2], [target, target]) == pytest.approx(0.35)
    assert choose_score_threshold([frame1], [target], grid=[0.1, 0.8]) == pytest.approx(0.1)
