"""The field's localisation protocols inside the report (avdet.report.scores.localisation_protocols), on a hand-made
16 × 16 evaluation COCO whose answers are worked out in the comments."""
import numpy as np
import pytest

from avdet.report.scores import localisation_protocols, localisation_scores

MAPPING = [1, 0]        # cluster 0 -> class 1, cluster 1 -> class 0; detector label l is cluster l - 1


def _coco():
    anns = [  # (image, class, sounding, xywh, annotator)
        (1, 0, True, [0, 0, 8, 8], None),                                   # single source
        (2, 0, True, [0, 0, 8, 8], None), (2, 1, False, [8, 8, 8, 8], None),  # multi source: class 1 silent
        (3, 0, True, [0, 0, 8, 8], 0), (3, 0, True, [0, 0, 16, 8], 1),       # Flickr: two annotators
    ]
    out = []
    for n, (i, c, s, b, a) in enumerate(anns):
        ann = {"id": n + 1, "image_id": i, "category_id": c + 1, "bbox": b, "sounding": s}
        if a is not None:
            ann["annotator"] = a
        out.append(ann)
    return {"images": [{"id": i, "width": 16, "height": 16} for i in (1, 2, 3)], "annotations": out,
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}


def _predictions():
    return {1: {"boxes": np.array([[0, 0, 8, 4], [8, 8, 16, 16]]), "scores": np.array([0.9, 0.2]),
                "labels": np.array([2, 2])},                      # IoU 32/64 = 0.5; the 0.2 box is dropped
            2: {"boxes": np.array([[0, 0, 8, 8], [8, 8, 16, 16]]), "scores": np.array([0.9, 0.8]),
                "labels": np.array([2, 1])},                      # class 0 exact; silent class 1 lit on 64 px
            3: {"boxes": np.array([[0, 0, 16, 8]]), "scores": np.array([0.9]), "labels": np.array([2])}}


def _self_boxes():
    return {"index": np.array([1, 2]), "boxes": np.array([[0, 0, 8, 8], [0, 0, 8, 8]], float),
            "confidence": np.array([0.7, 0.7]), "pseudo": np.array([1, 0])}   # image 2's box says class 1


def test_protocols_known_answers():
    r = localisation_protocols(_coco(), _predictions(), _self_boxes(), 0.5, MAPPING)
    single = r["dsol_single_source"]
    assert single["detector"]["mean_iou"] == pytest.approx(0.5) and single["detector"]["iou_50"] == 1.0
    assert single["self_boxes"]["mean_iou"] == pytest.approx(1.0)
    assert single["whole_image"]["mean_iou"] == pytest.approx(64 / 256) and single["whole_image"]["iou_50"] == 0.0
    multi = r["dsol_multi_source"]
    assert multi["detector"]["mean_ciou"] == pytest.approx(1.0) and multi["detector"]["nsa"] == pytest.approx(0.75)
    # the self-box names class 1 (silent) at class 0's place: CIoU 0, and class 1 lit on 64 of 256 px
    assert multi["self_boxes"]["mean_ciou"] == 0.0 and multi["self_boxes"]["nsa"] == pytest.approx(0.75)
    assert "whole_image" not in multi
    # consensus: top-left 8x8 = 1, top-right 8x8 = 0.5 (Σ = 96); the detector's 16x8 box: 96 / (96 + 0)
    flickr = r["flickr"]
    assert flickr["detector"]["mean_ciou"] == pytest.approx(1.0)
    assert flickr["whole_image"]["mean_ciou"] == pytest.approx(96 / (96 + 128))
    assert flickr["self_boxes"]["mean_ciou"] == 0.0 and flickr["detector"]["num_samples"] == 1


def test_table2_ground_truth_is_the_consensus_where_annotators_exist():
    res = localisation_scores(_coco(), _predictions(), _self_boxes(), 0.5)
    assert res["methods"]["detector"]["num_samples"] == 3
    # cIoU per image: 1: 32/64 = 0.5; 2: the union of both detector boxes vs the sounding box: 64/(64+64) = 0.5;
    # 3: consensus, 1.0
    assert res["methods"]["detector"]["mean_ciou"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)


def test_protocols_without_detector_or_frames():
    r = localisation_protocols(_coco(), None, _self_boxes(), 0.5, MAPPING)
    assert "detector" not in r["dsol_single_source"]
    empty = {"images": [{"id": 1, "width": 4, "height": 4}], "annotations": [], "categories": []}
    assert localisation_protocols(empty, None, {"index": [], "boxes": np.zeros((0, 4)), "confidence": [],
                                                "pseudo": []}, 0.5, MAPPING) == {"threshold": 0.5}
