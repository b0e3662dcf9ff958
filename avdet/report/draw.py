"""Pictures for the evaluation report, drawn with PIL alone (no matplotlib): boxes on frames, heatmap overlays, the
cluster × class confusion matrix, and simple line plots of training curves.

Every function takes plain arrays / lists and returns a ``PIL.Image.Image`` (RGB); nothing is written here.
Boxes are ``(x0, y0, x1, y1)`` in the pixels of the frame they are drawn on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["Box", "PALETTE", "GT_COLOUR", "font", "draw_boxes", "heatmap_overlay", "confusion_image", "line_plot"]

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40), (128, 0, 0)]
GT_COLOUR = (255, 255, 255)
BG = (255, 255, 255)
INK = (30, 30, 30)
GRID = (225, 225, 225)


@dataclass
class Box:
    """One box to draw: xyxy in frame pixels, a text label (may be empty), an RGB colour, dashed or solid."""
    xyxy: Sequence[float]
    text: str = ""
    colour: tuple[int, int, int] = PALETTE[0]
    dashed: bool = False
    label_below: bool = False   # put the tag inside the box at its bottom edge (keeps GT and detection tags apart)


def font(size: int = 13) -> ImageFont.FreeTypeFont:
    """Pillow's bundled scalable font at ``size`` px (no system font needed)."""
    return ImageFont.load_default(size=size)


def _upscale(frame: np.ndarray, min_side: int) -> tuple[Image.Image, float]:
    """(H, W, 3) uint8 -> RGB image whose shorter side is at least ``min_side``, and the scale applied."""
    img = Image.fromarray(np.asarray(frame, np.uint8), "RGB")
    scale = max(1.0, min_side / float(min(img.size)))
    if scale > 1.0:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BILINEAR)
    return img, scale


def _dashed_rect(d: ImageDraw.ImageDraw, xyxy: Sequence[float], colour, width: int, dash: int = 6) -> None:
    x0, y0, x1, y1 = xyxy
    for a, b, horizontal, fixed in ((x0, x1, True, y0), (x0, x1, True, y1), (y0, y1, False, x0), (y0, y1, False, x1)):
        t = a
        while t < b:
            e = min(t + dash, b)
            d.line([(t, fixed), (e, fixed)] if horizontal else [(fixed, t), (fixed, e)], fill=colour, width=width)
            t += 2 * dash


def _label(d: ImageDraw.ImageDraw, xyxy: Sequence[float], text: str, colour, fnt, below: bool) -> None:
    """Text on a filled tag: just above the box's top-left corner (inside when there is no room above), or, with
    ``below``, inside the box along its bottom edge."""
    l, t, r, b = d.textbbox((0, 0), text, font=fnt)
    w, h = r - l + 6, b - t + 4
    x = min(max(xyxy[0], 0), max(d.im.size[0] - w, 0))
    if below:
        y = min(xyxy[3], d.im.size[1]) - h
    else:
        y = xyxy[1] - h if xyxy[1] - h >= 0 else xyxy[1]
    d.rectangle([x, y, x + w, y + h], fill=colour)
    luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    d.text((x + 3 - l, y + 2 - t), text, fill=(0, 0, 0) if luminance > 150 else (255, 255, 255), font=fnt)


def draw_boxes(frame: np.ndarray, boxes: Sequence[Box], min_side: int = 256) -> Image.Image:
    """The frame (upscaled so its shorter side is ≥ ``min_side``) with ``boxes`` drawn; labels on coloured tags."""
    img, s = _upscale(frame, min_side)
    d = ImageDraw.Draw(img)
    fnt = font(12)
    for b in boxes:
        xyxy = [v * s for v in b.xyxy]
        if b.dashed:
            _dashed_rect(d, xyxy, b.colour, 2)
        else:
            d.rectangle(xyxy, outline=b.colour, width=2)
    for b in boxes:  # labels last so no box line crosses a tag
        if b.text:
            _label(d, [v * s for v in b.xyxy], b.text, b.colour, fnt, b.label_below)
    return img


