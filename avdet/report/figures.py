"""The report's pictures as :class:`avdet.report.page.Figure` lists, from frames, predictions and results.

Class names shown on detections come from the Hungarian mapping (cluster k → class); unmatched clusters show as
``cluster k``. Ground-truth boxes are white and dashed, tagged at their bottom edge (silent objects say so: the
detector sees frames only, so it may find them too). Picture text is ASCII: the bundled font has no arrows.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from PIL import Image, ImageDraw

from avdet.report.draw import (BG, GT_COLOUR, INK, PALETTE, Box, confusion_image, draw_boxes, font, heatmap_overlay,
                               line_plot)
from avdet.report.page import Figure

__all__ = ["cluster_name", "detection_figures", "heatmap_figures", "confusion_figure", "curve_figures",
           "methods_grid"]


def cluster_name(k: int, mapping: Sequence[int], classes: Sequence[str]) -> str:
    """The display name of cluster ``k``: its matched class, or ``cluster k``."""
    c = int(mapping[k]) if 0 <= k < len(mapping) else -1
    return classes[c] if c >= 0 else f"cluster {k}"


def _gt_boxes(coco: dict, image_id: int, classes: Sequence[str]) -> list[Box]:
    out = []
    for a in coco["annotations"]:
        if a["image_id"] == image_id:
            x, y, w, h = a["bbox"]
            mark = "" if a.get("sounding", True) else " (silent)"
            out.append(Box((x, y, x + w, y + h), f"GT {classes[a['category_id'] - 1]}{mark}", GT_COLOUR, dashed=True,
                           label_below=True))
    return out


def detection_figures(frames: dict[int, np.ndarray], predictions: dict, coco: dict, mapping: Sequence[int],
                      classes: Sequence[str], min_score: float = 0.3, max_boxes: int = 5) -> list[Figure]:
    """One picture per frame: GT (white, dashed) and the top ``max_boxes`` detections with score ≥ ``min_score``
    (falling back to the single best detection, so a weak detector still shows something)."""
    figs = []
    for n, (i, frame) in enumerate(sorted(frames.items())):
        p = predictions.get(i, {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int)})
        order = np.argsort(-np.asarray(p["scores"]))
        keep = [j for j in order if p["scores"][j] >= min_score][:max_boxes] or list(order[:1])
        boxes = _gt_boxes(coco, i, classes)
        for j in keep:
            k = int(p["labels"][j]) - 1
            boxes.append(Box(p["boxes"][j], f"{cluster_name(k, mapping, classes)} {p['scores'][j]:.2f}",
                             PALETTE[k % len(PALETTE)]))
        cap = (f"frame {i}: {len(keep)} of {len(p['scores'])} detections shown"
               f"{' (best only: none ≥ %.2f)' % min_score if keep and p['scores'][keep[0]] < min_score else ''}")
        figs.append(Figure(f"det_{n:02d}_{i}", draw_boxes(frame, boxes), cap, "detections"))
    return figs


def heatmap_figures(frames: dict[int, np.ndarray], heatmaps: dict[int, np.ndarray], self_boxes: dict,
                    mapping: Sequence[int], classes: Sequence[str], frame_labels: dict[int, int]) -> list[Figure]:
    """Stage-1 heatmap over each frame with its self-box and pseudo-class (named through ``mapping``).

    ``self_boxes``: {index: (xyxy, pseudo, confidence)}; ``frame_labels``: {index: true class or −1}.
    """
    figs = []
    for n, i in enumerate(sorted(set(frames) & set(heatmaps))):
        boxes, cap = [], f"frame {i}"
        if i in self_boxes:
            xyxy, k, conf = self_boxes[i]
            boxes.append(Box(xyxy, f"{cluster_name(k, mapping, classes)} ({conf:.2f})", PALETTE[k % len(PALETTE)]))
            cap += f": cluster {k} → {cluster_name(k, mapping, classes)}, confidence {conf:.2f}"
        else:
            cap += ": no self-label"
        true = frame_labels.get(i, -1)
        cap += f"; video label {classes[true] if true >= 0 else 'unknown'}"
        figs.append(Figure(f"heat_{n:02d}_{i}", heatmap_overlay(frames[i], heatmaps[i], boxes), cap, "heatmaps"))
    return figs


def confusion_figure(counts: np.ndarray, mapping: Sequence[int], classes: Sequence[str], split: str) -> Figure:
    """Cluster × class counts, rows ordered by matched class (so matches form the diagonal), unmatched last."""
    counts = np.asarray(counts)
    K = counts.shape[0]
    order = sorted(range(K), key=lambda k: (mapping[k] < 0, mapping[k] if mapping[k] >= 0 else counts[k].argmax(), k))
    rows = [f"{k} -> {classes[mapping[k]]}" if mapping[k] >= 0 else f"{k} (unmatched)" for k in order]
    img = confusion_image(counts[order], rows, list(classes))
    return Figure(f"confusion_{split}", img, f"{split} frames: rows = clusters (→ Hungarian class), columns = true "
                  f"video labels; shade = row-normalised count", "clusters")


def _numeric_series(rows: list[dict], want) -> dict[str, list]:
    keys = []
    for r in rows:
        keys += [k for k in r if want(k) and k not in keys]
    return {k: [r.get(k) for r in rows] for k in keys}


def _epochs(rows: list[dict]) -> list[float]:
    """x values: each row's ``epoch`` when it has one, else its 1-based position."""
    return [float(r["epoch"]) if isinstance(r.get("epoch"), (int, float)) else float(i) for i, r in enumerate(rows, 1)]


