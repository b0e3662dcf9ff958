"""Sound-source localisation metrics on maps (paper Table 2; seeds 001–003): cIoU@τ, IoU@0.5 success, AUC.

Predictions are binary maps (H, W): the union of the detector's boxes scoring ≥ a threshold (:func:`boxes_to_map`).
Ground-truth maps are (H, W) in [0, 1]: binary box masks, or a consensus map (the mean of several annotators' masks,
as on Flickr-SoundNet).

- cIoU of one sample (the field's definition): Σ(pred·gt) / (Σ gt + Σ(pred·[gt == 0]));
  0 when the denominator is 0.
- IoU of one sample: plain IoU of pred and the support of gt (gt > 0).
- ``ciou_30``: fraction of samples with cIoU ≥ 0.3 (the threshold is a parameter).
- ``iou50_success``: fraction of samples with IoU ≥ 0.5.
- ``auc``: area under the success-rate curve of cIoU, success(t) = fraction with cIoU ≥ t, over t = 0, 0.05, …, 1,
  by the trapezoidal rule (as the LVS / EZ-VSL evaluation code does with sklearn's ``auc``).

Always report the trivial "whole image" prediction (:func:`whole_image_maps`) beside a method's figures.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["AUC_THRESHOLDS", "boxes_to_map", "ciou", "map_iou", "success_curve", "localisation_metrics",
           "whole_image_maps"]

AUC_THRESHOLDS = np.round(np.arange(21) * 0.05, 2)


def boxes_to_map(boxes, scores, threshold: float, H: int, W: int) -> np.ndarray:
    """Union of the boxes with score ≥ threshold as a binary (H, W) float32 map.

    Args:
        boxes: (N, 4) x0, y0, x1, y1 in pixels (x1, y1 exclusive). A pixel is inside when its centre is.
        scores: (N,) or None (all boxes kept).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    keep = np.ones(len(boxes), bool) if scores is None else np.asarray(scores, dtype=np.float64).ravel() >= threshold
    out = np.zeros((H, W), dtype=np.float32)
    for x0, y0, x1, y1 in boxes[keep]:
        # pixel c has centre c + 0.5; inside when x0 <= c + 0.5 < x1
        c0, c1 = int(np.ceil(x0 - 0.5)), int(np.ceil(x1 - 0.5))
        r0, r1 = int(np.ceil(y0 - 0.5)), int(np.ceil(y1 - 0.5))
        out[max(r0, 0):min(r1, H), max(c0, 0):min(c1, W)] = 1.0
    return out


def _pair(pred_map, gt_map) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred_map, dtype=np.float64)
    gt = np.asarray(gt_map, dtype=np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction map {pred.shape} and ground-truth map {gt.shape} differ in shape")
    return pred, gt


def ciou(pred_map, gt_map) -> float:
    """Consensus IoU of one sample: Σ(pred·gt) / (Σ gt + Σ(pred·[gt == 0])). (H, W), (H, W) -> float."""
    pred, gt = _pair(pred_map, gt_map)
    denom = gt.sum() + (pred * (gt == 0)).sum()
    return float((pred * gt).sum() / denom) if denom > 0 else 0.0


def map_iou(pred_map, gt_map) -> float:
    """IoU of the binary prediction and the support of the ground truth (gt > 0). (H, W), (H, W) -> float."""
    pred, gt = _pair(pred_map, gt_map)
    p, g = pred > 0, gt > 0
    union = np.logical_or(p, g).sum()
    return float(np.logical_and(p, g).sum() / union) if union > 0 else 0.0


def success_curve(values: np.ndarray, thresholds: np.ndarray = AUC_THRESHOLDS) -> np.ndarray:
    """(N,) per-sample scores -> (T,) fraction of samples with score ≥ each threshold."""
    values = np.asarray(values, dtype=np.float64)
    return (values[None, :] >= thresholds[:, None] - 1e-12).mean(axis=1)


def localisation_metrics(pred_maps: Sequence, gt_maps: Sequence, ciou_threshold: float = 0.3,
                         iou_threshold: float = 0.5) -> dict:
    """Per-dataset localisation figures from N (H_i, W_i) prediction and ground-truth maps.

    Returns ``{"ciou_30": fraction with cIoU ≥ ciou_threshold, "iou50_success": fraction with IoU ≥ iou_threshold,
    "auc": area under the cIoU success curve, "mean_ciou", "mean_iou", "num_samples"}`` (keys keep their names
    whatever the thresholds are).
    """
    if len(pred_maps) != len(gt_maps):
        raise ValueError(f"{len(pred_maps)} prediction maps but {len(gt_maps)} ground-truth maps")
    if len(pred_maps) == 0:
        raise ValueError("no samples to score")
    cious = np.array([ciou(p, g) for p, g in zip(pred_maps, gt_maps)])
    ious = np.array([map_iou(p, g) for p, g in zip(pred_maps, gt_maps)])
    curve = success_curve(cious)
    auc = float(np.sum((curve[1:] + curve[:-1]) / 2.0 * np.diff(AUC_THRESHOLDS)))  # trapezoidal rule
    return {"ciou_30": float(np.mean(cious >= ciou_threshold - 1e-12)),
            "iou50_success": float(np.mean(ious >= iou_threshold - 1e-12)),
            "auc": auc, "mean_ciou": float(cious.mean()), "mean_iou": float(ious.mean()),
            "num_samples": int(len(cious))}


def whole_image_maps(gt_maps: Sequence) -> list[np.ndarray]:
    """The trivial prediction: an all-ones map the shape of each ground-truth map."""
    return [np.ones(np.shape(g), dtype=np.float32) for g in gt_maps]
