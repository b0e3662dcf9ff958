"""Evaluation on a folder of still images with COCO boxes (OpenImages, paper Tables 1, 3 and 6): no shards, no
self-labels of the test set, no audio. ``EvalConfig.images_dir`` + ``gt`` select it (:func:`run_image_evaluation`).

1. Clusters are named exactly as for the video test sets: Hungarian, argmax and m-shot matchings of the TRAINING
   self-labels (``pseudo_train``) against the training classes (the ``manifest``'s class list).
2. Training classes are matched to the image set's categories by NAME (case-insensitive): a training class's name,
   or the name ``class_names`` gives it (a class-list file, ``data/classlists/``: ``<training class> TAB <test
   name>``; several training classes may share a test name, e.g. "playing bass drum" and "playing snare drum" ->
   "Drum"). So cluster k -> training class -> test category.
3. Names that do not match are reported in ``results["names"]``, never silently scored:
   - an image-set category no training class maps to is LEFT OUT (its boxes removed from the ground truth): the
     detector cannot name it; a detection on such an object is a false positive of whatever class it was given;
   - a training class with no image-set category keeps its detections out of the scoring (neither right nor wrong).
4. The detector runs on every image of ``gt`` (``file_name`` under ``images_dir``), resized to the training frames'
   size (``image_size``, 0 = the manifest's ``frame_size``; ingest resizes frames without crop, so does this), boxes
   mapped back to the image's pixels. mAP@0.3 / 0.5 / [0.5:0.95], per-class AP@0.5 by test name, class-agnostic
   detector and centre-box / whole-image baselines (class-agnostic).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from avdet.config import save_config, to_dict
from avdet.detector import detect
from avdet.fileio import write_json
from avdet.metrics import centre_box_detections, evaluate_detections, whole_image_detections
from avdet.report import page, scores
from data.artifacts import write_done
from data.pseudo_coco import SelfLabels, read_self_labels
from data.shards import read_manifest
from distributed.evaluation.infer import Predictions, _load

log = logging.getLogger(__name__)

__all__ = ["read_class_names", "name_mapping", "image_ground_truth", "predict_images", "score_images",
           "run_image_evaluation"]


def read_class_names(path: str | Path | None) -> dict[str, str]:
    """``{training class: test name}`` from a class-list file (data/subsets.py format); {} without a file."""
    if not path:
        return {}
    from data.subsets import read_classlist
    return read_classlist(path)


def name_mapping(train_classes: list[str], test_names: list[str],
                 class_names: dict[str, str]) -> tuple[list[int], dict]:
    """(``(C,)`` training class -> index into ``test_names`` or -1, the report of names that did not match)."""
    index = {n.casefold(): i for i, n in enumerate(test_names)}
    to_test = [index.get(class_names.get(c, c).casefold(), -1) for c in train_classes]
    reached = {t for t in to_test if t >= 0}
    report = {"matched": {c: test_names[t] for c, t in zip(train_classes, to_test) if t >= 0},
              "test_names_without_training_class": [n for i, n in enumerate(test_names) if i not in reached],
              "training_classes_without_test_name": [c for c, t in zip(train_classes, to_test) if t < 0]}
    return to_test, report


def image_ground_truth(gt: dict, images_dir: str | Path) -> tuple[dict, list[str], dict[int, Path]]:
    """(the image set's COCO with categories renumbered 1..n by first appearance, their names, {image id: file})."""
    names = [str(c["name"]) for c in gt.get("categories", [])]
    new_id = {int(c["id"]): i + 1 for i, c in enumerate(gt.get("categories", []))}
    anns = [dict(a, category_id=new_id[int(a["category_id"])], iscrowd=a.get("iscrowd", 0)) for a in gt["annotations"]]
    coco = {"images": [{"id": int(im["id"]), "width": im["width"], "height": im["height"],
                        "file_name": im["file_name"]} for im in gt["images"]],
            "annotations": anns, "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}
    root = Path(images_dir)
    files = {int(im["id"]): root / im["file_name"] for im in gt["images"]}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(files)} images of the ground truth are not under "
                                f"{images_dir}, e.g. {missing[0]}")
    return coco, names, files


def predict_images(detector: str | Path, files: dict[int, Path], size: int, batch_size: int = 8,
                   score_threshold: float = 0.05, device: str = "cpu") -> Predictions:
    """Every image resized to ``size`` × ``size`` through the detector; boxes back in the image's pixels."""
    model = _load(detector, score_threshold, device)
    out: Predictions = {}
    ids = sorted(files)
    for b in range(0, len(ids), batch_size):
        batch, scale = [], []
        for i in ids[b:b + batch_size]:
            with Image.open(files[i]) as im:
                im = im.convert("RGB")
                scale.append((im.width / size, im.height / size))
                batch.append(np.asarray(im.resize((size, size), Image.BILINEAR)))
        for i, (sx, sy), p in zip(ids[b:b + batch_size], scale, detect(model, np.stack(batch), device)):
            out[i] = dict(p, boxes=np.asarray(p["boxes"], np.float64) * [sx, sy, sx, sy])
    log.info("detector: %d images, %d detections (score >= %.2f)", len(out),
             sum(len(p["scores"]) for p in out.values()), score_threshold)
    return out


