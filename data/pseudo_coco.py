"""The pseudo-annotation artifact, ``pseudo_<split>.json`` (COCO): its one writer and its one reader.

Written by pseudo-annotation (:func:`coco_document`, and :func:`true_label_document` for the weak-supervision
variant); read by the detector stage (:func:`training_rows`) and by evaluation (:func:`read_self_labels`), both
through :func:`read_document`. Fields: images ``{id: sample index, file_name: "<shard>#<key>", width, height,
video_id, timestamp, true_label (class id, -1 unknown; evaluation only)}``; annotations ``{id, image_id, bbox
[x, y, w, h] (frame pixels), category_id = pseudo-class + 1, score = confidence, heatmap_score, peakiness, area,
iscrowd: 0}``; categories ``[{id: k+1, name: "cluster<k>"}]``; ``info`` the split's statistics.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def coco_document(pred: dict[str, np.ndarray], num_clusters: int, min_confidence: float) -> dict:
    """Columns of every frame (sorted by index; the labeller's output with the stream's ``video_id``,
    ``timestamp``, ``file_name``) -> COCO dict (module docstring)."""
    images, anns = [], []
    for i, index in enumerate(pred["index"].tolist()):
        images.append({"id": index, "file_name": str(pred["file_name"][i]), "width": int(pred["width"][i]),
                       "height": int(pred["height"][i]), "video_id": str(pred["video_id"][i]),
                       "timestamp": float(pred["timestamp"][i]), "true_label": int(pred["label"][i])})
        if float(pred["confidence"][i]) < min_confidence:
            continue
        x0, y0, x1, y1 = (float(v) for v in pred["box"][i])
        anns.append({"id": len(anns) + 1, "image_id": index, "bbox": [x0, y0, x1 - x0, y1 - y0],
                     "category_id": int(pred["cls"][i]) + 1, "score": float(pred["confidence"][i]),
                     "heatmap_score": float(pred["score"][i]), "peakiness": float(pred["peakiness"][i]),
                     "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    cats = ([{"id": 1, "name": "object"}] if num_clusters == 1 else         # a class-agnostic localiser
            [{"id": k + 1, "name": f"cluster{k}"} for k in range(num_clusters)])
    return {"images": images, "annotations": anns, "categories": cats}


def true_label_document(doc: dict, classes: list[str]) -> dict:
    """The paper's "weak sup." training set: the same self-boxes with each frame's TRUE video label as the category
    (``true_label + 1``, categories = ``classes``); frames without a label lose their box. A copy; ``doc`` is kept."""
    label = {int(im["id"]): int(im.get("true_label", -1)) for im in doc["images"]}
    anns = [dict(a, category_id=label[int(a["image_id"])] + 1) for a in doc["annotations"]
            if label.get(int(a["image_id"]), -1) >= 0]
    anns = [dict(a, id=i + 1) for i, a in enumerate(anns)]
    return dict(doc, annotations=anns, categories=[{"id": c + 1, "name": n} for c, n in enumerate(classes)],
                info=dict(doc.get("info", {}), weak_sup="category_id = true video label + 1"))


def read_document(path: str | Path) -> dict:
    """The COCO dict of ``path``, checked: every annotation's image is listed (else ValueError naming the file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pseudo-annotations {path} do not exist (run jobs/pseudo_annotate.py first)")
    doc = json.loads(path.read_text())
    images = {int(im["id"]) for im in doc["images"]}
    for a in doc["annotations"]:
        if int(a["image_id"]) not in images:
            raise ValueError(f"{path}: annotation on image {a['image_id']} which is not in 'images'")
    return doc


def training_rows(path: str | Path, min_confidence: float = 0.0, max_images: int = 0,
                      seed: int = 0) -> tuple[dict[str, np.ndarray], int]:
    """COCO pseudo-annotations -> ({"index" (N,) sorted int64, "box" (N,4) xyxy float32, "cls" (N,) int64
    category id}, K). One annotation per image (the first); boxes narrower than 1 px are widened to 1 px."""
    doc = read_document(path)
    k = len(doc["categories"])
    first: dict[int, dict] = {}
    for a in doc["annotations"]:
        if a["score"] >= min_confidence:
            first.setdefault(int(a["image_id"]), a)
    index = np.array(sorted(first), np.int64)
    if max_images and len(index) > max_images:
        index = np.sort(np.random.default_rng(seed).choice(index, max_images, replace=False))
    box = np.array([first[i]["bbox"] for i in index.tolist()], np.float32).reshape(-1, 4)
    box[:, 2:] = box[:, :2] + np.maximum(box[:, 2:], 1.0)                     # [x, y, w, h] -> xyxy, >= 1 px
    cls = np.array([first[i]["category_id"] for i in index.tolist()], np.int64)
    if len(cls) and (cls.min() < 1 or cls.max() > k):
        raise ValueError(f"{path}: category ids {cls.min()}..{cls.max()} outside 1..{k}")
    return {"index": index, "box": box, "cls": cls}, k


@dataclass
class SelfLabels:
    """Pseudo-annotations, one row per annotation: ``index`` (sample), ``pseudo`` (cluster in [0, K)),
    ``confidence``, ``true`` (class id or -1), ``boxes`` (N, 4) xyxy — in frame pixels when read with a frame size.
    ``image_true``: {sample index: true class or -1} for every image of the file, annotated or not.
    ``video``: (N,) the row's ``video_id`` (``"#<image id>"`` where the file has none: then each frame is a video)."""
    index: np.ndarray
    pseudo: np.ndarray
    confidence: np.ndarray
    true: np.ndarray
    boxes: np.ndarray
    num_clusters: int
    image_true: dict[int, int] = field(default_factory=dict)
    video: np.ndarray = field(default_factory=lambda: np.zeros(0, object))

    def labelled(self) -> np.ndarray:
        """Boolean mask of the rows whose frame has a true label."""
        return self.true >= 0


def read_self_labels(path: str | Path, frame_size: tuple[int, int] | None = None) -> SelfLabels:
    """Read ``pseudo_<split>.json``. With ``frame_size`` (H, W), boxes are rescaled from each image's
    ``width``/``height`` to it."""
    doc = read_document(path)
    images = {int(im["id"]): im for im in doc["images"]}
    K = max([len(doc.get("categories", []))] + [int(a["category_id"]) for a in doc["annotations"]])
    rows = []
    for a in doc["annotations"]:
        im = images[int(a["image_id"])]
        x, y, w, h = (float(v) for v in a["bbox"])
        sx = frame_size[1] / float(im["width"]) if frame_size else 1.0
        sy = frame_size[0] / float(im["height"]) if frame_size else 1.0
        vid = im.get("video_id")
        rows.append((int(a["image_id"]), int(a["category_id"]) - 1, float(a.get("score", 1.0)),
                     int(im.get("true_label", -1)), [x * sx, y * sy, (x + w) * sx, (y + h) * sy],
                     str(vid) if vid is not None else f"#{a['image_id']}"))
    image_true = {i: int(im.get("true_label", -1)) for i, im in images.items()}
    if not rows:
        return SelfLabels(*(np.zeros(0, t) for t in (np.int64, np.int64, float, np.int64)), np.zeros((0, 4)), K,
                          image_true)
    idx, pseudo, conf, true, boxes, video = zip(*rows)
    return SelfLabels(np.array(idx, np.int64), np.array(pseudo, np.int64), np.array(conf), np.array(true, np.int64),
                      np.array(boxes, np.float64).reshape(-1, 4), K, image_true, np.array(video, object))
