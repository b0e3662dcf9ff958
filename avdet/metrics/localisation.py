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

The field's protocols (BASELINES.md; each a function below, known-answer tested):

- Flickr-SoundNet (:func:`flickr_protocol`): ground truth = the annotators' consensus map (:func:`consensus_map`:
  per annotator a binary map of their box(es), summed over annotators, divided by 2, clipped at 1 — the rule of the
  LVS / EZ-VSL ``bbox2gtmap(format='flickr')`` code, so a pixel two of three annotators marked scores 1 and one
  marked by one annotator 0.5); figures: cIoU@0.5 (success ratio) and AUC of the cIoU success curve.
- DSOL single source (:func:`dsol_single_source`): IoU of the predicted area with the annotated box(es); IoU@0.5
  success ratio and AUC of the IoU success curve.
- DSOL multi source (:func:`dsol_multi_source`, seed 002 Eq. 9): per sample the class-aware CIoU = mean over the
  *sounding* classes of IoU(predicted area of class k, boxes of class k) (:func:`class_aware_ciou`); CIoU@0.3
  success ratio, AUC, and NSA = the fraction of the *silent* classes' map area predicted silent (:func:`nsa`),
  averaged over the samples that have a silent class.

Boxes to maps for a detector (paper Table 2): :func:`boxes_to_map` / :func:`class_box_maps` keep boxes scoring at
least a confidence threshold. The threshold must not be tuned on the test set: :func:`choose_score_threshold` picks
it on the *training* frames, against the training pseudo-annotations (self-boxes) as target maps.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["AUC_THRESHOLDS", "boxes_to_map", "ciou", "map_iou", "success_curve", "success_ratio", "success_auc",
           "localisation_metrics", "whole_image_maps", "consensus_map", "flickr_protocol", "dsol_single_source",
           "class_aware_ciou", "nsa", "dsol_multi_source", "class_box_maps", "choose_score_threshold"]

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


def success_ratio(values, threshold: float) -> float:
    """Fraction of the per-sample scores (N,) that are ≥ threshold (the field's "cIoU@θ", "IoU@0.5")."""
    values = np.asarray(values, dtype=np.float64)
    return float(np.mean(values >= threshold - 1e-12)) if values.size else 0.0


def success_auc(values, thresholds: np.ndarray = AUC_THRESHOLDS) -> float:
    """Area under the success curve of (N,) scores over ``thresholds`` (0, 0.05, …, 1), trapezoidal rule (sklearn
    ``auc`` as the field's code uses it)."""
    curve = success_curve(values, thresholds)
    return float(np.sum((curve[1:] + curve[:-1]) / 2.0 * np.diff(thresholds)))


def localisation_metrics(pred_maps: Sequence, gt_maps: Sequence, ciou_threshold: float = 0.3,
                         iou_threshold: float = 0.5) -> dict:
    """Per-dataset localisation figures from N (H_i, W_i) prediction and ground-truth maps.

    Returns ``{"ciou_30": fraction with cIoU ≥ ciou_threshold, "iou50_success": fraction with IoU ≥ iou_threshold,
    "auc": area under the cIoU success curve, "mean_ciou", "mean_iou", "num_samples"}`` (keys keep their names
    whatever the thresholds are).
    """
    _check_lengths(pred_maps, gt_maps)
    cious = np.array([ciou(p, g) for p, g in zip(pred_maps, gt_maps)])
    ious = np.array([map_iou(p, g) for p, g in zip(pred_maps, gt_maps)])
    return {"ciou_30": success_ratio(cious, ciou_threshold), "iou50_success": success_ratio(ious, iou_threshold),
            "auc": success_auc(cious), "mean_ciou": float(cious.mean()), "mean_iou": float(ious.mean()),
            "num_samples": int(len(cious))}


def whole_image_maps(gt_maps: Sequence) -> list[np.ndarray]:
    """The trivial prediction: an all-ones map the shape of each ground-truth map."""
    return [np.ones(np.shape(g), dtype=np.float32) for g in gt_maps]


def consensus_map(annotator_boxes: Sequence, H: int, W: int, divisor: float = 2.0) -> np.ndarray:
    """Flickr-SoundNet consensus ground truth: Σ_annotators (binary map of that annotator's boxes) / divisor, clipped
    at 1. (H, W) float32.

    Args:
        annotator_boxes: one (n_a, 4) xyxy pixel array per annotator (Flickr: one box each, three annotators).
        divisor: 2 in the field's code (``gt_map / 2; gt_map[gt_map > 1] = 1``). That code sums box maps, not
            annotator maps; the two agree when each annotator draws one box, and an annotator's overlapping boxes
            count once here.
    """
    if divisor <= 0:
        raise ValueError(f"divisor={divisor} must be > 0")
    total = np.zeros((H, W), dtype=np.float64)
    for boxes in annotator_boxes:
        total += boxes_to_map(boxes, None, 0.0, H, W)
    return np.minimum(total / divisor, 1.0).astype(np.float32)


def _check_lengths(pred_maps: Sequence, gt_maps: Sequence) -> None:
    if len(pred_maps) != len(gt_maps):
        raise ValueError(f"{len(pred_maps)} prediction maps but {len(gt_maps)} ground-truth maps")
    if len(pred_maps) == 0:
        raise ValueError("no samples to score")