def _colormap(x: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8, a dark-blue → red → yellow ramp (inferno-like)."""
    stops = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float64)
    pos = np.clip(x, 0, 1) * (len(stops) - 1)
    i = np.minimum(pos.astype(int), len(stops) - 2)
    f = (pos - i)[..., None]
    return (stops[i] * (1 - f) + stops[i + 1] * f).astype(np.uint8)


def heatmap_overlay(frame: np.ndarray, heatmap: np.ndarray, boxes: Sequence[Box] = (), alpha: float = 0.55,
                    min_side: int = 256) -> Image.Image:
    """The frame with the (h, w) heatmap (min-max normalised, bilinearly resized) blended on top, then ``boxes``."""
    hm = np.asarray(heatmap, np.float64)
    span = hm.max() - hm.min()
    hm = (hm - hm.min()) / span if span > 0 else np.zeros_like(hm)
    H, W = np.asarray(frame).shape[:2]
    hm_img = Image.fromarray((hm * 255).astype(np.uint8), "L").resize((W, H), Image.Resampling.BILINEAR)
    colour = _colormap(np.asarray(hm_img, np.float64) / 255.0)
    blended = (np.asarray(frame, np.float64) * (1 - alpha) + colour * alpha).astype(np.uint8)
    return draw_boxes(blended, boxes, min_side)


def _cell_colour(v: float) -> tuple[int, int, int]:
    """0 -> white, 1 -> dark blue."""
    lo, hi = np.array([255, 255, 255.0]), np.array([8, 48, 107.0])
    return tuple(int(c) for c in lo + (hi - lo) * float(np.clip(v, 0, 1)))


def _vertical_text(text: str, fnt, colour=INK) -> Image.Image:
    l, t, r, b = fnt.getbbox(text)
    im = Image.new("RGBA", (r - l + 2, b - t + 2), (255, 255, 255, 0))
    ImageDraw.Draw(im).text((1 - l, 1 - t), text, fill=colour, font=fnt)
    return im.rotate(90, expand=True)


def confusion_image(counts: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str],
                    cell: int = 0) -> Image.Image:
    """(K, C) counts as a grid: rows = clusters, columns = classes; shade = row-normalised count, counts written
    in the cells when they fit. ``cell`` = cell size in px (0: chosen from the matrix size)."""
    counts = np.asarray(counts, np.int64)
    K, C = counts.shape
    cell = cell or int(np.clip(640 // max(K, C, 1), 8, 36))
    fnt, small = font(12), font(max(7, min(11, cell // 3)))
    left = max([int(fnt.getlength(s)) for s in row_labels] + [10]) + 10
    top = max([int(fnt.getlength(s)) for s in col_labels] + [10]) + 10
    img = Image.new("RGB", (left + C * cell + 10, top + K * cell + 10), BG)
    d = ImageDraw.Draw(img)
    norm = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    for k in range(K):
        ty = top + k * cell + (cell - 12) // 2
        d.text((left - 6 - fnt.getlength(row_labels[k]), ty), row_labels[k], fill=INK, font=fnt)
        for c in range(C):
            x, y = left + c * cell, top + k * cell
            d.rectangle([x, y, x + cell - 1, y + cell - 1], fill=_cell_colour(norm[k, c]), outline=GRID)
            if cell >= 18 and counts[k, c]:
                txt = str(int(counts[k, c]))
                d.text((x + (cell - small.getlength(txt)) / 2, y + cell / 2 - 6), txt, font=small,
                       fill=(255, 255, 255) if norm[k, c] > 0.5 else INK)
    for c in range(C):
        lab = _vertical_text(col_labels[c], fnt)
        img.paste(lab, (left + c * cell + (cell - lab.width) // 2, top - 6 - lab.height), lab)
    return img


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def line_plot(series: dict[str, Sequence[float]], title: str, xlabel: str = "epoch", size=(420, 280),
              xs: Sequence[float] | None = None) -> Image.Image:
    """Line plot of one or more series against ``xs`` (default 1, 2, …) with axes, ticks, a title and a legend.
    NaN / None values are skipped; an empty plot says "no data"."""
    W, H = size
    img = Image.new("RGB", size, BG)
    d = ImageDraw.Draw(img)
    fnt, tfnt = font(11), font(14)
    d.text((10, 6), title, fill=INK, font=tfnt)
    clean = {k: np.array([np.nan if v is None else float(v) for v in vals], np.float64) for k, vals in series.items()}
    finite = np.concatenate([v[np.isfinite(v)] for v in clean.values()] + [np.zeros(0)])
    if finite.size == 0:
        d.text((W / 2 - 30, H / 2), "no data", fill=INK, font=fnt)
        return img
    n = max(len(v) for v in clean.values())
    x_vals = np.asarray(xs if xs is not None else np.arange(1, n + 1), np.float64)
    x0, y0, x1, y1 = 52, 30 + 14 * len(clean), W - 12, H - 34  # plot area, legend rows above it
    lo, hi = float(finite.min()), float(finite.max())
    pad = 0.05 * (hi - lo) if hi > lo else 0.5
    lo, hi = lo - pad, hi + pad
    xlo, xhi = float(x_vals.min()), float(x_vals.max()) if x_vals.max() > x_vals.min() else float(x_vals.min()) + 1
    sx = lambda x: x0 + (x - xlo) / (xhi - xlo) * (x1 - x0)  # noqa: E731
    sy = lambda y: y1 - (y - lo) / (hi - lo) * (y1 - y0)  # noqa: E731
    for t in _ticks(lo, hi):
        d.line([(x0, sy(t)), (x1, sy(t))], fill=GRID)
        d.text((x0 - 6 - fnt.getlength(_fmt(t)), sy(t) - 6), _fmt(t), fill=INK, font=fnt)
    for t in _ticks(xlo, xhi, min(n, 6) if n > 1 else 2):
        d.text((sx(t) - fnt.getlength(_fmt(t)) / 2, y1 + 4), _fmt(t), fill=INK, font=fnt)
    d.rectangle([x0, y0, x1, y1], outline=INK)
    d.text(((x0 + x1) / 2 - fnt.getlength(xlabel) / 2, H - 16), xlabel, fill=INK, font=fnt)
    for i, (name, v) in enumerate(clean.items()):
        colour = PALETTE[(i + 2) % len(PALETTE)]
        pts = [(sx(x_vals[j]), sy(v[j])) for j in range(len(v)) if np.isfinite(v[j])]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        for p in pts:
            d.ellipse([p[0] - 2.5, p[1] - 2.5, p[0] + 2.5, p[1] + 2.5], fill=colour)
        ly = 28 + 14 * i
        d.line([(x0 + 2, ly + 7), (x0 + 18, ly + 7)], fill=colour, width=2)
        d.text((x0 + 24, ly), name, fill=INK, font=fnt)
    return img
