import pytest

from avdet.metrics.detection import (centre_box_detections, evaluate_detections, predictions_to_detections,
                                     whole_image_detections)


def _gt():
    images = [{"id": i, "width": 100, "height": 100} for i in (1, 2, 3)]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40]},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [50, 50, 30, 30]},
            {"id": 3, "image_id": 3, "category_id": 2, "bbox": [0, 0, 50, 50]}]
    return {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "unused"}]}


def _det(image_id, cat, bbox, score):
    return {"image_id": image_id, "category_id": cat, "bbox": bbox, "score": score}


def test_hand_computed_ap():
    dets = [_det(1, 1, [10, 10, 40, 40], 0.9),     # TP
            _det(3, 1, [60, 60, 20, 20], 0.8),     # FP (no overlap with anything)
            _det(2, 1, [50, 50, 30, 30], 0.7),     # TP
            _det(3, 2, [0, 0, 50, 50], 0.95)]      # TP, the only box of category 2
    r = evaluate_detections(_gt(), dets)
    # category 1 (2 GT): precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> interpolated (max to the right) 1, 2/3, 2/3.
    # 101 recall points 0, .01, ..., 1: the 51 points r <= 0.5 read precision 1, the 50 points r > 0.5 read 2/3.
    ap1 = (51 * 1.0 + 50 * (2 / 3)) / 101
    assert r["ap50_per_class"] == pytest.approx({1: ap1, 2: 1.0})   # category 3 has no GT: not reported
    assert r["map_50"] == pytest.approx((ap1 + 1.0) / 2)
    assert r["map_30"] == pytest.approx((ap1 + 1.0) / 2)
    assert r["map_50_95"] == pytest.approx((ap1 + 1.0) / 2)        # boxes are exact: same at every threshold
    # class-agnostic (3 GT): scores .95 TP, .9 TP, .8 FP, .7 TP -> precision 1, 1, 2/3, 3/4; recall 1/3, 2/3, 2/3, 1
    # interpolated 1, 1, 3/4, 3/4: 67 points r <= 2/3 read 1, 34 points read 3/4
    assert r["ap50_class_agnostic"] == pytest.approx((67 + 34 * 0.75) / 101)
    assert r["num_detections"] == 4 and r["num_gt"] == 3


def test_custom_threshold_03():
    gt = {"images": [{"id": 1, "width": 100, "height": 100}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 40]}],
          "categories": [{"id": 1, "name": "a"}]}
    r = evaluate_detections(gt, [_det(1, 1, [0, 0, 40, 16], 0.5)])   # IoU = 640/1600 = 0.4
    assert r["map_30"] == pytest.approx(1.0)
    assert r["map_50"] == 0.0 and r["map_50_95"] == 0.0


def test_empty_and_perfect():
    gt = _gt()
    empty = evaluate_detections(gt, [])
    assert empty["map_30"] == empty["map_50"] == empty["map_50_95"] == empty["ap50_class_agnostic"] == 0.0
    assert empty["ap50_per_class"] == {1: 0.0, 2: 0.0}
    perfect = [_det(a["image_id"], a["category_id"], a["bbox"], 1.0) for a in gt["annotations"]]
    r = evaluate_detections(gt, perfect)
    assert r["map_30"] == r["map_50"] == r["map_75"] == r["map_50_95"] == pytest.approx(1.0)
    assert r["ap50_class_agnostic"] == pytest.approx(1.0)
    assert gt == _gt()   # inputs untouched


def test_unknown_image_raises():
    with pytest.raises(ValueError, match="image_id 9"):
        evaluate_detections(_gt(), [_det(9, 1, [0, 0, 1, 1], 1.0)])


def test_baselines():
    gt = _gt()
    centre = centre_box_detections(gt, frac=0.5, category_ids=[1])
    assert len(centre) == 3 and centre[0]["bbox"] == [25.0, 25.0, 50.0, 50.0]
    whole = whole_image_detections(gt, class_predictions={1: 1, 3: [2, 1]})
    assert [(d["image_id"], d["category_id"]) for d in whole] == [(1, 1), (3, 2), (3, 1)]
    assert whole[0]["bbox"] == [0.0, 0.0, 100.0, 100.0]
    assert len(whole_image_detections(gt)) == 9      # every image × every category
    assert 0.0 <= evaluate_detections(gt, centre)["map_30"] <= 1.0


def test_predictions_to_detections():
    dets = predictions_to_detections(4, [[1, 2, 11, 22], [0, 0, 5, 5]], [0.9, 0.1], [3, -1])
    assert dets == [{"image_id": 4, "category_id": 3, "bbox": [1.0, 2.0, 10.0, 20.0], "score": 0.9}]
