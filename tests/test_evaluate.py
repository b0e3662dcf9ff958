"""Evaluation stage on hand-made artifacts: shards of 6 test frames, COCO ground truth in original video pixels,
pseudo-annotations whose clusters are a known permutation of the classes, heatmaps, histories, a tiny detector.

The known-answer test injects perfect detections labelled with permuted pseudo-classes: after Hungarian matching
(learned from the training self-labels) mAP@0.5 must be 1 and the per-class table must name the right classes.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from avdet.config import DetectorConfig
from avdet.detector import build_detector, save_detector
from data.schema import SampleMeta, encode_sample
from data.shards import ShardWriter, read_frames, read_manifest, write_manifest
from distributed.evaluation import frames as eval_data
from distributed.evaluation.evaluate import EvalConfig, run_evaluation
from distributed.evaluation.infer import DetectorActor, _rows_to_predictions, predict_indices, predict_plain, predict_ray

CLASSES = ["cat", "dog", "cow"]
PERM = [2, 0, 3]                  # class c is cluster PERM[c]; cluster 1 is an extra (K = 4 > C = 3)
K = 4
FS, OW, OH = 64, 128, 96          # frame size, original video size
SR, WINDOW = 16000, 0.1
# per test frame: [(class, sounding, (x0, y0, x1, y1) in original pixels)]; "cow" never appears in the test set
OBJECTS = [
    [(0, True, (10, 10, 60, 50))],
    [(1, True, (50, 30, 120, 90)), (0, False, (0, 0, 30, 30))],
    [(0, True, (20, 20, 100, 80))],
    [(1, True, (4, 40, 64, 92))],
    [(1, True, (60, 8, 124, 60)), (1, False, (8, 50, 40, 90))],
    [(0, True, (30, 10, 90, 70))],
]
BASE = 1000                       # test sample indices BASE..BASE+5


def _scale(box):
    x0, y0, x1, y1 = box
    return [x0 * FS / OW, y0 * FS / OH, x1 * FS / OW, y1 * FS / OH]


def _frame(objs) -> np.ndarray:
    img = np.full((FS, FS, 3), 90, np.uint8)
    for c, _s, box in objs:
        x0, y0, x1, y1 = (int(round(v)) for v in _scale(box))
        img[y0:y1, x0:x1] = [(220, 60, 60), (60, 200, 60), (60, 60, 220)][c]
    return img


def write_shards(root: Path) -> Path:
    w = ShardWriter(root / "shards")
    samples = []
    for j, objs in enumerate(OBJECTS):
        meta = SampleMeta(BASE + j, f"vid{j // 2}", 0.5 * (j % 2) + 0.25, CLASSES[objs[0][0]], "test", OW, OH)
        samples.append(encode_sample(meta, _frame(objs), np.zeros(int(SR * WINDOW), np.int16), SR))
    info = w.write("test", 0, samples)
    cfg = {"frame_size": FS, "audio": {"sample_rate": SR, "window_s": WINDOW}}
    return write_manifest(root / "shards", [info], CLASSES, cfg)


def write_gt(root: Path) -> Path:
    images, anns = [], []
    for j, objs in enumerate(OBJECTS):
        images.append({"id": 7 + j, "video_id": f"vid{j // 2}", "timestamp": 0.5 * (j % 2) + 0.25 + 1e-7,
                       "width": OW, "height": OH})
        for c, s, (x0, y0, x1, y1) in objs:
            anns.append({"id": len(anns) + 1, "image_id": 7 + j, "category_id": c, "bbox": [x0, y0, x1 - x0, y1 - y0],
                         "area": (x1 - x0) * (y1 - y0), "iscrowd": 0, "sounding": s})
    gt = {"images": images, "annotations": anns, "categories": [{"id": i, "name": n} for i, n in enumerate(CLASSES)]}
    (root / "gt_test.json").write_text(json.dumps(gt))
    return root / "gt_test.json"


def _pseudo(rows, width, height) -> dict:
    """rows: (index, true_label, cluster, confidence, bbox xywh)."""
    return {"images": [{"id": i, "video_id": f"v{i}", "timestamp": 0.0, "width": width, "height": height,
                        "true_label": t} for i, t, *_ in rows],
            "annotations": [{"id": n + 1, "image_id": i, "bbox": b, "category_id": k + 1, "score": s}
                            for n, (i, _t, k, s, b) in enumerate(rows)],
            "categories": [{"id": k + 1, "name": f"cluster{k}"} for k in range(K)]}


def write_pseudo(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    train = []
    for i in range(40):
        c = i % 3
        k = PERM[c] if i % 10 else 1          # every 10th frame falls in the extra cluster 1
        train.append((i, c if i % 7 else -1, k, float(rng.uniform(0.2, 1.0)), [1, 1, 10, 10]))
    test = []
    for j, objs in enumerate(OBJECTS):        # self-box = the sounding object, in frame pixels (image = frame)
        c, _s, box = objs[0]
        x0, y0, x1, y1 = _scale(box)
        test.append((BASE + j, c, PERM[c], 0.8, [x0, y0, x1 - x0, y1 - y0]))
    (root / "pseudo_train.json").write_text(json.dumps(_pseudo(train, FS, FS)))
    (root / "pseudo_test.json").write_text(json.dumps(_pseudo(test, FS, FS)))
    return root / "pseudo_train.json", root / "pseudo_test.json"


def write_extras(root: Path) -> dict:
    yy, xx = np.mgrid[0:8, 0:8]
    maps = np.stack([np.exp(-((xx - 2 - j) ** 2 + (yy - 3) ** 2) / 4.0) for j in range(len(OBJECTS))])
    np.savez(root / "heatmaps_test.npz", index=np.arange(BASE, BASE + len(OBJECTS)), heatmap=maps.astype(np.float32),
             boxes=np.tile([0.0, 0.0, 10.0, 10.0], (len(OBJECTS), 1)))
    (root / "stage1").mkdir()
    (root / "stage1" / "done.json").write_text(json.dumps({"metrics": [
        {"epoch": e, "train_loss": 3.0 - 0.4 * e, "relabel_true_hungarian_acc": 0.3 + 0.1 * e} for e in range(4)]}))
    return {"heatmaps": str(root / "heatmaps_test.npz"), "stage1_done": str(root / "stage1" / "done.json")}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("eval")
    ptrain, ptest = write_pseudo(root)
    return {"root": root, "manifest": str(write_shards(root)), "gt": str(write_gt(root)),
            "pseudo_train": str(ptrain), "pseudo_test": str(ptest), **write_extras(root)}


@pytest.fixture(scope="module")
def detector(artifacts) -> Path:
    cfg = DetectorConfig(backbone="mobilenet_v3_fpn", num_classes=K, min_size=64, max_size=64)
    path = save_detector(build_detector(cfg), cfg, artifacts["root"] / "det" / "detector.pt")
    (path.parent / "history.json").write_text(json.dumps([{"epoch": e, "loss": 1.0 / (e + 1)} for e in range(3)]))
    return path


def _config(artifacts, out: Path, **kw) -> EvalConfig:
    keys = ("manifest", "gt", "pseudo_train", "pseudo_test", "heatmaps", "stage1_done")
    return EvalConfig(**{k: artifacts[k] for k in keys}, out_dir=str(out), dataset="fake", **kw)


def perfect_predictions() -> dict:
    """Every GT object exactly, labelled with its class's cluster (+1), plus a weak box of the unmatched cluster 1."""
    out = {}
    for j, objs in enumerate(OBJECTS):
        boxes = [_scale(b) for _c, _s, b in objs] + [[0, 0, 5, 5]]
        labels = [PERM[c] + 1 for c, _s, _b in objs] + [2]
        out[BASE + j] = {"boxes": np.array(boxes), "scores": np.array([0.9] * len(objs) + [0.1]),
                         "labels": np.array(labels)}
    return out


