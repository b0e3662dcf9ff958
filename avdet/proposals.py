"""Selective Search proposals (Uijlings et al. 2013) as a detector: the paper's "Selective Search*" row of Table 1
(class-agnostic: the proposals carry no class).

OpenCV ranks Selective Search's regions by C's ``rand()`` times their hierarchy level, so its order depends on every
earlier call in the process; :func:`selective_search` seeds libc's generator (``srand(seed)``) before each image, so
in a single-threaded process one image and one seed give one ranking (tested). Between a Ray task and a Ray driver
the order — and with it which proposals make the top ``max_boxes`` — was seen to differ (1 run in 4 of the
proposal-store test, under load); the likely cause, not proven: libc's generator is process-wide and another thread of
those processes draws from it between the seeding and the ranking. That is why a proposal set is computed once and stored (:mod:`data.proposals`): every consumer of one set
reads the same proposals; recomputing a set may rank them differently.

OpenCV contrib's ``cv2.ximgproc.segmentation`` implementation (the one the field uses); its proposals come ranked
(hierarchical grouping order, most "object-like" first), and the rank is the only score it gives, so the score of
the r-th proposal is ``1 / (r + 1)``. cv2 is imported when called, so the rest of avdet does not need it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["selective_search", "edge_boxes"]


def _seed_libc_rand(seed: int) -> None:
    import ctypes
    ctypes.CDLL(None).srand(ctypes.c_uint(seed))


def selective_search(image: np.ndarray, max_boxes: int = 100, mode: str = "fast", min_size: int = 4,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 RGB -> ``(boxes (n, 4) xyxy float64, scores (n,))``, n <= ``max_boxes``, best first.

    ``mode``: "fast" or "quality" (OpenCV's two strategy sets). Boxes narrower or lower than ``min_size`` pixels
    are dropped (single-segment slivers). ``seed`` seeds the ranking's random numbers (module docstring).
    """
    import cv2

    if mode not in ("fast", "quality"):
        raise ValueError(f"selective search mode={mode!r} must be 'fast' or 'quality'")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"selective search needs an (H, W, 3) image, got shape {image.shape}")
    cv2.setNumThreads(1)
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(np.ascontiguousarray(image[:, :, ::-1]))      # OpenCV wants BGR
    ss.switchToSelectiveSearchFast() if mode == "fast" else ss.switchToSelectiveSearchQuality()
    _seed_libc_rand(seed)
    rects = np.asarray(ss.process(), np.float64).reshape(-1, 4)  # x, y, w, h in rank order
    rects = rects[(rects[:, 2] >= min_size) & (rects[:, 3] >= min_size)][:max_boxes]
    boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)
    return boxes, 1.0 / (np.arange(len(boxes)) + 1.0)


def edge_boxes(image: np.ndarray, edge_model: str, max_boxes: int = 100, min_size: int = 4
               ) -> tuple[np.ndarray, np.ndarray]:
    """EdgeBoxes (Zitnick & Dollár 2014), OpenCV contrib's: (H, W, 3) uint8 RGB -> ``(boxes (n, 4) xyxy, scores
    (n,))``, best first. ``edge_model`` is the structured-edge detector's model file (OpenCV's ``model.yml.gz``), a
    local path: nothing is downloaded. Its scores are EdgeBoxes' own objectness."""
    import cv2

    if not edge_model or not Path(edge_model).is_file():
        raise FileNotFoundError(f"edge boxes: the structured-edge model {edge_model!r} is not a file (OpenCV's "
                                f"model.yml.gz from opencv_extra, a local path)")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"edge boxes need an (H, W, 3) image, got shape {image.shape}")
    cv2.setNumThreads(1)
    detector = cv2.ximgproc.createStructuredEdgeDetection(str(edge_model))
    rgb = image.astype(np.float32) / 255.0
    edges = detector.detectEdges(rgb)
    orientation = detector.computeOrientation(edges)
    edges = detector.edgesNms(edges, orientation)
    eb = cv2.ximgproc.createEdgeBoxes()
    eb.setMaxBoxes(max_boxes)
    rects, scores = eb.getBoundingBoxes(edges, orientation)
    rects = np.asarray(rects, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)[:len(rects)]
    keep = (rects[:, 2] >= min_size) & (rects[:, 3] >= min_size)
    rects, scores = rects[keep][:max_boxes], scores[keep][:max_boxes]
    return np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1), scores
