"""Stage-1 outputs -> self-labels for the detector: one box and one pseudo-class per frame (paper §3.2).

- Box: :func:`avdet.boxes.boxes_from_heatmaps` (eq. 5, largest connected component, tight box).
- Class: y* = argmax_y [g^v_y(v) + g^a_y(a)] (eq. 6). A class-agnostic localiser (no classifiers: seed 003) passes
  no logits; every frame is then class 0 with p(y*) = 1, so its confidence is the peakiness term alone.
- Confidence (this project's choice; the paper only says the annotations may be filtered), in [0, 1):

      p(y*)     = softmax(g^v + g^a)[y*]          how sure the two classifiers are together
      peakiness = (max_u h_u − mean_u h_u) / std_u h_u   (0 when the heatmap is constant)
      confidence = p(y*) · (1 − exp(−peakiness / peakiness_scale))

  A flat heatmap (no localised response) or an uncertain class both pull the confidence to 0. Peakiness is computed
  on the grid heatmap (not upsampled), so it does not depend on the image size.
- ``score`` is S(v, a) = max_u h_u, the paper's audio-visual correspondence score, kept for filtering and analysis.

Frames with confidence < ``cfg.min_confidence`` are dropped; each kept record carries its ``index`` (position in
the batch) so the caller can join it back to the sample's global index.
"""
from __future__ import annotations

import torch

from avdet.boxes import boxes_from_heatmaps
from avdet.config import SelfLabelConfig

__all__ = ["peakiness", "class_and_probability", "confidence", "self_labels"]


def peakiness(heatmaps: torch.Tensor) -> torch.Tensor:
    """(B, h, w) -> (B,) (max − mean) / std over each heatmap; 0 where the heatmap is constant."""
    flat = heatmaps.flatten(1).double()
    std = flat.std(dim=1, unbiased=False)
    peak = (flat.max(dim=1).values - flat.mean(dim=1)) / std.clamp_min(1e-12)
    return torch.where(std > 1e-12, peak, torch.zeros_like(peak))


def class_and_probability(vis_logits: torch.Tensor, aud_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """eq. 6: (B, K), (B, K) -> y* (B,) int64 = argmax(g^v + g^a), and p(y*) (B,) = softmax(g^v + g^a)[y*]."""
    if vis_logits.shape != aud_logits.shape:
        raise ValueError(f"visual logits {tuple(vis_logits.shape)} and audio logits {tuple(aud_logits.shape)} differ")
    joint = vis_logits.double() + aud_logits.double()
    prob, cls = joint.softmax(dim=1).max(dim=1)
    return cls, prob


def confidence(prob: torch.Tensor, peak: torch.Tensor, peakiness_scale: float) -> torch.Tensor:
    """(B,), (B,) -> (B,) p(y*) · (1 − exp(−peakiness / peakiness_scale)), in [0, 1)."""
    return prob * (1.0 - torch.exp(-peak.clamp_min(0.0) / peakiness_scale))


@torch.no_grad()
def self_labels(heatmaps: torch.Tensor, vis_logits: torch.Tensor | None, aud_logits: torch.Tensor | None,
                cfg: SelfLabelConfig, image_size: tuple[int, int]) -> list[dict]:
    """One box and one pseudo-class per frame, filtered by confidence.

    Args:
        heatmaps: (B, h, w) h_u(v, a) from the stage-1 model.
        vis_logits: (B, K) g^v(v).  aud_logits: (B, K) g^a(a). Both ``None``: class-agnostic (class 0, p = 1).
        cfg: β, min_confidence, peakiness_scale, upsample.
        image_size: (H, W) of the frames the boxes refer to.
    Returns:
        For each kept frame: ``{"index": int (position in the batch), "box": [x0, y0, x1, y1] (image pixels),
        "cls": int, "confidence": float, "score": float (max heatmap), "peakiness": float}``.
    """
    heatmaps = heatmaps.detach().cpu()
    if (vis_logits is None) != (aud_logits is None):
        raise ValueError("pass both the visual and the audio logits, or neither (class-agnostic)")
    n = heatmaps.shape[0] if vis_logits is None else vis_logits.shape[0]
    if heatmaps.ndim != 3 or heatmaps.shape[0] != n:
        raise ValueError(f"heatmaps {tuple(heatmaps.shape)} must be (B, h, w) with B = {n}")
    boxes = boxes_from_heatmaps(heatmaps, cfg.beta, image_size, upsample=cfg.upsample)
    if vis_logits is None:
        cls, prob = torch.zeros(n, dtype=torch.int64), torch.ones(n, dtype=torch.float64)
    else:
        cls, prob = class_and_probability(vis_logits.detach().cpu(), aud_logits.detach().cpu())
    peak = peakiness(heatmaps)
    conf = confidence(prob, peak, cfg.peakiness_scale)
    score = heatmaps.flatten(1).max(dim=1).values
    out = []
    for i in range(heatmaps.shape[0]):
        if float(conf[i]) < cfg.min_confidence:
            continue
        out.append({"index": i, "box": [float(v) for v in boxes[i]], "cls": int(cls[i]),
                    "confidence": float(conf[i]), "score": float(score[i]), "peakiness": float(peak[i])})
    return out