def test_ground_truth_is_joined_and_rescaled(artifacts):
    m = read_manifest(artifacts["manifest"])
    frames = eval_data.read_test_frames(m, "test")
    assert (frames.height, frames.width) == (FS, FS) and list(frames.index) == list(range(BASE, BASE + 6))
    coco = eval_data.eval_ground_truth(json.loads(Path(artifacts["gt"]).read_text()), frames, CLASSES)
    first = [a for a in coco["annotations"] if a["image_id"] == BASE + 1]
    assert [a["category_id"] for a in first] == [2, 1] and [a["sounding"] for a in first] == [True, False]
    np.testing.assert_allclose(first[0]["bbox"], [50 * FS / OW, 30 * FS / OH, 70 * FS / OW, 60 * FS / OH])


def test_test_cluster_figures_cover_the_evaluated_frames_only(artifacts, tmp_path):
    """A test self-label of a frame without ground truth (a clip of another evaluation's split) is not counted."""
    doc = json.loads(Path(artifacts["pseudo_test"]).read_text())
    extra = _pseudo([(BASE + 50, 0, PERM[1], 0.8, [1, 1, 4, 4])], FS, FS)      # true class 0 in class 1's cluster
    doc["images"] += extra["images"]
    doc["annotations"] += [dict(a, id=len(doc["annotations"]) + 1) for a in extra["annotations"]]
    (tmp_path / "pseudo_test.json").write_text(json.dumps(doc))
    cfg = dataclasses.replace(_config(artifacts, tmp_path / "ev"), pseudo_test=str(tmp_path / "pseudo_test.json"))
    res = json.loads(Path(run_evaluation(cfg, predictions=perfect_predictions())["results"]).read_text())
    assert res["clusters"]["test"]["hungarian_acc"] == pytest.approx(1.0)
    assert res["clusters"]["test"]["n"] == len(OBJECTS)


