"""Selective Search proposals (Uijlings et al. 2013) as a detector: the paper's "Selective Search*" row of Table 1
(class-agnostic: the proposals carry no class).

OpenCV contrib's ``cv2.ximgproc.segmentation`` implementation (the one the field uses); its proposals come ranked
(hierarchical grouping order, most "object-like" first), and the rank is the only score it gives, so the score of
the r-th proposal is ``1 / (r + 1)``. cv2 is imported when called, so the rest of avdet does not need it.
"""
from __future__ import annotations

import numpy as np

__all__ = ["selective_search"]


def selective_search(image: np.ndarray, max_boxes: int = 100, mode: str = "fast", min_size: int = 4
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 RGB -> ``(boxes (n, 4) xyxy float64, scores (n,))``, n <= ``max_boxes``, best first.

    ``mode``: "fast" or "quality" (OpenCV's two strategy sets). Boxes narrower or lower than ``min_size`` pixels
    are dropped (single-segment slivers).
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
    rects = np.asarray(ss.process(), np.float64).reshape(-1, 4)  # x, y, w, h in rank order
    rects = rects[(rects[:, 2] >= min_size) & (rects[:, 3] >= min_size)][:max_boxes]
    boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)
    return boxes, 1.0 / (np.arange(len(boxes)) + 1.0)
