"""The numbers of the evaluation report, from plain arrays and dicts (METHOD.md §5, paper §4).

Conventions shared with ``distributed.evaluate``:

- classes ``c`` in [0, C); the evaluation COCO's ``category_id`` is ``c + 1``; images are test frames, boxes in
  frame pixels.
- predictions: ``{image_id: {"boxes": (n, 4) xyxy, "scores": (n,), "labels": (n,) detector labels}}`` with detector
  label ``l`` = pseudo-class ``l − 1``.
- a mapping is (K,) int64 cluster → class, −1 = unmatched (its detections are dropped).
"""
from __future__ import annotations

import copy
from typing import Sequence

import numpy as np

from avdet.matching import apply_mapping, confusion, hungarian, m_shot, majority, per_video
from avdet.metrics import (boxes_to_map, centre_box_detections, cluster_metrics, evaluate_detections,
                           localisation_metrics, predictions_to_detections, whole_image_detections, whole_image_maps)

__all__ = ["matchings", "mapped_detections", "named", "class_agnostic", "agnostic_scores", "box_detections",
           "detection_baselines", "localisation_scores", "cluster_scores", "self_label_accuracy"]


def matchings(pseudo, true, confidence, K: int, C: int, m_shots: Sequence[int] = (1, 10), videos=None,
              reduce: str = "mean") -> dict[str, dict]:
    """Cluster → class mappings from labelled self-labels: ``{"hungarian" | "argmax" | "<m>-shot":
    {"mapping": [K ints], "num_labels": true labels used, "num_matched": clusters with a class}}``; the m-shot
    entries also carry ``"unit"``: "video" (``videos`` given: the top-m videos per cluster, each video's confidence
    the ``reduce`` of its frames', :func:`avdet.matching.per_video`) or "frame"."""
    pseudo, true = np.asarray(pseudo, np.int64), np.asarray(true, np.int64)
    out = {"hungarian": (hungarian(pseudo, true, K, C), len(true)), "argmax": (majority(pseudo, true, K, C), len(true))}
    unit_pseudo = pseudo if videos is None else per_video(pseudo, true, confidence, videos, reduce)[0]
    sizes = np.bincount(unit_pseudo, minlength=K)
    for m in m_shots:
        out[f"{m}-shot"] = (m_shot(pseudo, true, confidence, K, C, m, videos, reduce), int(np.minimum(sizes, m).sum()))
    res = {k: {"mapping": [int(v) for v in mp], "num_labels": int(n), "num_matched": int((mp >= 0).sum())}
           for k, (mp, n) in out.items()}
    for m in m_shots:
        res[f"{m}-shot"]["unit"] = "frame" if videos is None else "video"
    return res


def self_label_accuracy(mapping, pseudo, true) -> float:
    """Fraction of labelled frames whose cluster's class (through ``mapping``) is their true class."""
    true = np.asarray(true, np.int64)
    keep = true >= 0
    if not keep.any():
        return 0.0
    return float((apply_mapping(mapping, np.asarray(pseudo)[keep]) == true[keep]).mean())


def mapped_detections(predictions: dict, mapping: Sequence[int] | None) -> list[dict]:
    """COCO detections with ``category_id`` = mapping[label − 1] + 1 (unmatched dropped); ``mapping=None`` makes
    every detection category 1 (class-agnostic)."""
    mp = None if mapping is None else np.asarray(mapping, np.int64)
    dets = []
    for image_id, p in predictions.items():
        labels = np.asarray(p["labels"], np.int64)
        if mp is None:
            cats = np.ones_like(labels)
        else:
            valid = (labels >= 1) & (labels <= len(mp))
            cats = np.where(valid, mp[np.clip(labels - 1, 0, len(mp) - 1)] + 1, -1)
            cats[cats == 0] = -1  # mapping −1 -> category 0 -> dropped
        dets += predictions_to_detections(image_id, p["boxes"], p["scores"], cats)
    return dets


def named(metrics: dict, classes: Sequence[str]) -> dict:
    """``evaluate_detections`` output with ``ap50_per_class`` keyed by class name (None: no test object)."""
    out = dict(metrics)
    per = metrics.get("ap50_per_class", {})
    out["ap50_per_class"] = {name: (float(per[c + 1]) if (c + 1) in per else None) for c, name in enumerate(classes)}
    return out


def class_agnostic(coco: dict) -> dict:
    """The same ground truth with every object in one category (id 1, "object")."""
    gt = copy.deepcopy(coco)
    for a in gt["annotations"]:
        a["category_id"] = 1
    gt["categories"] = [{"id": 1, "name": "object"}]
    return gt


def agnostic_scores(coco: dict, detections: Sequence[dict], iou_thresholds=(0.3, 0.5, 0.75)) -> dict:
    """Class-agnostic mAP@thresholds (the paper's * rows): ground truth and detections merged into one class."""
    dets = [dict(d, category_id=1) for d in detections]
    out = evaluate_detections(class_agnostic(coco), dets, iou_thresholds)
    out.pop("ap50_per_class", None)
    return out