def test_known_answer_perfect_detections(artifacts, tmp_path):
    done = run_evaluation(_config(artifacts, tmp_path / "ev"), predictions=perfect_predictions())
    res = json.loads(Path(done["results"]).read_text())
    assert res["matching"]["hungarian"]["mapping"] == [1, -1, 0, 2]         # inverse of PERM; cluster 1 unmatched
    full = res["detection"]["hungarian"]
    assert full["map_50"] == pytest.approx(1.0) and full["map_30"] == pytest.approx(1.0)
    assert full["map_50_95"] == pytest.approx(1.0)
    assert full["ap50_per_class"] == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0), "cow": None}
    assert res["detection"]["argmax"]["map_50"] == pytest.approx(1.0)
    assert res["clusters"]["test"]["hungarian_acc"] == pytest.approx(1.0)
    assert res["matching"]["hungarian"]["test_self_label_acc"] == pytest.approx(1.0)
    assert res["localisation"]["methods"]["self_boxes"]["iou50_success"] == pytest.approx(1.0)
    assert res["baselines"]["self_boxes_hungarian"]["ap50_per_class"]["cow"] is None
    assert res["baselines"]["detector_agnostic"]["map_50"] == pytest.approx(1.0)
    assert 0.0 <= res["baselines"]["centre_box"]["map_30"] <= 1.0
    tables = Path(done["tables"]).read_text()
    row = next(line for line in tables.splitlines() if line.startswith("| fake (detector)"))
    assert row.replace(" ", "") == "|fake(detector)|100.0|100.0|100.0|-|"
    assert all(f"Table {n}." in tables for n in range(1, 7))
    imgs = list((tmp_path / "ev" / "img").glob("*.png"))
    assert len([p for p in imgs if p.name.startswith("heat_")]) == 6
    assert any(p.name.startswith("curve_stage1") for p in imgs) and (tmp_path / "ev" / "report.html").is_file()
    mtime = (tmp_path / "ev" / "done.json").stat().st_mtime_ns
    assert run_evaluation(_config(artifacts, tmp_path / "ev")) == done        # complete stage: skipped
    assert (tmp_path / "ev" / "done.json").stat().st_mtime_ns == mtime


def test_job_runs_the_detector(artifacts, detector, tmp_path):
    from jobs.evaluate import main

    cfg = _config(artifacts, tmp_path / "job", detector=str(detector), num_pictures=3)
    overrides = [f"{k}={getattr(cfg, k)}" for k in ("manifest", "gt", "pseudo_train", "pseudo_test", "heatmaps",
                                                     "stage1_done", "out_dir", "detector", "num_pictures")]
    done = main(overrides + ["dataset=fake"])
    res = json.loads(Path(done["results"]).read_text())
    assert set(res["detection"]) == {"hungarian", "argmax", "1-shot", "10-shot"}
    assert {"centre_box", "whole_image", "self_boxes", "self_boxes_hungarian", "weak_sup",
            "detector_agnostic"} == set(res["baselines"])
    assert set(res["localisation"]["methods"]) == {"whole_image", "self_boxes", "detector"}
    assert len(res["curves"]["detector"]) == 3 and res["summary"]["num_test_frames"] == 6
    names = {p.name for p in (tmp_path / "job" / "img").glob("*.png")}
    assert {"curve_detector_loss.png", "confusion_test.png"} <= names
    assert len([n for n in names if n.startswith("det_")]) == 3


def test_actor_udf_matches_plain(artifacts, detector):
    """The Ray UDF's row format round-trips to the plain loop's predictions (no Ray needed)."""
    m = read_manifest(artifacts["manifest"])
    plain = predict_plain(detector, m, "test", batch_size=4, score_threshold=0.0)
    frames = read_frames(m, "test", plain)
    idx = np.array(sorted(frames))
    rows = DetectorActor(str(detector), 0.0)({"frames": np.stack([frames[i] for i in idx]), "index": idx})
    _check_same(plain, _rows_to_predictions(rows))


def test_predict_indices_matches_plain_on_those_frames(artifacts, detector):
    m = read_manifest(artifacts["manifest"])
    plain = predict_plain(detector, m, "test", batch_size=4, score_threshold=0.0)
    some = predict_indices(detector, m, "test", [BASE + 1, BASE + 4, 99999], batch_size=4, score_threshold=0.0)
    assert sorted(some) == [BASE + 1, BASE + 4]                  # 99999 is no sample: absent
    for i in some:
        np.testing.assert_allclose(np.sort(some[i]["scores"]), np.sort(plain[i]["scores"]), atol=1e-5)
    assert predict_indices(detector, m, "train", [BASE]) == {}    # no training shard: nothing, detector not loaded


