"""Evaluation inputs: the test frames of the shards, the ground truth rescaled onto them, the self-labels
(pseudo-annotations), the heatmaps, and the training histories.

Coordinates: everything is moved into *frame pixels* (the shards' frame_size × frame_size frames, resized from the
video without crop) as xyxy boxes. Ground-truth boxes are scaled by frame_W / width, frame_H / height.

Joining ground truth to frames (:func:`join_ground_truth`): a ground-truth image joins the test frame of the same
``video_id`` whose ``timestamp`` is nearest, when it lies within ``tolerance_s`` (seconds, default 1 ms; it must stay
below half the ingest frame period). Only joined frames are evaluated: a frame nobody annotated is not an image of the
evaluation (VGGSound / AudioSet test sets annotate one frame per clip while ingest keeps up to ten, and detections on
the other nine would otherwise all count as false positives). A ground-truth image that joins no frame is either
*unsampled* (its clip has other joined ground-truth images: the annotation is denser than the ingest rate, as the
synthetic benchmark's every-frame ground truth) or *missed* (no ground-truth image of its clip joined: the clip was
not ingested, or its annotated timestamps are not ones ingest kept). Both are counted in ``results.json``
(``ground_truth``); missed ones raise once their fraction of the ground-truth images exceeds
``max_unmatched_fraction`` (EvalConfig ``max_unmatched_gt_fraction``).

Class ids: ``c`` in [0, C) is the index into the class list (classes.json = the manifest's classes); the evaluation
COCO uses ``category_id = c + 1`` (pycocotools treats id 0 as "none" in places). Ground-truth categories are
matched to the class list by *name*, so the generator's own id convention does not matter.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.shards import Manifest, read_sample_meta

log = logging.getLogger(__name__)

__all__ = ["TestFrames", "GroundTruthJoin", "read_test_frames", "join_ground_truth",
           "eval_ground_truth", "read_heatmaps", "read_histories"]


@dataclass
class TestFrames:
    """The test samples of the shards (metadata only), sorted by index. ``label``: (N,) class id or -1."""
    index: np.ndarray
    video_id: list[str]
    timestamp: np.ndarray
    label: np.ndarray
    height: int
    width: int

    def subset(self, keep: np.ndarray) -> "TestFrames":
        """The frames where the boolean mask ``keep`` (N,) is true."""
        return TestFrames(self.index[keep], [v for v, k in zip(self.video_id, keep) if k], self.timestamp[keep],
                          self.label[keep], self.height, self.width)


def read_test_frames(manifest: Manifest, split: str) -> TestFrames:
    """Metadata of every sample of ``split`` (:func:`data.shards.read_sample_meta`)."""
    meta = read_sample_meta(manifest, split)
    if not meta.index:
        raise ValueError(f"manifest {manifest.root}: no {split!r} samples to evaluate on")
    return TestFrames(np.array(meta.index, np.int64), meta.video_id, np.array(meta.timestamp),
                      np.array(meta.label, np.int64), meta.height, meta.width)


def _category_to_class(gt: dict, classes: list[str]) -> dict[int, int]:
    ids = {c: i for i, c in enumerate(classes)}
    out = {}
    for cat in gt.get("categories", []):
        if cat["name"] not in ids:
            raise ValueError(f"ground-truth category {cat['name']!r} is not in the class list {classes}; "
                             "pass the classes.json the benchmark was generated with")
        out[int(cat["id"])] = ids[cat["name"]]
    return out


@dataclass
class GroundTruthJoin:
    """Ground-truth images against test frames. ``frame_of``: {ground-truth image id: sample index};
    ``unsampled`` / ``missed``: (video_id, timestamp) of the ground-truth images that joined no frame (module doc)."""
    frame_of: dict[int, int]
    unsampled: list[tuple[str, float]]
    missed: list[tuple[str, float]]
    num_gt_images: int
    num_frames: int
    tolerance_s: float

    def report(self, examples: int = 20) -> dict:
        """The ``results.json`` ``ground_truth`` entry: counts, the missed fraction, the first missed entries."""
        n = max(self.num_gt_images, 1)
        return {"num_gt_images": self.num_gt_images, "num_joined": len(self.frame_of),
                "num_unsampled": len(self.unsampled), "num_missed": len(self.missed),
                "missed_fraction": len(self.missed) / n, "num_test_frames": self.num_frames,
                "num_frames_without_gt": self.num_frames - len(self.frame_of), "tolerance_s": self.tolerance_s,
                "missed_examples": [{"video_id": v, "timestamp": t} for v, t in self.missed[:examples]]}


def join_ground_truth(gt_images: list[dict], frames: TestFrames, tolerance_s: float = 1e-3) -> GroundTruthJoin:
    """Join each ground-truth image (``video_id``, ``timestamp``) to the nearest test frame of its clip within
    ``tolerance_s``; raises when two ground-truth images take the same frame (a tolerance wider than the frame gap,
    or a duplicated image)."""
    if tolerance_s < 0:
        raise ValueError(f"timestamp tolerance {tolerance_s} s must be >= 0")
    rows: dict[str, list[int]] = {}
    for n, vid in enumerate(frames.video_id):
        rows.setdefault(str(vid), []).append(n)
    by_video = {vid: (frames.timestamp[r], frames.index[r]) for vid, r in rows.items()}
    frame_of, taken, unmatched = {}, {}, []
    for img in gt_images:
        vid, ts = str(img["video_id"]), float(img["timestamp"])
        times, idx = by_video.get(vid, (np.zeros(0), np.zeros(0, np.int64)))
        gap = np.abs(times - ts)
        j = int(np.argmin(gap)) if gap.size else -1
        if j < 0 or gap[j] > tolerance_s + 1e-9:
            unmatched.append((vid, ts))
            continue
        frame = int(idx[j])
        if frame in taken:
            raise ValueError(f"ground-truth images {taken[frame]} and {img['id']} both join frame {frame} of clip "
                             f"{vid!r} (t = {times[j]:.3f} s): lower evaluate.gt_timestamp_tolerance_s "
                             f"({tolerance_s} s) below half the gap between ingested frames, or remove the duplicate")
        taken[frame] = img["id"]
        frame_of[img["id"]] = frame
    joined_videos = {str(img["video_id"]) for img in gt_images if img["id"] in frame_of}
    unsampled = [u for u in unmatched if u[0] in joined_videos]
    missed = [u for u in unmatched if u[0] not in joined_videos]
    return GroundTruthJoin(frame_of, unsampled, missed, len(gt_images), len(frames.index), float(tolerance_s))


def eval_ground_truth(gt: dict, frames: TestFrames, classes: list[str], tolerance_s: float = 1e-3,
                      max_unmatched_fraction: float = 0.0) -> dict:
    """The evaluation COCO in frame pixels: images = the test frames that have a ground-truth image (``id`` = sample
    index), annotations = every object of those images (``category_id`` = class + 1, ``sounding`` and ``annotator``
    kept). ``coco["info"]["ground_truth"]`` is the join report (:meth:`GroundTruthJoin.report`).

    Raises ValueError, naming the first missed clip and timestamp, when the missed ground-truth images exceed
    ``max_unmatched_fraction`` of all ground-truth images.
    """
    cat_to_class = _category_to_class(gt, classes)
    join = join_ground_truth(gt["images"], frames, tolerance_s)
    report = join.report()
    if report["missed_fraction"] > max_unmatched_fraction + 1e-12:
        v, t = join.missed[0]
        raise ValueError(
            f"ground truth: {len(join.missed)} of {join.num_gt_images} ground-truth images "
            f"({100 * report['missed_fraction']:.1f} %, tolerance {100 * max_unmatched_fraction:.1f} %) join no "
            f"ingested test frame, e.g. clip {v!r} at t = {t:.3f} s: the clip was not ingested or ingest kept no "
            f"frame within {tolerance_s} s of that time. Ingest at the annotated times (ingest fps), or raise "
            "evaluate.max_unmatched_gt_fraction to evaluate without them")
    if join.missed:
        log.warning("ground truth: %d of %d ground-truth images join no test frame and are left out (within the "
                    "tolerance of %.1f %%); first: %s", len(join.missed), join.num_gt_images,
                    100 * max_unmatched_fraction, join.missed[0])
    if report["num_frames_without_gt"]:
        log.info("ground truth: %d of %d test frames have no ground-truth image and are not evaluated",
                 report["num_frames_without_gt"], join.num_frames)
    anns_of: dict[int, list[dict]] = {}
    for a in gt["annotations"]:
        anns_of.setdefault(a["image_id"], []).append(a)
    images, anns = [], []
    for img in sorted(gt["images"], key=lambda im: join.frame_of.get(im["id"], -1)):
        if img["id"] not in join.frame_of:
            continue
        idx = join.frame_of[img["id"]]
        images.append({"id": idx, "width": frames.width, "height": frames.height, "video_id": str(img["video_id"]),
                       "timestamp": float(img["timestamp"])})
        sx, sy = frames.width / float(img["width"]), frames.height / float(img["height"])
        for a in anns_of.get(img["id"], []):
            x, y, w, h = a["bbox"]
            ann = {"id": len(anns) + 1, "image_id": idx, "category_id": cat_to_class[a["category_id"]] + 1,
                   "bbox": [x * sx, y * sy, w * sx, h * sy], "area": w * sx * h * sy, "iscrowd": 0,
                   "sounding": bool(a.get("sounding", True))}
            if "annotator" in a:
                ann["annotator"] = int(a["annotator"])
            anns.append(ann)
    return {"info": {"ground_truth": report}, "images": images, "annotations": anns,
            "categories": [{"id": i + 1, "name": c} for i, c in enumerate(classes)]}


def read_heatmaps(path: str | Path | None) -> dict[int, np.ndarray]:
    """``heatmaps_test.npz`` -> {sample index: (h, w) heatmap}; {} when there is no file."""
    if not path or not Path(path).is_file():
        if path:
            log.warning("heatmaps %s not found; the report has no heatmap pictures", path)
        return {}
    with np.load(path, allow_pickle=False) as z:   # written by distributed.pseudo.annotate: index (n,), heatmap (n,h,w)
        return {int(i): np.asarray(h) for i, h in zip(z["index"], z["heatmap"])}


def _read_json(path: str | Path | None, what: str):
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        log.warning("%s %s not found; its curves are left out of the report", what, p)
        return None
    return json.loads(p.read_text())


def read_histories(stage1_done: str | Path | None, detector_history: str | Path | None) -> dict:
    """``{"stage1": [per-epoch dicts], "detector": [per-epoch dicts]}`` (empty lists where a file is missing)."""
    done = _read_json(stage1_done, "stage-1 done.json")
    hist = _read_json(detector_history, "detector history")
    stage1 = done.get("metrics", []) if isinstance(done, dict) else []
    detector = hist.get("epochs", hist.get("history", [])) if isinstance(hist, dict) else (hist or [])
    keep = lambda rows: [{k: v for k, v in r.items() if isinstance(v, (int, float))} for r in rows  # noqa: E731
                         if isinstance(r, dict)]
    return {"stage1": keep(stage1), "detector": keep(detector)}