def box_detections(index, boxes, scores, class_ids) -> list[dict]:
    """One detection per row: frame ``index``, xyxy box, score, class id (category = class + 1; < 0 dropped)."""
    cats = np.asarray(class_ids, np.int64)
    cats = np.where(cats >= 0, cats + 1, -1)
    dets = []
    for i, b, s, c in zip(index, np.asarray(boxes).reshape(-1, 4), scores, cats):
        dets += predictions_to_detections(int(i), [b], [s], [c])
    return dets


def detection_baselines(coco: dict, classes: Sequence[str], self_boxes: dict, hungarian_mapping,
                        frame_labels: dict[int, int], centre_frac: float) -> dict:
    """Table 1's other rows on the same test set.

    Args:
        self_boxes: ``{"index": (N,), "boxes": (N, 4), "confidence": (N,), "pseudo": (N,)}`` of the test frames.
        frame_labels: {image_id: true video class or −1} (for the weak-sup. row).
    Returns ``{"centre_box", "whole_image", "self_boxes"}`` (class-agnostic), ``"self_boxes_hungarian"`` and
    ``"weak_sup"`` (class-aware, per class by name).
    """
    agn = class_agnostic(coco)
    idx, boxes, conf = self_boxes["index"], self_boxes["boxes"], self_boxes["confidence"]
    matched = apply_mapping(hungarian_mapping, self_boxes["pseudo"])
    truth = np.array([frame_labels.get(int(i), -1) for i in idx], np.int64)
    return {
        "centre_box": agnostic_scores(coco, centre_box_detections(agn, centre_frac, category_ids=[1])),
        "whole_image": agnostic_scores(coco, whole_image_detections(agn, category_ids=[1])),
        "self_boxes": agnostic_scores(coco, box_detections(idx, boxes, conf, np.zeros(len(idx), np.int64))),
        "self_boxes_hungarian": named(evaluate_detections(coco, box_detections(idx, boxes, conf, matched)), classes),
        "weak_sup": named(evaluate_detections(coco, box_detections(idx, boxes, conf, truth)), classes),
    }


def _gt_maps(coco: dict) -> dict[int, np.ndarray]:
    """{image_id: union of the sounding boxes} for the images that have a sounding object."""
    size = {im["id"]: (im["height"], im["width"]) for im in coco["images"]}
    boxes: dict[int, list] = {}
    for a in coco["annotations"]:
        if a.get("sounding", True):
            x, y, w, h = a["bbox"]
            boxes.setdefault(a["image_id"], []).append([x, y, x + w, y + h])
    return {i: boxes_to_map(b, None, 0.0, *size[i]) for i, b in boxes.items()}


def localisation_scores(coco: dict, predictions: dict | None, self_boxes: dict, threshold: float) -> dict:
    """Table 2: ``{"threshold", "methods": {"whole_image", "self_boxes", "detector"?: localisation_metrics}}`` on the
    frames with a sounding object. Detector: union of its boxes with score ≥ threshold; self-boxes: the frame's
    self-box (any confidence)."""
    gt = _gt_maps(coco)
    ids = sorted(gt)
    if not ids:
        return {"threshold": threshold, "methods": {}}
    gts = [gt[i] for i in ids]
    H, W = gts[0].shape
    sb: dict[int, list] = {}
    for i, b in zip(self_boxes["index"], np.asarray(self_boxes["boxes"]).reshape(-1, 4)):
        sb.setdefault(int(i), []).append(b)
    methods = {"whole_image": localisation_metrics(whole_image_maps(gts), gts),
               "self_boxes": localisation_metrics([boxes_to_map(sb.get(i, []), None, 0.0, H, W) for i in ids], gts)}
    if predictions is not None:
        empty = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0)}
        maps = [boxes_to_map(predictions.get(i, empty)["boxes"], predictions.get(i, empty)["scores"], threshold, H, W)
                for i in ids]
        methods["detector"] = localisation_metrics(maps, gts)
    return {"threshold": threshold, "methods": methods}


def cluster_scores(pseudo, true, K: int, C: int) -> tuple[dict, np.ndarray]:
    """NMI / ARI / Hungarian acc. / purity of the labelled rows (``true >= 0``), their count ``n``, and the (K, C)
    confusion counts."""
    pseudo, true = np.asarray(pseudo, np.int64), np.asarray(true, np.int64)
    keep = true >= 0
    counts = confusion(pseudo[keep], true[keep], K, C)
    if not keep.any():
        return {"nmi": 0.0, "ari": 0.0, "hungarian_acc": 0.0, "purity": 0.0, "n": 0}, counts
    return dict(cluster_metrics(pseudo[keep], true[keep]), n=int(keep.sum())), counts
