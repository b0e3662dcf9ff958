"""Evaluation on a folder of still images (distributed/evaluation/images.py, jobs/evaluate.py images_dir=...) and the
OpenImages converter (data/gt_formats.py), on a tiny image folder and CSVs in OpenImages' own layout, with given
detections whose AP is known by hand."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.gt_formats import convert
from data.shards import write_manifest
from distributed.evaluation.evaluate import EvalConfig, run_evaluation
from distributed.evaluation.images import name_mapping
from jobs import convert_gt, evaluate as evaluate_job

DESCRIPTIONS = "/m/0mkg,Accordion\n/m/0342h,Guitar\n/m/026t6,Drum\n/m/07y_7,Violin\n/m/01yrx,Cat\n"
BOX_HEADER = ("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,"
              "IsDepiction,IsInside\n")
BOXES = BOX_HEADER + """\
000a1249af2bc5f0,xclick,/m/0mkg,1,0.1,0.5,0.2,0.6,0,0,0,0,0
000a1249af2bc5f0,xclick,/m/0342h,1,0.5,1.0,0.0,1.0,1,0,0,0,0
0b1c2d3e4f506172,xclick,/m/026t6,1,0.25,0.75,0.5,1.0,0,1,0,0,0
0b1c2d3e4f506172,xclick,/m/01yrx,1,0.0,0.2,0.0,0.2,0,0,0,0,0
1f2e3d4c5b6a7980,activemil,/m/07y_7,1,0.0,0.5,0.0,0.5,0,0,1,0,0
ffffffffffffffff,xclick,/m/0mkg,1,0.1,0.2,0.1,0.2,0,0,0,0,0
"""
SIZES = {"000a1249af2bc5f0": (200, 100), "0b1c2d3e4f506172": (100, 100), "1f2e3d4c5b6a7980": (300, 150)}
KEEP = ["Accordion", "Guitar", "Drum", "Violin"]
TRAIN_CLASSES = ["playing accordion", "playing acoustic guitar", "playing drum kit", "playing harp"]
CLUSTER_OF = {0: 2, 1: 0, 2: 3, 3: 1}          # training class -> cluster the self-labels put it in


@pytest.fixture
def openimages(tmp_path) -> dict:
    images = tmp_path / "test"
    images.mkdir()
    for image_id, (w, h) in SIZES.items():
        Image.new("RGB", (w, h), (90, 60, 30)).save(images / f"{image_id}.jpg")
    (tmp_path / "test-annotations-bbox.csv").write_text(BOXES)
    (tmp_path / "class-descriptions-boxable.csv").write_text(DESCRIPTIONS)
    (tmp_path / "names.txt").write_text("# chosen\n" + "\n".join(KEEP) + "\n")
    return {"root": tmp_path, "images": images, "boxes": tmp_path / "test-annotations-bbox.csv",
            "descriptions": tmp_path / "class-descriptions-boxable.csv", "names": tmp_path / "names.txt"}


def test_openimages_converter_by_hand(openimages):
    gt = convert("openimages", openimages["boxes"], descriptions=openimages["descriptions"],
                 images_dir=openimages["images"], classes=KEEP)
    assert [c["name"] for c in gt["categories"]] == KEEP
    assert [(im["file_name"], im["width"], im["height"]) for im in gt["images"]] == [
        ("000a1249af2bc5f0.jpg", 200, 100), ("0b1c2d3e4f506172.jpg", 100, 100), ("1f2e3d4c5b6a7980.jpg", 300, 150)]
    boxes = [(a["image_id"], a["category_id"], a["bbox"], a["iscrowd"]) for a in gt["annotations"]]
    assert boxes == [(1, 0, [20.0, 20.0, 80.0, 40.0], 0), (1, 1, [100.0, 0.0, 100.0, 100.0], 0),
                     (2, 2, [25.0, 50.0, 50.0, 50.0], 0), (3, 3, [0.0, 0.0, 150.0, 75.0], 1)]   # cat dropped
    with pytest.raises(ValueError, match="not display names"):
        convert("openimages", openimages["boxes"], descriptions=openimages["descriptions"],
                images_dir=openimages["images"], classes=["Tuba"])


def _train_artifacts(root: Path) -> dict:
    write_manifest(root / "shards", [], TRAIN_CLASSES, {"frame_size": 64})
    images, anns = [], []
    for n in range(12):                                  # three frames per class, each its own video
        c = n % 4
        images.append({"id": n, "file_name": f"{n}.jpg", "width": 64, "height": 64, "video_id": f"v{n}",
                       "timestamp": 0.0, "true_label": c})
        anns.append({"id": n + 1, "image_id": n, "category_id": CLUSTER_OF[c] + 1, "bbox": [0, 0, 32, 32],
                     "score": 0.9, "area": 1024, "iscrowd": 0})
    (root / "pseudo_train.json").write_text(json.dumps(
        {"images": images, "annotations": anns,
         "categories": [{"id": k + 1, "name": f"cluster{k}"} for k in range(4)]}))
    (root / "class_names.txt").write_text("playing accordion\tAccordion\nplaying acoustic guitar\tguitar\n"
                                          "playing drum kit\tDrum\n")
    return {"manifest": str(root / "shards" / "manifest.json"), "pseudo_train": str(root / "pseudo_train.json"),
            "class_names": str(root / "class_names.txt")}


def _det(boxes, clusters, scores=None) -> dict:
    return {"boxes": np.array(boxes, float).reshape(-1, 4), "labels": np.array(clusters, np.int64) + 1,
            "scores": np.array(scores if scores is not None else [0.9] * len(clusters), float)}


def _eval(openimages, tmp_path, predictions, out="ev") -> dict:
    gt = tmp_path / "gt_openimages.json"
    convert_gt.main(["openimages", str(openimages["boxes"]), str(gt), "--descriptions",
                     str(openimages["descriptions"]), "--images", str(openimages["images"]), "--classes",
                     str(openimages["names"])])
    cfg = EvalConfig(images_dir=str(openimages["images"]), gt=str(gt), out_dir=str(tmp_path / out),
                     dataset="OpenImages", m_shots=[1], **_train_artifacts(tmp_path))
    done = run_evaluation(cfg, predictions=predictions)
    return json.loads(Path(done["results"]).read_text())


def test_perfect_detections_score_one_and_unmatched_names_are_reported(openimages, tmp_path):
    preds = {1: _det([[20, 20, 100, 60], [100, 0, 200, 100]], [CLUSTER_OF[0], CLUSTER_OF[1]]),
             2: _det([[25, 50, 75, 100]], [CLUSTER_OF[2]]),
             3: _det([[0, 0, 150, 75]], [CLUSTER_OF[3]], [0.95])}       # harp cluster on the violin: not scored
    res = _eval(openimages, tmp_path, preds)
    det = res["detection"]["hungarian"]
    assert det["map_30"] == det["map_50"] == det["map_50_95"] == pytest.approx(1.0)
    assert det["ap50_per_class"] == pytest.approx({"Accordion": 1.0, "Guitar": 1.0, "Drum": 1.0})
    assert res["classes"] == ["Accordion", "Guitar", "Drum"]
    assert res["names"]["test_names_without_training_class"] == ["Violin"]          # left out of the mAP
    assert res["names"]["training_classes_without_test_name"] == ["playing harp"]   # its detections not scored
    assert res["names"]["num_gt_boxes_left_out"] == 1
    # class-agnostic, the harp box (ranked first) is a false positive: interpolated precision 3/4 at every recall
    assert res["baselines"]["detector_agnostic"]["map_50"] == pytest.approx(0.75, abs=0.01)
    tables = (tmp_path / "ev" / "tables.md").read_text()
    assert "OpenImages" in tables and "Accordion" in tables


def test_a_wrong_class_costs_its_class_ap(openimages, tmp_path):
    preds = {1: _det([[20, 20, 100, 60], [100, 0, 200, 100]], [CLUSTER_OF[0], CLUSTER_OF[1]]),
             2: _det([[25, 50, 75, 100]], [CLUSTER_OF[0]], [0.95])}      # the drum called an accordion, ranked first
    res = _eval(openimages, tmp_path, preds)
    det = res["detection"]["hungarian"]
    assert det["ap50_per_class"]["Drum"] == 0.0 and det["ap50_per_class"]["Guitar"] == pytest.approx(1.0)
    assert det["ap50_per_class"]["Accordion"] == pytest.approx(0.5, abs=0.02)   # an FP, then the TP: precision 1/2
    assert det["map_50"] == pytest.approx((1.0 + 0.0 + det["ap50_per_class"]["Accordion"]) / 3)


def test_name_mapping_is_case_insensitive_and_many_to_one():
    to_test, rep = name_mapping(["a1", "a2", "b", "c"], ["A", "B", "D"], {"a1": "A", "a2": "a"})
    assert to_test == [0, 0, 1, -1]
    assert rep["test_names_without_training_class"] == ["D"] and rep["training_classes_without_test_name"] == ["c"]


def test_evaluate_dry_run_with_an_image_folder(openimages, tmp_path, capsys):
    arts = _train_artifacts(tmp_path)
    argv = [f"images_dir={openimages['images']}", f"gt={openimages['boxes']}", f"manifest={arts['manifest']}",
            f"pseudo_train={arts['pseudo_train']}", f"class_names={arts['class_names']}",
            f"out_dir={tmp_path / 'o'}"]
    with pytest.raises(SystemExit) as e:
        evaluate_job.main([*argv, "--dry-run"])
    assert e.value.code == 2 and "detector" in capsys.readouterr().err          # pseudo_test is not needed
    (tmp_path / "det.pt").write_bytes(b"")
    with pytest.raises(SystemExit) as e:
        evaluate_job.main([*argv, f"detector={tmp_path / 'det.pt'}", "--dry-run"])
    assert e.value.code == 0 and not (tmp_path / "o").exists()


def test_the_job_runs_a_detector_over_the_folder(openimages, tmp_path, monkeypatch):
    """An (untrained) detector through jobs/evaluate.py: every image is seen, boxes come back in image pixels."""
    from avdet.config import DetectorConfig
    from avdet.detector import build_detector, save_detector
    from distributed.evaluation import images as eval_images
    cfg = DetectorConfig(backbone="mobilenet_v3_fpn", num_classes=4, min_size=64, max_size=64)
    det = save_detector(build_detector(cfg), cfg, tmp_path / "det" / "detector.pt")
    gt = tmp_path / "gt.json"
    convert_gt.main(["openimages", str(openimages["boxes"]), str(gt), "--descriptions",
                     str(openimages["descriptions"]), "--images", str(openimages["images"])])
    seen = {}
    real = eval_images.predict_images

    def spy(*a, **kw):
        seen.update(real(*a, **kw))
        return seen

    monkeypatch.setattr(eval_images, "predict_images", spy)
    arts = _train_artifacts(tmp_path)
    done = evaluate_job.main([f"images_dir={openimages['images']}", f"gt={gt}", f"detector={det}",
                              f"manifest={arts['manifest']}", f"pseudo_train={arts['pseudo_train']}",
                              f"class_names={arts['class_names']}", f"out_dir={tmp_path / 'ev'}", "m_shots=[1]",
                              "score_threshold=0.0"])
    assert sorted(seen) == [1, 2, 3] and Path(done["results"]).is_file()
    for i, (w, h) in zip((1, 2, 3), SIZES.values()):
        b = seen[i]["boxes"]
        assert len(b) == 0 or (b[:, [0, 2]].max() <= w + 1e-3 and b[:, [1, 3]].max() <= h + 1e-3)