def _check_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b) == list(range(BASE, BASE + 6))
    for i in a:
        np.testing.assert_allclose(np.sort(b[i]["scores"]), np.sort(a[i]["scores"]), atol=1e-5)
        assert len(b[i]["boxes"]) == len(a[i]["boxes"]) and len(b[i]["labels"]) == len(a[i]["labels"])


@pytest.mark.slow   # a local Ray plus an actor that imports torch: ~75 s on 2 CPUs
def test_ray_inference_matches_plain(artifacts, detector):
    m = read_manifest(artifacts["manifest"])
    plain = predict_plain(detector, m, "test", batch_size=4, score_threshold=0.0)
    ray_preds = predict_ray(detector, m, "test", batch_size=4, score_threshold=0.0, num_actors=1)
    _check_same(plain, ray_preds)


def test_selective_search_row(artifacts, tmp_path):
    done = run_evaluation(_config(artifacts, tmp_path / "ss", selective_search_boxes=20, num_pictures=0),
                          predictions=perfect_predictions())
    res = json.loads(Path(done["results"]).read_text())
    ss = res["baselines"]["selective_search"]
    assert ss["map_30"] > 0.0 and ss["map_50"] <= ss["map_30"] and "ap50_per_class" not in ss   # it finds objects
    assert "| Selective Search\\* | ✓ |" in Path(done["tables"]).read_text()
    assert ss["proposals"] == "computed"


def test_selective_search_row_reads_a_stored_proposal_set(artifacts, tmp_path):
    """With the set ``selective_search-fast-20`` stored beside the shards (jobs/proposals.py), the row scores its
    boxes instead of recomputing them: here a stored 1-pixel box per frame, which finds nothing."""
    import shutil

    from data.proposals import ProposalSettings, set_dir, sidecar_path, write_header, write_sidecar
    from data.shards import iter_tar_groups
    m = read_manifest(artifacts["manifest"])
    directory = set_dir(m, "selective_search-fast-20")
    try:
        shards = {}
        for info in m.split_shards("test"):
            keys = [k for k, _ in iter_tar_groups(m.shard_path(info))]
            sha = write_sidecar(sidecar_path(directory, info.path), keys, [np.array([[0, 0, 1, 1.0]])] * len(keys),
                                [np.ones(1)] * len(keys), 20)
            shards[info.path] = {"shard_sha256": info.sha256, "sha256": sha, "frames": len(keys)}
        write_header(directory, ProposalSettings(max_boxes=20), shards)
        done = run_evaluation(_config(artifacts, tmp_path / "stored", selective_search_boxes=20, num_pictures=0),
                              predictions=perfect_predictions())
        ss = json.loads(Path(done["results"]).read_text())["baselines"]["selective_search"]
        assert ss["proposals"] == "stored" and ss["map_30"] == 0.0
    finally:
        shutil.rmtree(directory.parent)


def test_a_class_agnostic_run_is_scored_class_agnostic_only(artifacts, tmp_path):
    """One pseudo-category (stage1.method=iterative): no class-aware detection rows (a Hungarian "mAP" of one
    category against C classes would be a meaningless 1/C of an AP), the detector's class-agnostic AP in their place;
    the perfect detections score 1 there."""
    root = tmp_path / "agnostic"
    root.mkdir()
    for split in ("train", "test"):
        doc = json.loads(Path(artifacts[f"pseudo_{split}"]).read_text())
        doc["annotations"] = [dict(a, category_id=1) for a in doc["annotations"]]
        doc["categories"] = [{"id": 1, "name": "object"}]
        (root / f"pseudo_{split}.json").write_text(json.dumps(doc))
    preds = {i: dict(p, labels=np.ones_like(p["labels"])) for i, p in perfect_predictions().items()}
    cfg = _config({**artifacts, "pseudo_train": str(root / "pseudo_train.json"),
                   "pseudo_test": str(root / "pseudo_test.json")}, root / "ev")
    done = run_evaluation(cfg, predictions=preds)
    res = json.loads(Path(done["results"]).read_text())
    assert res["summary"]["class_agnostic"] is True and res["summary"]["num_clusters"] == 1
    assert res["detection"] == {} and "self_boxes_hungarian" not in res["baselines"]
    assert res["baselines"]["detector_agnostic"]["map_50"] == pytest.approx(1.0)
    assert done["map_50"] is None and done["map_50_agnostic"] == pytest.approx(1.0)
    tables = Path(done["tables"]).read_text()
    assert "| Ours - full |" not in tables and "| Ours - detector\\* |" in tables
    assert "one pseudo-category: class-agnostic rows only" in tables
