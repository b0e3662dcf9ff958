"""Why are the self-boxes wrong? Probe a finished stage 1's heatmaps against the ground truth of a split.

    python scripts/selfbox_probe.py outputs/demo/stage1 outputs/demo/synthetic/gt_test.json [--split test]
        [--betas 0.3 0.4 0.5 0.6 0.7] [--beta 0.5] [--out probe.json]

Runs the stage-1 model over every frame of ``split`` (no Ray), joins each frame to its ground truth (video_id,
timestamp) and prints one JSON object:

- ``pointing``: where the heatmap's peak (upsampled to the frame) falls — in a sounding object's box, only in a
  silent object's box, or on the background;
- ``by_beta``: for each β of eq. 5, the fraction of frames whose self-box has IoU ≥ 0.5 with a sounding box, the
  mean IoU and the median area ratio (self-box / sounding box);
- ``failures`` (at ``--beta``): the frames with IoU < 0.5, split into peak off the object, box < 0.5× or > 2× the
  object's area, and right size but offset; ``true_size_at_peak``: IoU ≥ 0.5 rate of a box of the object's true
  size centred on the peak (what placement alone allows; the object is the sounding box the self-box matched best);
- ``ranking``: IoU ≥ 0.5 rate among the top 25 / 50 / 75 / 100 % of frames ranked by each candidate confidence
  (the self-labels' confidence, peakiness, heatmap max, p(y*)); a useful confidence rises towards the top.

Any stage-1 method (its map: ``avdet.localisers``); the ranking's class-based scores only where the method has
classifiers. A method that reads proposals (seed 001) also gets ``proposals``: the fraction of frames whose bag
holds a proposal with IoU ≥ 0.5 with a sounding box (``bag_recall``: what its selection leaves it to find) and its
own self-box's IoU ≥ 0.5 rate and mean IoU (the best proposal by d).

``--average mirror | neighbours | clip`` first averages each heatmap with that of the mirrored frame, of the frames
just before and after it in its clip, or of its whole clip (does smoothing fix the boxes?).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from avdet.boxes import box_iou, boxes_from_heatmaps  # noqa: E402
from avdet.config import SelfLabelConfig  # noqa: E402
from avdet.fileio import write_json  # noqa: E402
from avdet.localisers import LOCALISERS  # noqa: E402
from avdet.selflabels import class_and_probability, confidence, peakiness  # noqa: E402
from data.shards import read_manifest  # noqa: E402
from data.stream import plain_loader  # noqa: E402
from distributed.evaluation.frames import eval_ground_truth, read_test_frames  # noqa: E402
from distributed.pseudo.annotate import load_stage1  # noqa: E402
from distributed.stage1.worker import PROPOSAL_INPUTS  # noqa: E402

FRACTIONS = (0.25, 0.5, 0.75, 1.0)


@torch.no_grad()
def heatmaps(stage1_dir: Path, split: str, batch_size: int = 128, mirror: bool = False) -> dict[str, np.ndarray]:
    """{"index", "heatmap" (N, h, w)} for every frame of ``split``, sorted by index, plus "vis_logits",
    "aud_logits" where the method has classifiers and "bag" (N, K, 4), "bag_exists" (N, K), "self_box" (N, 4)
    where it reads proposals. ``mirror``: each heatmap is averaged with that of the mirrored frame (flipped back)."""
    cfg, model = load_stage1(stage1_dir)
    method = LOCALISERS[cfg.method]
    if mirror and method.proposals:
        raise ValueError(f"selfbox_probe: --average mirror is not defined for stage1.method={cfg.method} (its "
                         "proposals are not mirrored)")
    stream = dataclasses.replace(cfg.stream_config(shuffle=False), num_workers=0, batch_size=batch_size)
    cols: dict[str, list[np.ndarray]] = {}

    def add(name: str, value: torch.Tensor) -> None:
        cols.setdefault(name, []).append(value.float().numpy() if value.is_floating_point() else value.numpy())

    for batch in plain_loader(cfg.manifest, split, stream):
        extra = {k: batch[k] for k in PROPOSAL_INPUTS if k in batch}
        out = model(batch["frames"], batch["audio"], **extra)
        add("index", batch["index"])
        heat = method.maps(model, out).float()
        if mirror:
            heat = (heat + method.maps(model, model(batch["frames"].flip(-1), batch["audio"])).float().flip(-1)) / 2
        add("heatmap", heat)
        if method.classes:
            add("vis_logits", out["vis_logits"])
            add("aud_logits", out["aud_logits"])
        if method.boxes is not None and "boxes" in out:
            add("bag", out["boxes"])
            add("bag_exists", out["exists"])
            add("self_box", method.boxes(out))
    merged = {k: np.concatenate(v) for k, v in cols.items()}
    order = np.argsort(merged["index"], kind="stable")
    return {k: v[order] for k, v in merged.items()}


def average_over_clips(heat: np.ndarray, video_id: list[str], timestamp: np.ndarray,
                       window: int | None) -> np.ndarray:
    """Each frame's heatmap averaged with the frames of its own clip: the ``window`` frames before and after it in
    time, or the whole clip when ``window`` is None."""
    out = np.empty_like(heat)
    vid = np.asarray(video_id)
    for v in np.unique(vid):
        rows = np.flatnonzero(vid == v)
        rows = rows[np.argsort(np.asarray(timestamp)[rows], kind="stable")]
        for j, r in enumerate(rows):
            near = rows if window is None else rows[max(0, j - window):j + window + 1]
            out[r] = heat[near].mean(0)
    return out


def _xyxy(b) -> list[float]:
    return [b[0], b[1], b[0] + b[2], b[1] + b[3]]


def _inside(boxes: np.ndarray, x: float, y: float) -> bool:
    return bool(len(boxes)) and bool(((boxes[:, 0] <= x) & (x < boxes[:, 2]) & (boxes[:, 1] <= y)
                                      & (y < boxes[:, 3])).any())


def _top_rates(hit: np.ndarray, score: np.ndarray) -> list[float]:
    order = np.argsort(-score, kind="stable")
    return [round(float(hit[order[:max(1, int(round(len(order) * f)))]].mean()), 4) for f in FRACTIONS]


def probe(heat: np.ndarray, sounding: list[np.ndarray], silent: list[np.ndarray], image_size: tuple[int, int],
          betas: list[float], beta: float, scores: dict[str, np.ndarray] | None = None) -> dict:
    """The module docstring's numbers for frames with at least one sounding box.

    Args:
        heat: (N, h, w) heatmaps. sounding / silent: per frame, (n_i, 4) xyxy boxes in frame pixels.
        image_size: (H, W) of the frames. betas: β values to sweep; beta: the one the failures are split at.
        scores: optional candidate confidences, name -> (N,).
    """
    H, W = image_size
    n = len(heat)
    if n == 0:
        raise ValueError("selfbox_probe: no frame with a sounding ground-truth box to probe")
    if not len(sounding) == len(silent) == n or any(len(s) == 0 for s in sounding):
        raise ValueError(f"selfbox_probe: {n} heatmaps need {n} lists of sounding boxes (each non-empty) and of "
                         f"silent boxes; got {len(sounding)} and {len(silent)}")
    up = F.interpolate(torch.from_numpy(heat)[:, None].double(), size=(H, W), mode="bilinear",
                       align_corners=False)[:, 0].flatten(1)
    peak = up.argmax(1).numpy()
    px, py = peak % W + 0.5, peak // W + 0.5
    hit = np.array([_inside(sounding[i], px[i], py[i]) for i in range(n)])
    on_silent = np.array([_inside(silent[i], px[i], py[i]) for i in range(n)]) & ~hit

    def best_match(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per frame: the highest IoU with a sounding box, and that sounding box (N, 4)."""
        ious, matched = np.zeros(n), np.zeros((n, 4))
        for i in range(n):
            iou = box_iou(torch.as_tensor(boxes[i:i + 1]), torch.as_tensor(sounding[i]))[0].numpy()
            j = int(iou.argmax())
            ious[i], matched[i] = iou[j], sounding[i][j]
        return ious, matched

    by_beta, at = {}, None
    for b in sorted(set(betas) | {beta}):
        boxes = boxes_from_heatmaps(heat, b, image_size)
        iou, gt = best_match(boxes)
        ratio = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1) / np.prod(gt[:, 2:] - gt[:, :2], axis=1)
        if b in betas:
            by_beta[str(b)] = {"iou50": round(float((iou >= 0.5).mean()), 4), "mean_iou": round(float(iou.mean()), 4),
                               "median_area_ratio": round(float(np.median(ratio)), 3)}
        if b == beta:
            at = iou, ratio, gt
    iou, ratio, gt = at
    fail = iou < 0.5
    wh = gt[:, 2:] - gt[:, :2]                       # the sounding box the self-box matched best, at ``beta``
    centred = np.concatenate([np.stack([px, py], 1) - wh / 2, np.stack([px, py], 1) + wh / 2], 1)
    placed = np.array([float(box_iou(torch.as_tensor(centred[i:i + 1]), torch.as_tensor(gt[i:i + 1]))[0, 0])
                       for i in range(n)])
    result = {
        "frames": n,
        "pointing": {"sounding": round(float(hit.mean()), 4), "silent_only": round(float(on_silent.mean()), 4),
                     "background": round(float((~hit & ~on_silent).mean()), 4)},
        "by_beta": by_beta,
        "failures": {"beta": beta, "all": round(float(fail.mean()), 4),
                     "peak_off_object": round(float((fail & ~hit).mean()), 4),
                     "too_small": round(float((fail & hit & (ratio < 0.5)).mean()), 4),
                     "too_large": round(float((fail & hit & (ratio > 2)).mean()), 4),
                     "offset": round(float((fail & hit & (ratio >= 0.5) & (ratio <= 2)).mean()), 4)},
        "true_size_at_peak": round(float((placed >= 0.5).mean()), 4),
    }
    if scores:
        result["ranking"] = {"top_fractions": list(FRACTIONS),
                             **{name: _top_rates(iou >= 0.5, s) for name, s in scores.items()}}
    return result


