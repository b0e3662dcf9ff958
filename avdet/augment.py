"""Detection-training augmentations of torchvision's detection references (``references/detection/transforms.py``):
horizontal flip and scale jitter (resize by a random factor, then crop or pad back to the frame size, as
``ScaleJitter`` + ``FixedSizeCrop`` do), applied to an image and its boxes together. Pure torch; randomness comes
from the caller's ``torch.Generator`` so a seeded run draws the same augmentations every time.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# a jittered box must keep this much of its (scaled) area inside the crop, or the image is left unjittered
MIN_KEPT_AREA = 0.5


def hflip(image: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror ``image`` (3, H, W) left-right and its ``boxes`` (n, 4) xyxy pixels."""
    w = image.shape[-1]
    flipped = boxes.clone()
    flipped[:, 0], flipped[:, 2] = w - boxes[:, 2], w - boxes[:, 0]
    return image.flip(-1), flipped


def scale_jitter(image: torch.Tensor, boxes: torch.Tensor, scale: float, offset: tuple[float, float]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize ``image`` (3, H, W) by ``scale`` and crop (scale > 1) or zero-pad (scale < 1) back to (H, W); the
    crop or pad position is ``offset`` = (fx, fy) in [0, 1] of the free range. ``boxes`` (n, 4) xyxy follow and are
    clipped to the frame. Returns the inputs unchanged if a box would keep < ``MIN_KEPT_AREA`` of itself."""
    _, h, w = image.shape
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) == (h, w):
        return image, boxes
    resized = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
    scaled = boxes * torch.tensor([nw / w, nh / h, nw / w, nh / h], dtype=boxes.dtype)
    dx, dy = round(offset[0] * abs(nw - w)), round(offset[1] * abs(nh - h))
    if nh >= h:
        out = resized[:, dy:dy + h, dx:dx + w]
        shift = torch.tensor([-dx, -dy, -dx, -dy], dtype=boxes.dtype)
    else:
        out = image.new_zeros(image.shape)
        out[:, dy:dy + nh, dx:dx + nw] = resized
        shift = torch.tensor([dx, dy, dx, dy], dtype=boxes.dtype)
    moved = scaled + shift
    clipped = torch.stack([moved[:, 0].clamp(0, w), moved[:, 1].clamp(0, h),
                           moved[:, 2].clamp(0, w), moved[:, 3].clamp(0, h)], 1)
    if bool((_area(clipped) < MIN_KEPT_AREA * _area(moved)).any()) or bool((_area(clipped) < 1).any()):
        return image, boxes
    return out, clipped


def _area(b: torch.Tensor) -> torch.Tensor:
    return (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)


def augment(image: torch.Tensor, boxes: torch.Tensor, flip_p: float, scale_range: tuple[float, float],
            gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip with probability ``flip_p``, then scale-jitter by a factor uniform in ``scale_range`` (lo == hi == 1:
    off). Draws from ``gen`` in a fixed order (flip, scale, offset x, offset y) whatever is switched on."""
    draws = torch.rand(4, generator=gen).tolist()
    if draws[0] < flip_p:
        image, boxes = hflip(image, boxes)
    lo, hi = scale_range
    if (lo, hi) != (1.0, 1.0):
        image, boxes = scale_jitter(image, boxes, lo + (hi - lo) * draws[1], (draws[2], draws[3]))
    return image, boxes
