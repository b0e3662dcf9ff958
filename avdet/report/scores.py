"""The numbers of the evaluation report, from plain arrays and dicts (METHOD.md §5, paper §4).

Conventions shared with ``distributed.evaluation.evaluate``:

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
from avdet.metrics.localisation import (class_box_maps, consensus_map, dsol_multi_source, dsol_single_source,
                                        flickr_protocol)

__all__ = ["matchings", "mapped_detections", "named", "class_agnostic", "agnostic_scores", "box_detections",
           "detection_baselines", "localisation_scores", "localisation_protocols", "cluster_scores",
           "self_label_accuracy"]


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


def _objects(coco: dict) -> dict[int, list[dict]]:
    """{image_id: [{"cls", "sounding", "box" xyxy, "annotator" (or None)}]} for every evaluated image."""
    out: dict[int, list[dict]] = {im["id"]: [] for im in coco["images"]}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        out.setdefault(a["image_id"], []).append({"cls": int(a["category_id"]) - 1, "sounding": a.get("sounding", True),
                                                  "box": [x, y, x + w, y + h], "annotator": a.get("annotator")})
    return out


def _sounding_map(objs: list[dict], H: int, W: int) -> np.ndarray:
    """The localisation ground truth of one image: the annotators' consensus map (:func:`consensus_map`) when its
    boxes carry annotator ids (Flickr-SoundNet), else the union of its sounding boxes."""
    objs = [o for o in objs if o["sounding"]]
    if objs and all(o["annotator"] is not None for o in objs):
        by: dict[int, list] = {}
        for o in objs:
            by.setdefault(int(o["annotator"]), []).append(o["box"])
        return consensus_map(list(by.values()), H, W)
    return boxes_to_map([o["box"] for o in objs], None, 0.0, H, W)


def _gt_maps(coco: dict) -> dict[int, np.ndarray]:
    """{image_id: localisation ground-truth map (:func:`_sounding_map`)} for the images with a sounding object."""
    size = {im["id"]: (im["height"], im["width"]) for im in coco["images"]}
    return {i: _sounding_map(objs, *size[i]) for i, objs in _objects(coco).items()
            if any(o["sounding"] for o in objs)}


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


def _method_boxes(predictions: dict | None, self_boxes: dict, mapping, threshold: float) -> dict[str, dict]:
    """{method: {image_id: (boxes (n, 4), scores (n,), classes (n,))}} with boxes kept from ``threshold`` on (the
    detector) or all of them (self-boxes); classes through the cluster → class ``mapping`` (−1 unmatched)."""
    mp = np.asarray(mapping, np.int64)
    out: dict[str, dict] = {"self_boxes": {}}
    for i, b, k in zip(self_boxes["index"], np.asarray(self_boxes["boxes"]).reshape(-1, 4), self_boxes["pseudo"]):
        out["self_boxes"].setdefault(int(i), []).append((b, 1.0, int(mp[int(k)]) if 0 <= k < len(mp) else -1))
    out["self_boxes"] = {i: tuple(np.array(v) for v in zip(*rows)) for i, rows in out["self_boxes"].items()}
    if predictions is not None:
        det = {}
        for i, p in predictions.items():
            keep = np.asarray(p["scores"]) >= threshold
            pseudo = np.asarray(p["labels"], np.int64)[keep] - 1
            cls = np.where((pseudo >= 0) & (pseudo < len(mp)), mp[np.clip(pseudo, 0, len(mp) - 1)], -1)
            det[int(i)] = (np.asarray(p["boxes"]).reshape(-1, 4)[keep], np.asarray(p["scores"])[keep], cls)
        out["detector"] = det
    return out


def localisation_protocols(coco: dict, predictions: dict | None, self_boxes: dict, threshold: float,
                           mapping) -> dict:
    """The field's localisation protocols (BASELINES.md, :mod:`avdet.metrics.localisation`) on the evaluated frames:

    - ``"dsol_single_source"``: frames with exactly one object, sounding; IoU@0.5 / AUC, class-agnostic (methods
      ``whole_image``, ``self_boxes``, ``detector``).
    - ``"dsol_multi_source"``: frames with two or more objects; class-aware CIoU@0.3 / AUC / NSA with the classes
      through ``mapping`` (Hungarian): sounding classes = those with a sounding object, silent = those present with
      none sounding (methods ``self_boxes``, ``detector``; a whole-image guess has no class).
    - ``"flickr"``: frames whose boxes carry annotator ids; consensus-map cIoU@0.5 / AUC.
    A protocol without frames is left out. The detector keeps boxes scoring ≥ ``threshold``; self-boxes all count.
    """
    size = {im["id"]: (im["height"], im["width"]) for im in coco["images"]}
    objects = _objects(coco)
    boxes = _method_boxes(predictions, self_boxes, mapping, threshold)
    empty = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))
    single = sorted(i for i, o in objects.items() if len(o) == 1 and o[0]["sounding"] and o[0]["annotator"] is None)
    multi = sorted(i for i, o in objects.items() if len(o) >= 2 and all(x["annotator"] is None for x in o))
    flickr = sorted(i for i, o in objects.items() if o and all(x["annotator"] is not None for x in o))
    out = {"threshold": threshold}
    for name, ids, agnostic in (("dsol_single_source", single, True), ("flickr", flickr, True),
                                ("dsol_multi_source", multi, False)):
        if not ids:
            continue
        gts = [_sounding_map(objects[i], *size[i]) for i in ids]
        res = {}
        if agnostic:
            score = dsol_single_source if name == "dsol_single_source" else flickr_protocol
            res["whole_image"] = score(whole_image_maps(gts), gts)
            for m, per in boxes.items():
                res[m] = score([boxes_to_map(per.get(i, empty)[0], None, 0.0, *size[i]) for i in ids], gts)
        else:
            for m, per in boxes.items():
                samples = []
                for i in ids:
                    H, W = size[i]
                    b, sc, cl = per.get(i, empty)
                    objs = objects[i]
                    sounding = {o["cls"] for o in objs if o["sounding"]}
                    samples.append({"pred": class_box_maps(b, sc, cl, -np.inf, H, W),
                                    "gt": {k: boxes_to_map([o["box"] for o in objs if o["cls"] == k and o["sounding"]],
                                                           None, 0.0, H, W) for k in sounding},
                                    "sounding": sorted(sounding),
                                    "silent": sorted({o["cls"] for o in objs} - sounding)})
                if any(s["sounding"] for s in samples):
                    res[m] = dsol_multi_source(samples)
        if res:
            out[name] = res
    return out


def cluster_scores(pseudo, true, K: int, C: int) -> tuple[dict, np.ndarray]:
    """NMI / ARI / Hungarian acc. / purity of the labelled rows (``true >= 0``), their count ``n``, and the (K, C)
    confusion counts."""
    pseudo, true = np.asarray(pseudo, np.int64), np.asarray(true, np.int64)
    keep = true >= 0
    counts = confusion(pseudo[keep], true[keep], K, C)
    if not keep.any():
        return {"nmi": 0.0, "ari": 0.0, "hungarian_acc": 0.0, "purity": 0.0, "n": 0}, counts
    return dict(cluster_metrics(pseudo[keep], true[keep]), n=int(keep.sum())), counts