def curve_figures(histories: dict) -> list[Figure]:
    """Stage-1 loss, stage-1 cluster accuracy, and detector loss per epoch (one plot each, when there is data)."""
    stage1, det = histories.get("stage1", []), histories.get("detector", [])
    specs = [("stage1_loss", stage1, lambda k: "loss" in k, "Stage 1: loss per epoch"),
             ("stage1_acc", stage1, lambda k: "acc" in k or "nmi" in k or "purity" in k,
              "Stage 1: self-label quality per epoch"),
             ("detector_loss", det, lambda k: "loss" in k, "Detector: loss per epoch")]
    figs = []
    for name, rows, want, title in specs:
        series = _numeric_series(rows, want)
        if series:
            figs.append(Figure(f"curve_{name}", line_plot(series, title, xs=_epochs(rows)), title, "curves"))
    return figs


def methods_grid(panels: dict[str, dict[str, np.ndarray]], rows: int = 6, side: int = 160) -> Image.Image | None:
    """The stage-1 methods side by side on the same test frames: a row per frame, a column per method, each cell
    the method's map over the frame with its self-box (the method's colour), the method named above its column.

    ``panels``: {method: a pseudo-annotation ``heatmaps_<split>.npz`` as arrays — ``index``, ``heatmap``, ``box``
    (xyxy, frame pixels), ``frame`` (uint8)}. The rows are up to ``rows`` frames every method has, evenly spread over
    their sorted indices; None when the methods share no frame."""
    common = sorted(set.intersection(*(set(p["index"].tolist()) for p in panels.values()))) if panels else []
    if not common:
        return None
    pick = sorted({common[int(round(x))] for x in np.linspace(0, len(common) - 1, min(rows, len(common)))})
    head = 22
    grid = Image.new("RGB", (side * len(panels), head + side * len(pick)), BG)
    d, fnt = ImageDraw.Draw(grid), font(14)
    for col, (name, p) in enumerate(panels.items()):
        d.text((col * side + 6, 3), name, fill=INK, font=fnt)
        where = {int(i): n for n, i in enumerate(p["index"].tolist())}
        for row, i in enumerate(pick):
            n = where[i]
            cell = heatmap_overlay(p["frame"][n], p["heatmap"][n], [Box(p["box"][n], "", PALETTE[col % len(PALETTE)])],
                                   min_side=side).resize((side, side))
            grid.paste(cell, (col * side, head + row * side))
    return grid
