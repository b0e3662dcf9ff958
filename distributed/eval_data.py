"""Evaluation inputs: the test frames of the shards, the ground truth rescaled onto them, the self-labels
(pseudo-annotations), the heatmaps, and the training histories.

Coordinates: everything is moved into *frame pixels* (the shards' frame_size × frame_size frames, resized from the
video without crop) as xyxy boxes. Ground-truth images are joined to shard samples on
``(video_id, round(timestamp, 3))`` and their boxes scaled by frame_W / width, frame_H / height.

Class ids: ``c`` in [0, C) is the index into the class list (classes.json = the manifest's classes); the evaluation
COCO uses ``category_id = c + 1`` (pycocotools treats id 0 as "none" in places). Ground-truth categories are
matched to the class list by *name*, so the generator's own id convention does not matter.
"""
from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from data.shards import Manifest, iter_tar_groups

log = logging.getLogger(__name__)

__all__ = ["TestFrames", "SelfLabels", "read_test_frames", "load_frames", "eval_ground_truth", "read_self_labels",
           "read_heatmaps", "read_histories", "join_key"]


def join_key(video_id: str, timestamp: float) -> tuple[str, float]:
    """The key that joins a ground-truth image to a shard sample."""
    return str(video_id), round(float(timestamp), 3)


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
    """Metadata of every sample of ``split``, read from the shards' ``json`` entries (the frame size from the first
    ``jpg`` header; ingest makes every frame the same size)."""
    ids = {c: i for i, c in enumerate(manifest.classes)}
    rows, size = [], None
    for info in manifest.split_shards(split):
        for _key, entries in iter_tar_groups(manifest.shard_path(info)):
            ent = dict(entries)
            if "json" not in ent or "jpg" not in ent:
                continue
            meta = json.loads(ent["json"])
            if size is None:
                with Image.open(io.BytesIO(ent["jpg"])) as im:
                    size = (im.height, im.width)
            rows.append((int(meta["index"]), str(meta["video_id"]), float(meta["timestamp"]),
                         ids.get(meta.get("label"), -1)))
    if not rows:
        raise ValueError(f"manifest {manifest.root}: no {split!r} samples to evaluate on")
    rows.sort()
    return TestFrames(np.array([r[0] for r in rows], np.int64), [r[1] for r in rows],
                      np.array([r[2] for r in rows]), np.array([r[3] for r in rows], np.int64), *size)


def load_frames(manifest: Manifest, split: str, indices) -> dict[int, np.ndarray]:
    """Decode only the frames of ``indices``: {index: (H, W, 3) uint8}."""
    wanted = {f"{int(i):012d}" for i in indices}
    out: dict[int, np.ndarray] = {}
    for info in manifest.split_shards(split):
        for key, entries in iter_tar_groups(manifest.shard_path(info)):
            if key in wanted and "jpg" in dict(entries):
                with Image.open(io.BytesIO(dict(entries)["jpg"])) as im:
                    out[int(key)] = np.asarray(im.convert("RGB"))
    return out


def _category_to_class(gt: dict, classes: list[str]) -> dict[int, int]:
    ids = {c: i for i, c in enumerate(classes)}
    out = {}
    for cat in gt.get("categories", []):
        if cat["name"] not in ids:
            raise ValueError(f"ground-truth category {cat['name']!r} is not in the class list {classes}; "
                             "pass the classes.json the benchmark was generated with")
        out[int(cat["id"])] = ids[cat["name"]]
    return out


