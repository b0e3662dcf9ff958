"""Heatmap -> one tight box per frame (paper §3.2, "Box extraction").

The heatmap h (h×w grid) is thresholded at ε(h) = β·max_u h_u + (1−β)·mean_u h_u (eq. 5), the largest connected
component of {u : h_u ≥ ε} is kept, and the tight box around it is returned in image pixel coordinates
``(x0, y0, x1, y1)`` (x1, y1 exclusive, so a box covering the whole W×H image is ``(0, 0, W, H)``).

Two ways to reach image coordinates, chosen by ``upsample``:

- ``upsample=True`` (default): the heatmap is first upsampled bilinearly (``align_corners=False``) to the image size
  H×W, then thresholded; the box is tight at pixel resolution. This is what the localisation literature does
  (seed 003: "recover the resolution ... using bilinear up-sampling") and gives boxes that are not quantised to the
  coarse grid. ε is computed on the upsampled map.
- ``upsample=False``: threshold on the grid itself; grid cell u = (row i, column j) spans
  ``[j·W/w, (j+1)·W/w) × [i·H/h, (i+1)·H/h)`` in the image, so the box is a union of whole cells.

Connected components use 4-connectivity (``scipy.ndimage.label`` default). Ties in component size go to the
component that contains the heatmap's maximum, then to the lowest label.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torchvision.ops import box_iou  # noqa: F401  (re-exported: the one IoU of boxes used across avdet)

__all__ = ["threshold", "largest_component", "box_from_heatmap", "boxes_from_heatmaps", "box_iou"]


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def threshold(heatmap: np.ndarray, beta: float) -> float:
    """eq. 5: ε(h) = β·max_u h_u + (1−β)·mean_u h_u for one heatmap of any shape."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta={beta} must be in [0, 1]")
    return float(beta * heatmap.max() + (1.0 - beta) * heatmap.mean())


def largest_component(mask: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """Boolean (h, w) mask of the largest 4-connected component of ``mask``; ties -> the one holding argmax(heatmap).

    Returns an all-False mask when ``mask`` is empty.
    """
    labels, n = ndimage.label(mask)
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0  # background
    best = np.flatnonzero(sizes == sizes.max())
    chosen = best[0]
    if len(best) > 1:
        peak_label = labels.flat[int(np.argmax(heatmap))]
        if peak_label in best:
            chosen = peak_label
    return labels == chosen


def _upsample(heatmaps: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """(B, h, w) -> (B, H, W) by bilinear interpolation (align_corners=False)."""
    t = torch.from_numpy(heatmaps)[:, None]
    return F.interpolate(t, size=tuple(image_size), mode="bilinear", align_corners=False)[:, 0].numpy()


def _tight_box(component: np.ndarray, image_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """Tight box of a boolean (h, w) component, mapped to (H, W) image pixels; cell j spans [j·W/w, (j+1)·W/w)."""
    h, w = component.shape
    H, W = image_size
    rows = np.flatnonzero(component.any(axis=1))
    cols = np.flatnonzero(component.any(axis=0))
    sy, sx = H / h, W / w
    return (float(cols[0] * sx), float(rows[0] * sy), float((cols[-1] + 1) * sx), float((rows[-1] + 1) * sy))


def _box_of_map(hm: np.ndarray, beta: float, image_size: tuple[int, int]) -> tuple[float, float, float, float]:
    if not np.isfinite(hm).all():
        raise ValueError("heatmap contains NaN or inf; cannot extract a box (check the stage-1 model's outputs)")
    mask = hm >= threshold(hm, beta)  # ≥ so the maximum is always inside the mask
    return _tight_box(largest_component(mask, hm), image_size)


def box_from_heatmap(heatmap, beta: float, image_size: tuple[int, int],
                     upsample: bool = True) -> tuple[float, float, float, float]:
    """One heatmap -> one box.

    Args:
        heatmap: (h, w) tensor or array, h_u(v, a).
        beta: β of eq. 5, in [0, 1]; larger β -> higher threshold -> smaller box.
        image_size: (H, W) of the frame in pixels.
        upsample: bilinearly upsample to (H, W) before thresholding (see the module docstring).
    Returns:
        (x0, y0, x1, y1) floats in image pixels, x1/y1 exclusive.
    """
    hm = _as_numpy(heatmap)
    if hm.ndim != 2:
        raise ValueError(f"heatmap must be (h, w), got shape {tuple(hm.shape)}")
    return tuple(boxes_from_heatmaps(hm[None], beta, image_size, upsample)[0])


def boxes_from_heatmaps(heatmaps, beta: float, image_size: tuple[int, int], upsample: bool = True) -> np.ndarray:
    """Batched :func:`box_from_heatmap`: (B, h, w) heatmaps -> (B, 4) float64 array of (x0, y0, x1, y1)."""
    hms = _as_numpy(heatmaps)
    if hms.ndim != 3:
        raise ValueError(f"heatmaps must be (B, h, w), got shape {tuple(hms.shape)}")
    image_size = (int(image_size[0]), int(image_size[1]))
    if upsample:
        hms = _upsample(hms, image_size)
    out = np.zeros((hms.shape[0], 4), dtype=np.float64)
    for b in range(hms.shape[0]):
        out[b] = _box_of_map(hms[b], beta, image_size)
    return out
