"""COCO-style detection metrics with pycocotools, including IoU thresholds COCO does not report (0.3).

``evaluate_detections`` runs ``COCOeval`` (bbox) once with ``params.iouThrs`` = the requested thresholds ∪ the ten
COCO thresholds 0.50:0.05:0.95. COCOeval matches every threshold independently, so one run with extra thresholds
gives exactly what a separate run per threshold would. AP at one threshold is COCO's 101-point interpolated AP
(area range "all", maxDets = ``max_dets``), averaged over the categories that have ground truth. A second run with
every category mapped to 1 (in ground truth and detections) gives the class-agnostic AP@0.5.

Detections: ``{"image_id": int, "category_id": int, "bbox": [x, y, w, h] (pixels), "score": float}``.
Ground truth: a COCO dict (``images`` with ``width``/``height``, ``annotations``, ``categories``); missing ``area``
(→ w·h), ``iscrowd`` (→ 0) and annotation ids are filled in. pycocotools' prints are swallowed.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
from typing import Iterable, Mapping, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

log = logging.getLogger(__name__)

__all__ = ["evaluate_detections", "centre_box_detections", "whole_image_detections", "predictions_to_detections"]

COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())


def _prepare_gt(gt_coco: dict, agnostic: bool) -> dict:
    gt = copy.deepcopy(gt_coco)
    for key in ("images", "annotations", "categories"):
        if key not in gt:
            raise ValueError(f"ground-truth COCO dict has no {key!r}")
    anns = gt["annotations"]
    renumber = any(a.get("id", 0) < 1 for a in anns) or len({a.get("id") for a in anns}) != len(anns)
    for i, a in enumerate(anns):
        a.setdefault("area", float(a["bbox"][2] * a["bbox"][3]))
        a.setdefault("iscrowd", 0)
        if renumber:  # COCOeval treats a matched id of 0 as "unmatched": ids must be unique and >= 1
            a["id"] = i + 1
        if agnostic:
            a["category_id"] = 1
    if agnostic:
        gt["categories"] = [{"id": 1, "name": "object"}]
    return gt


def _precision(gt: dict, dets: list[dict], iou_thrs: np.ndarray, max_dets: int) -> tuple[np.ndarray, list[int]]:
    """Run COCOeval; return precision (T, R, K) at area 'all', maxDets = max_dets, and the category ids (K)."""
    with _quiet():
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.params.iouThrs = iou_thrs
        ev.params.maxDets = [1, 10, max_dets] if max_dets > 10 else [max_dets]
        ev.evaluate()
        ev.accumulate()
    return ev.eval["precision"][:, :, :, 0, -1], list(ev.params.catIds)


def _ap(precision: np.ndarray, t: int, k: int | None = None) -> float:
    """Mean of the valid (> -1) interpolated precisions at threshold index t (one category or all)."""
    p = precision[t] if k is None else precision[t, :, k]
    p = p[p > -1]  # -1 marks categories without ground truth, as in COCOeval.summarize
    return float(p.mean()) if p.size else 0.0


def _check_detections(gt: dict, detections: Iterable[dict], agnostic: bool) -> list[dict]:
    image_ids = {img["id"] for img in gt["images"]}
    cat_ids = {c["id"] for c in gt["categories"]}
    dets = []
    for d in detections:
        if d["image_id"] not in image_ids:
            raise ValueError(f"detection on image_id {d['image_id']} which is not in the ground truth")
        if not agnostic and d["category_id"] not in cat_ids:
            log.warning("detection with category_id %s not in the ground-truth categories; ignored", d["category_id"])
            continue
        dets.append({"image_id": d["image_id"], "category_id": 1 if agnostic else d["category_id"],
                     "bbox": [float(v) for v in d["bbox"]], "score": float(d["score"])})
    return dets


def _key(t: float) -> str:
    return f"map_{int(round(t * 100)):02d}"


def evaluate_detections(gt_coco: dict, detections: Sequence[dict], iou_thresholds: Sequence[float] = (0.3, 0.5, 0.75),
                        max_dets: int = 100) -> dict:
    """COCO mAP at custom IoU thresholds, per-class AP@0.5 and class-agnostic AP@0.5.

    Returns:
        ``{"map_30": .., "map_50": .., "map_75": .. (one per iou_thresholds), "map_50_95": COCO mAP,
        "ap50_per_class": {category_id: AP@0.5} (categories with ground truth only),
        "ap50_class_agnostic": AP@0.5 with all categories merged, "num_images", "num_gt", "num_detections"}``.
        With no detections every AP is 0.0.
    """
    extra = np.array([t for t in iou_thresholds if not np.isclose(COCO_IOU_THRESHOLDS, t).any()], dtype=np.float64)
    thrs = np.sort(np.concatenate([extra, COCO_IOU_THRESHOLDS, [0.5]]))
    thrs = thrs[np.concatenate([[True], ~np.isclose(np.diff(thrs), 0.0)])]
    gt = _prepare_gt(gt_coco, agnostic=False)
    dets = _check_detections(gt, detections, agnostic=False)
    gt_cats = sorted({a["category_id"] for a in gt["annotations"]})
    out = {"num_images": len(gt["images"]), "num_gt": len(gt["annotations"]), "num_detections": len(dets)}
    if not dets or not gt["annotations"]:
        out.update({_key(t): 0.0 for t in iou_thresholds})
        out.update(map_50_95=0.0, ap50_per_class={c: 0.0 for c in gt_cats}, ap50_class_agnostic=0.0)
        return out
    precision, cat_ids = _precision(gt, dets, thrs, max_dets)
    idx = {_key(t): int(np.flatnonzero(np.isclose(thrs, t))[0]) for t in list(iou_thresholds) + [0.5]}
    out.update({_key(t): _ap(precision, idx[_key(t)]) for t in iou_thresholds})
    coco = np.flatnonzero(np.isclose(thrs[:, None], COCO_IOU_THRESHOLDS[None]).any(axis=1))
    out["map_50_95"] = float(np.mean([_ap(precision, t) for t in coco]))
    out["ap50_per_class"] = {c: _ap(precision, idx["map_50"], cat_ids.index(c)) for c in gt_cats}
    agn_gt = _prepare_gt(gt_coco, agnostic=True)
    agn_precision, _ = _precision(agn_gt, _check_detections(agn_gt, dets, agnostic=True), np.array([0.5]), max_dets)
    out["ap50_class_agnostic"] = _ap(agn_precision, 0)
    return out


def _box_detections(gt_coco: dict, frac: float, category_ids: Iterable[int] | None, score: float,
                    class_predictions: Mapping[int, int | Sequence[int]] | None) -> list[dict]:
    if not 0.0 < frac <= 1.0:
        raise ValueError(f"frac={frac} must be in (0, 1]")
    cats = list(category_ids) if category_ids is not None else [c["id"] for c in gt_coco["categories"]]
    dets = []
    for img in gt_coco["images"]:
        W, H = float(img["width"]), float(img["height"])
        w, h = frac * W, frac * H
        box = [(W - w) / 2.0, (H - h) / 2.0, w, h]
        if class_predictions is None:
            img_cats = cats
        else:
            pred = class_predictions.get(img["id"], [])
            img_cats = [pred] if isinstance(pred, (int, np.integer)) else list(pred)
        dets.extend({"image_id": img["id"], "category_id": int(c), "bbox": list(box), "score": float(score)}
                    for c in img_cats)
    return dets


def centre_box_detections(gt_coco: dict, frac: float = 0.5, category_ids: Iterable[int] | None = None,
                          score: float = 1.0, class_predictions: Mapping[int, int | Sequence[int]] | None = None
                          ) -> list[dict]:
    """Baseline: one centred box of frac·W × frac·H per image and category.

    Categories are ``class_predictions[image_id]`` (one id or a list, e.g. the matched pseudo-class of the frame;
    images absent from it get no box) when given, else every id in ``category_ids`` (default: all ground-truth
    categories), so the baseline is scored on localisation alone.
    """
    return _box_detections(gt_coco, frac, category_ids, score, class_predictions)


def whole_image_detections(gt_coco: dict, category_ids: Iterable[int] | None = None, score: float = 1.0,
                           class_predictions: Mapping[int, int | Sequence[int]] | None = None) -> list[dict]:
    """Baseline: the whole image as one box per category (categories chosen as in :func:`centre_box_detections`)."""
    return _box_detections(gt_coco, 1.0, category_ids, score, class_predictions)


def predictions_to_detections(image_id: int, boxes, scores, category_ids) -> list[dict]:
    """(N, 4) xyxy boxes, (N,) scores, (N,) category ids -> COCO detections; category id < 0 (unmatched) dropped."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).ravel()
    cats = np.asarray(category_ids, dtype=np.int64).ravel()
    return [{"image_id": int(image_id), "category_id": int(c),
             "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])], "score": float(s)}
            for b, s, c in zip(boxes, scores, cats) if c >= 0]