def flickr_protocol(pred_maps: Sequence, consensus_maps: Sequence, threshold: float = 0.5) -> dict:
    """Flickr-SoundNet: binary prediction maps against consensus maps (:func:`consensus_map`).
    Returns ``{"ciou_50": success ratio of cIoU at ``threshold``, "auc": AUC of the cIoU success curve, "mean_ciou",
    "num_samples"}``."""
    _check_lengths(pred_maps, consensus_maps)
    cious = np.array([ciou(p, g) for p, g in zip(pred_maps, consensus_maps)])
    return {"ciou_50": success_ratio(cious, threshold), "auc": success_auc(cious), "mean_ciou": float(cious.mean()),
            "num_samples": int(cious.size)}


def dsol_single_source(pred_maps: Sequence, gt_maps: Sequence, threshold: float = 0.5) -> dict:
    """DSOL single-source protocol: IoU of the binary predicted area with the annotated box(es) (``gt_maps``: their
    binary union). Returns ``{"iou_50": success ratio at ``threshold``, "auc": AUC of the IoU success curve,
    "mean_iou", "num_samples"}``."""
    _check_lengths(pred_maps, gt_maps)
    ious = np.array([map_iou(p, g) for p, g in zip(pred_maps, gt_maps)])
    return {"iou_50": success_ratio(ious, threshold), "auc": success_auc(ious), "mean_iou": float(ious.mean()),
            "num_samples": int(ious.size)}


def class_aware_ciou(pred_maps: dict, gt_maps: dict, sounding) -> float | None:
    """DSOL Eq. 9: mean over the sounding classes k of IoU(pred_maps[k], gt_maps[k]); None without a sounding class.

    Args:
        pred_maps: {class: (H, W) binary predicted area of that class}; a class absent = predicted nowhere.
        gt_maps: {class: (H, W) binary union of that class's annotated boxes}.
        sounding: the classes with a sounding object in the sample (δ_k = 1).
    With binary maps the field's cIoU and the plain IoU coincide, so either reading of "IoU_k" gives this.
    """
    sounding = sorted(set(sounding))
    if not sounding:
        return None
    ious = []
    for k in sounding:
        gt = np.asarray(gt_maps[k])
        pred = pred_maps.get(k)
        ious.append(map_iou(np.zeros_like(gt) if pred is None else pred, gt))
    return float(np.mean(ious))


def nsa(pred_maps: dict, silent, H: int, W: int) -> float | None:
    """DSOL Eq. 9 No-Sounding-Area: Σ_{k silent} #(pixels of pred_maps[k] predicted silent) / (|silent| · H·W);
    None without a silent class. A silent class with no predicted map counts as entirely silent (NSA 1)."""
    silent = sorted(set(silent))
    if not silent:
        return None
    quiet = sum(float((np.asarray(pred_maps[k]) <= 0).sum()) if k in pred_maps else float(H * W) for k in silent)
    return quiet / (len(silent) * H * W)


def dsol_multi_source(samples: Sequence[dict], threshold: float = 0.3) -> dict:
    """DSOL multi-source protocol over samples ``{"pred": {k: map}, "gt": {k: map}, "sounding": [k..], "silent":
    [k..]}`` (all maps (H, W) binary). Returns ``{"ciou_30": success ratio of the class-aware CIoU at ``threshold``,
    "auc", "mean_ciou", "nsa": mean NSA over the samples with a silent class (None if none), "num_samples" (with a
    sounding class), "num_nsa_samples"}``. Eq. 9 sums NSA over every non-sounding class of the K; pass ``silent`` =
    all non-sounding classes for that reading, or the silent *visible* objects' classes (MUSIC-Synthetic's two silent
    instruments)."""
    cious, nsas = [], []
    for s in samples:
        c = class_aware_ciou(s["pred"], s["gt"], s.get("sounding", []))
        if c is not None:
            cious.append(c)
        if s.get("silent"):
            H, W = np.shape(next(iter(s["gt"].values())))
            nsas.append(nsa(s["pred"], s["silent"], H, W))
    if not cious:
        raise ValueError("no sample has a sounding class to score")
    cious = np.array(cious)
    return {"ciou_30": success_ratio(cious, threshold), "auc": success_auc(cious), "mean_ciou": float(cious.mean()),
            "nsa": float(np.mean(nsas)) if nsas else None, "num_samples": int(cious.size),
            "num_nsa_samples": len(nsas)}


def class_box_maps(boxes, scores, classes, threshold: float, H: int, W: int) -> dict[int, np.ndarray]:
    """{class: binary (H, W) union of that class's boxes scoring ≥ threshold} (classes < 0, unmatched, dropped)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).ravel()
    classes = np.asarray(classes, dtype=np.int64).ravel()
    keep = (scores >= threshold) & (classes >= 0)
    return {int(k): boxes_to_map(boxes[keep & (classes == k)], None, 0.0, H, W) for k in np.unique(classes[keep])}


def choose_score_threshold(predictions: Sequence[tuple], target_maps: Sequence, grid=None) -> float:
    """The box-confidence threshold whose pseudo-heatmaps best match ``target_maps`` (highest mean cIoU; ties: the
    lower threshold). Used on TRAINING frames with the training pseudo-annotations as targets, never on the test set.

    Args:
        predictions: per frame ``(boxes (n, 4) xyxy, scores (n,))``.
        target_maps: per frame (H, W) map of its pseudo-boxes.
        grid: thresholds to try (default 0.05, 0.10, …, 0.95).
    """
    _check_lengths(predictions, target_maps)
    grid = np.round(np.arange(1, 20) * 0.05, 2) if grid is None else np.asarray(grid, dtype=np.float64)
    best_t, best = float(grid[0]), -1.0
    for t in grid:
        score = float(np.mean([ciou(boxes_to_map(b, s, float(t), *np.shape(g)), g)
                               for (b, s), g in zip(predictions, target_maps)]))
        if score > best + 1e-12:
            best_t, best = float(t), score
    return best_t