def proposal_probe(bag: np.ndarray, exists: np.ndarray, self_box: np.ndarray, sounding: list[np.ndarray]) -> dict:
    """Seed 001's selection against the ground truth: ``bag`` (N, K, 4) xyxy, ``exists`` (N, K), ``self_box``
    (N, 4), ``sounding`` per frame (n_i, 4) -> {"bag_recall", "self_box_iou50", "self_box_mean_iou", "bag_size"}."""
    recall, iou = np.zeros(len(bag), bool), np.zeros(len(bag))
    for i, gt in enumerate(sounding):
        gt = torch.as_tensor(gt, dtype=torch.float64)
        real = torch.as_tensor(bag[i][exists[i].astype(bool)], dtype=torch.float64)
        recall[i] = bool(len(real)) and bool((box_iou(real, gt) >= 0.5).any())
        iou[i] = float(box_iou(torch.as_tensor(self_box[i:i + 1], dtype=torch.float64), gt).max())
    return {"bag_recall": round(float(recall.mean()), 4), "self_box_iou50": round(float((iou >= 0.5).mean()), 4),
            "self_box_mean_iou": round(float(iou.mean()), 4), "bag_size": round(float(exists.sum(1).mean()), 2)}


def main(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="scripts/selfbox_probe.py", description=__doc__.split("\n")[0])
    p.add_argument("stage1_dir", type=Path, help="a finished stage 1 (config.yaml, model.pt), any method")
    p.add_argument("gt", type=Path, help="COCO ground truth of the split with 'sounding' flags (gt_test.json)")
    p.add_argument("--split", default="test")
    p.add_argument("--betas", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6, 0.7])
    p.add_argument("--beta", type=float, default=SelfLabelConfig().beta,
                   help="β the failures are split at (the run's pseudo.selflabel.beta; default: its default)")
    p.add_argument("--peakiness-scale", type=float, default=SelfLabelConfig().peakiness_scale,
                   help="for the confidence ranking (the run's pseudo.selflabel.peakiness_scale)")
    p.add_argument("--average", choices=["none", "mirror", "neighbours", "clip"], default="none",
                   help="average each heatmap with its mirrored frame's, its clip neighbours' (t-1, t+1) or its "
                        "whole clip's before boxing it")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    cols = heatmaps(args.stage1_dir, args.split, mirror=args.average == "mirror")
    cfg, _ = load_stage1(args.stage1_dir)
    manifest = read_manifest(cfg.manifest)
    frames = read_test_frames(manifest, args.split)
    if not np.array_equal(frames.index, cols["index"]):
        raise ValueError(f"selfbox_probe: the model read {len(cols['index'])} frames of split {args.split!r}, the "
                         f"shards list {len(frames.index)}; a shard changed or failed to decode (see the log)")
    if args.average in ("neighbours", "clip"):
        cols["heatmap"] = average_over_clips(cols["heatmap"], frames.video_id, frames.timestamp,
                                             1 if args.average == "neighbours" else None)
    coco = eval_ground_truth(json.loads(args.gt.read_text()), frames, manifest.classes)
    snd: dict[int, list] = {}
    sil: dict[int, list] = {}
    for a in coco["annotations"]:
        (snd if a["sounding"] else sil).setdefault(a["image_id"], []).append(_xyxy(a["bbox"]))
    keep = np.array([int(i) in snd for i in cols["index"]])
    idx = cols["index"][keep]
    heat = cols["heatmap"][keep]
    peak = peakiness(torch.from_numpy(heat))
    scores = {"peakiness": peak.numpy(), "heatmap_max": heat.reshape(len(heat), -1).max(1)}
    if "vis_logits" in cols:                          # a method with classifiers: the self-labels' confidence
        cls_prob = class_and_probability(torch.from_numpy(cols["vis_logits"][keep]),
                                         torch.from_numpy(cols["aud_logits"][keep]))[1]
        scores.update({"confidence": confidence(cls_prob, peak, args.peakiness_scale).numpy(),
                       "p_class": cls_prob.numpy()})
    sounding = [np.array(snd[int(i)]) for i in idx]
    silent = [np.array(sil.get(int(i), []), float).reshape(-1, 4) for i in idx]
    result = {"stage1_dir": str(args.stage1_dir), "split": args.split, "average": args.average,
              "grid": list(heat.shape[1:]),
              "frames_without_sounding_box": int((~keep).sum()),
              **probe(heat, sounding, silent, (frames.height, frames.width), args.betas, args.beta, scores)}
    if "bag" in cols:
        result["proposals"] = proposal_probe(cols["bag"][keep], cols["bag_exists"][keep], cols["self_box"][keep],
                                             sounding)
    print(json.dumps(result))
    if args.out:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