def score_images(cfg, train_classes: list[str], coco: dict, test_names: list[str], train: SelfLabels,
                 predictions: Predictions) -> dict:
    """The ``results`` dict of an image set (module doc): matchings, detection per matching, baselines, names."""
    lab = train.labelled()
    videos = train.video[lab] if cfg.m_shot_unit == "video" else None
    match = scores.matchings(train.pseudo[lab], train.true[lab], train.confidence[lab], train.num_clusters,
                             len(train_classes), cfg.m_shots, videos, cfg.m_shot_video_score)
    to_test, names = name_mapping(train_classes, test_names, read_class_names(cfg.class_names))
    reached = {t + 1 for t in to_test if t >= 0}
    dropped = [a for a in coco["annotations"] if a["category_id"] not in reached]
    target = dict(coco, annotations=[a for a in coco["annotations"] if a["category_id"] in reached])
    names["num_gt_boxes_left_out"] = len(dropped)
    if names["test_names_without_training_class"]:
        log.warning("image set: categories %s match no training class (names, or class_names=%r); their %d boxes "
                    "are left out", names["test_names_without_training_class"], cfg.class_names, len(dropped))
    predictions = {i: p for i, p in predictions.items() if i in {im["id"] for im in coco["images"]}}
    detection = {}
    for name, m in match.items():
        mapping = [to_test[c] if c >= 0 else -1 for c in m["mapping"]]     # cluster -> test category index
        detection[name] = scores.named(evaluate_detections(target, scores.mapped_detections(predictions, mapping)),
                                       test_names)
    agn = scores.class_agnostic(target)
    baselines = {"centre_box": scores.agnostic_scores(target, centre_box_detections(agn, cfg.centre_box_frac, [1])),
                 "whole_image": scores.agnostic_scores(target, whole_image_detections(agn, [1])),
                 "detector_agnostic": scores.agnostic_scores(target, scores.mapped_detections(predictions, None))}
    classes = [n for i, n in enumerate(test_names) if i + 1 in reached]
    for d in detection.values():
        d["ap50_per_class"] = {n: d["ap50_per_class"].get(n) for n in classes}
    return {"classes": classes, "training_classes": train_classes, "matching": match, "detection": detection,
            "baselines": baselines, "names": names,
            "summary": {"num_test_frames": len(coco["images"]), "num_gt_boxes": len(target["annotations"]),
                        "num_classes": len(classes), "num_clusters": train.num_clusters, "detection_gt": "all",
                        "num_train_self_labels": int(len(train.index)), "image_set": True}}


def run_image_evaluation(cfg, predictions: Predictions | None = None) -> dict:
    """Evaluate the detector on ``cfg.images_dir`` + ``cfg.gt``; writes results.json, tables.md, report.html and
    done.json (last) under ``cfg.out_dir``. ``predictions`` ({image id: {"boxes" xyxy image pixels, "scores",
    "labels"}}) replaces the detector run (known-answer tests)."""
    out = Path(cfg.out_dir)
    needed = {"images_dir": cfg.images_dir, "gt": cfg.gt, "manifest": cfg.manifest, "pseudo_train": cfg.pseudo_train,
              **({"detector": cfg.detector} if predictions is None else {})}
    missing = [f"{k}={p!r}" for k, p in needed.items() if not p or not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"image-set evaluation inputs missing: {', '.join(missing)}")
    manifest = read_manifest(cfg.manifest)
    coco, test_names, files = image_ground_truth(json.loads(Path(cfg.gt).read_text()), cfg.images_dir)
    if predictions is None:
        size = cfg.image_size or int(manifest.config.get("frame_size", 0)) or 224
        predictions = predict_images(cfg.detector, files, size, cfg.batch_size, cfg.score_threshold, cfg.device)
    train = read_self_labels(cfg.pseudo_train)
    results = score_images(cfg, manifest.classes, coco, test_names, train, predictions)
    results.update(dataset=cfg.dataset, config=to_dict(cfg), curves={"stage1": [], "detector": []})
    results["summary"]["detector"] = Path(cfg.detector).name if cfg.detector else "given predictions"
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    write_json(out / "results.json", results)
    paths = page.write_report(out, results, [])
    full = results["detection"].get("hungarian", {})
    done = {"results": str(out / "results.json"), "tables": paths["tables"], "report": paths["html"],
            "num_images": 0, "map_30": full.get("map_30"), "map_50": full.get("map_50"),
            "map_50_95": full.get("map_50_95"), "test_hungarian_acc": None}
    done = write_done(out, done, [out / "results.json", out / "config.yaml", paths["tables"], paths["html"]])
    log.info("image-set evaluation written to %s (mAP@0.5 = %s)", out, done["map_50"])
    return done