def eval_ground_truth(gt: dict, frames: TestFrames, classes: list[str]) -> dict:
    """The evaluation COCO in frame pixels: images = the test frames (``id`` = sample index), annotations = every
    ground-truth object of a joined image (``category_id`` = class + 1, ``sounding`` kept)."""
    cat_to_class = _category_to_class(gt, classes)
    by_key = {join_key(f["video_id"], f["timestamp"]): f for f in gt["images"]}
    anns_of: dict[int, list[dict]] = {}
    for a in gt["annotations"]:
        anns_of.setdefault(a["image_id"], []).append(a)
    images, anns, missing = [], [], 0
    for idx, vid, ts in zip(frames.index, frames.video_id, frames.timestamp):
        img = by_key.get(join_key(vid, ts))
        images.append({"id": int(idx), "width": frames.width, "height": frames.height, "video_id": vid,
                       "timestamp": float(ts)})
        if img is None:
            missing += 1
            continue
        sx, sy = frames.width / float(img["width"]), frames.height / float(img["height"])
        for a in anns_of.get(img["id"], []):
            x, y, w, h = a["bbox"]
            anns.append({"id": len(anns) + 1, "image_id": int(idx), "category_id": cat_to_class[a["category_id"]] + 1,
                         "bbox": [x * sx, y * sy, w * sx, h * sy], "area": w * sx * h * sy, "iscrowd": 0,
                         "sounding": bool(a.get("sounding", True))})
    if missing:
        log.warning("ground truth: %d of %d test frames have no ground-truth image (joined on video_id, timestamp);"
                    " they count as frames without objects", missing, len(images))
    return {"images": images, "annotations": anns,
            "categories": [{"id": i + 1, "name": c} for i, c in enumerate(classes)]}


@dataclass
class SelfLabels:
    """Pseudo-annotations, one row per annotation: ``index`` (sample), ``pseudo`` (cluster in [0, K)),
    ``confidence``, ``true`` (class id or -1), ``boxes`` (N, 4) xyxy — in frame pixels when read with a frame size.
    ``image_true``: {sample index: true class or -1} for every image of the file, annotated or not."""
    index: np.ndarray
    pseudo: np.ndarray
    confidence: np.ndarray
    true: np.ndarray
    boxes: np.ndarray
    num_clusters: int
    image_true: dict[int, int] = field(default_factory=dict)

    def labelled(self) -> np.ndarray:
        """Boolean mask of the rows whose frame has a true label."""
        return self.true >= 0


def read_self_labels(path: str | Path, frame_size: tuple[int, int] | None = None) -> SelfLabels:
    """Read ``pseudo_<split>.json``. With ``frame_size`` (H, W), boxes are rescaled from each image's
    ``width``/``height`` to it."""
    doc = json.loads(Path(path).read_text())
    images = {int(im["id"]): im for im in doc["images"]}
    K = max([len(doc.get("categories", []))] + [int(a["category_id"]) for a in doc["annotations"]])
    rows = []
    for a in doc["annotations"]:
        im = images.get(int(a["image_id"]))
        if im is None:
            raise ValueError(f"{path}: annotation on image {a['image_id']} which is not in 'images'")
        x, y, w, h = (float(v) for v in a["bbox"])
        sx = frame_size[1] / float(im["width"]) if frame_size else 1.0
        sy = frame_size[0] / float(im["height"]) if frame_size else 1.0
        rows.append((int(a["image_id"]), int(a["category_id"]) - 1, float(a.get("score", 1.0)),
                     int(im.get("true_label", -1)), [x * sx, y * sy, (x + w) * sx, (y + h) * sy]))
    image_true = {i: int(im.get("true_label", -1)) for i, im in images.items()}
    if not rows:
        return SelfLabels(*(np.zeros(0, t) for t in (np.int64, np.int64, float, np.int64)), np.zeros((0, 4)), K,
                          image_true)
    idx, pseudo, conf, true, boxes = zip(*rows)
    return SelfLabels(np.array(idx, np.int64), np.array(pseudo, np.int64), np.array(conf), np.array(true, np.int64),
                      np.array(boxes, np.float64).reshape(-1, 4), K, image_true)


def read_heatmaps(path: str | Path | None) -> dict[int, np.ndarray]:
    """``heatmaps_test.npz`` -> {sample index: (h, w) heatmap}; {} when there is no file."""
    if not path or not Path(path).is_file():
        if path:
            log.warning("heatmaps %s not found; the report has no heatmap pictures", path)
        return {}
    with np.load(path, allow_pickle=False) as z:   # written by distributed.pseudo: index (n,), heatmap (n,h,w)
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
