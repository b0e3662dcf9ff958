"""Only annotated frames are evaluated (issue 16, item 1).

Real test sets (VGG-SS, AudioSet-instrument) annotate one frame per clip while ingest keeps up to ten. The known
answer: 3 clips of 10 frames, one annotated frame per clip, a detector that is exact on the annotated frames and also
fires, more confidently, on the 9 others. Scored on the annotated frames only, mAP = 1; had the unannotated frames been
images of the evaluation, each clip would add 9 higher-scoring false positives and AP@0.5 would be about 0.1.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from avdet.metrics import evaluate_detections
from data.pseudo_coco import read_self_labels
from data.schema import SampleMeta, encode_sample
from data.shards import ShardWriter, read_manifest, write_manifest
from distributed.evaluation import frames as eval_data
from distributed.evaluation.evaluate import EvalConfig, run_evaluation

CLASSES = ["cat", "dog"]
FS, OW, OH = 32, 64, 64
SR = 16000
CLIPS, PER_CLIP, ANNOTATED = 3, 10, 5           # frame k of clip v is at t = 0.5 k; frame 5 (t = 2.5 s) is annotated
GT_BOX = (16, 16, 48, 48)                       # original pixels (x0, y0, x1, y1) -> frame pixels (8, 8, 24, 24)


def _index(v: int, k: int) -> int:
    return 100 * v + k


def _frames(video_ids, times) -> eval_data.TestFrames:
    n = len(times)
    return eval_data.TestFrames(np.arange(n, dtype=np.int64), list(video_ids), np.asarray(times, float),
                                np.zeros(n, np.int64), FS, FS)


def test_join_nearest_within_tolerance_and_counts():
    frames = _frames(["a"] * 3 + ["b"] * 3, [0.0, 0.5, 1.0, 0.0, 0.5, 1.0])
    gt = [{"id": 1, "video_id": "a", "timestamp": 0.5004},      # joins frame 1 (0.4 ms off)
          {"id": 2, "video_id": "a", "timestamp": 0.75},        # clip a joined elsewhere: unsampled
          {"id": 3, "video_id": "b", "timestamp": 0.51},        # 10 ms off: missed at 1 ms, joined at 20 ms
          {"id": 4, "video_id": "zzz", "timestamp": 1.0}]       # clip never ingested: missed
    j = eval_data.join_ground_truth(gt, frames, tolerance_s=1e-3)
    assert j.frame_of == {1: 1}
    assert j.unsampled == [("a", 0.75)] and j.missed == [("b", 0.51), ("zzz", 1.0)]
    r = j.report()
    assert (r["num_gt_images"], r["num_joined"], r["num_unsampled"], r["num_missed"]) == (4, 1, 1, 2)
    assert r["missed_fraction"] == pytest.approx(0.5) and r["num_frames_without_gt"] == 5
    j = eval_data.join_ground_truth(gt, frames, tolerance_s=0.02)
    assert j.frame_of == {1: 1, 3: 4} and j.missed == [("zzz", 1.0)]
    with pytest.raises(ValueError, match="both join frame"):          # 0.3 s tolerance: ids 1 and 2 take frame 1
        eval_data.join_ground_truth(gt[:2], frames, tolerance_s=0.3)


def _gt(extra_images=()) -> dict:
    images, anns = [], []
    for v in range(CLIPS):
        images.append({"id": 10 + v, "video_id": f"clip{v}", "timestamp": 0.5 * ANNOTATED, "width": OW, "height": OH})
        x0, y0, x1, y1 = GT_BOX
        anns.append({"id": v + 1, "image_id": 10 + v, "category_id": v % 2, "bbox": [x0, y0, x1 - x0, y1 - y0],
                     "sounding": True})
    images += list(extra_images)
    return {"images": images, "annotations": anns, "categories": [{"id": i, "name": c} for i, c in enumerate(CLASSES)]}


def test_only_annotated_frames_are_images_and_misses_raise():
    frames = _frames([f"clip{v}" for v in range(CLIPS) for _ in range(PER_CLIP)],
                     [0.5 * k for _ in range(CLIPS) for k in range(PER_CLIP)])
    coco = eval_data.eval_ground_truth(_gt(), frames, CLASSES)
    assert [im["id"] for im in coco["images"]] == [v * PER_CLIP + ANNOTATED for v in range(CLIPS)]
    assert coco["info"]["ground_truth"]["num_frames_without_gt"] == CLIPS * (PER_CLIP - 1)
    lost = {"id": 99, "video_id": "not_ingested", "timestamp": 3.0, "width": OW, "height": OH}
    with pytest.raises(ValueError, match=r"'not_ingested' at t = 3.000 s"):
        eval_data.eval_ground_truth(_gt([lost]), frames, CLASSES)
    coco = eval_data.eval_ground_truth(_gt([lost]), frames, CLASSES, max_unmatched_fraction=0.25)   # 1 of 4 missed
    assert coco["info"]["ground_truth"]["num_missed"] == 1 and len(coco["images"]) == CLIPS


def _write_artifacts(root: Path) -> dict:
    w = ShardWriter(root / "shards")
    samples = [encode_sample(SampleMeta(_index(v, k), f"clip{v}", 0.5 * k, CLASSES[v % 2], "test", OW, OH),
                             np.full((FS, FS, 3), 80, np.uint8), np.zeros(1600, np.int16), SR)
               for v in range(CLIPS) for k in range(PER_CLIP)]
    manifest = write_manifest(root / "shards", [w.write("test", 0, samples)], CLASSES,
                              {"frame_size": FS, "audio": {"sample_rate": SR, "window_s": 0.1}})
    (root / "gt.json").write_text(json.dumps(_gt()))

    def pseudo(rows):   # (index, true class, cluster)
        return {"images": [{"id": i, "video_id": f"v{i}", "timestamp": 0.0, "width": FS, "height": FS,
                            "true_label": t} for i, t, _k in rows],
                "annotations": [{"id": n + 1, "image_id": i, "bbox": [8, 8, 16, 16], "category_id": k + 1,
                                 "score": 0.9} for n, (i, _t, k) in enumerate(rows)],
                "categories": [{"id": 1, "name": "c0"}, {"id": 2, "name": "c1"}]}
    (root / "ptrain.json").write_text(json.dumps(pseudo([(i, i % 2, 1 - i % 2) for i in range(20)])))
    (root / "ptest.json").write_text(json.dumps(pseudo([(_index(v, k), v % 2, 1 - v % 2)
                                                        for v in range(CLIPS) for k in range(PER_CLIP)])))
    return {"manifest": str(manifest), "gt": str(root / "gt.json"), "pseudo_train": str(root / "ptrain.json"),
            "pseudo_test": str(root / "ptest.json")}


def _predictions() -> dict:
    """Exact on the annotated frame (score 0.5), a confident wrong box (score 0.9) on every other frame; the
    detector's pseudo-class of class c is cluster 1 − c (label 2 − c)."""
    out = {}
    for v in range(CLIPS):
        for k in range(PER_CLIP):
            box, score = ([8.0, 8.0, 24.0, 24.0], 0.5) if k == ANNOTATED else ([0.0, 0.0, 6.0, 6.0], 0.9)
            out[_index(v, k)] = {"boxes": np.array([box]), "scores": np.array([score]),
                                 "labels": np.array([2 - v % 2])}
    return out


def test_detector_firing_on_unannotated_frames_scores_100(tmp_path):
    art = _write_artifacts(tmp_path)
    done = run_evaluation(EvalConfig(**art, out_dir=str(tmp_path / "ev"), num_pictures=0), predictions=_predictions())
    res = json.loads(Path(done["results"]).read_text())
    assert res["matching"]["hungarian"]["mapping"] == [1, 0]
    assert res["detection"]["hungarian"]["map_50"] == pytest.approx(1.0)
    assert res["baselines"]["detector_agnostic"]["map_50"] == pytest.approx(1.0)
    assert res["summary"]["num_test_frames"] == CLIPS
    assert res["ground_truth"]["num_frames_without_gt"] == CLIPS * (PER_CLIP - 1)
    assert res["ground_truth"]["num_missed"] == 0
    assert res["localisation"]["methods"]["detector"]["num_samples"] == CLIPS
    assert res["matching"]["1-shot"]["unit"] == "video"
    assert "3 test frames (the annotated ones of 30 ingested; 0 of 3 ground-truth images joined no frame" in \
        Path(done["tables"]).read_text()
    # the bug this guards against: every ingested frame an image of the evaluation
    frames = eval_data.read_test_frames(read_manifest(art["manifest"]), "test")
    all_frames = {"images": [{"id": int(i), "width": FS, "height": FS} for i in frames.index],
                  "annotations": [dict(a, image_id=_index(v, ANNOTATED), id=v + 1, category_id=v % 2 + 1,
                                       bbox=[8, 8, 16, 16]) for v, a in enumerate(_gt()["annotations"])],
                  "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}
    dets = []                       # the correct class (category c + 1 for clip v's class c = v % 2), xywh boxes
    for i, p in _predictions().items():
        (x0, y0, x1, y1), v = p["boxes"][0], i // 100
        dets.append({"image_id": i, "category_id": v % 2 + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                     "score": float(p["scores"][0])})
    assert evaluate_detections(all_frames, dets)["map_50"] < 0.2


def test_localisation_threshold_is_chosen_on_training_frames(tmp_path):
    """Training frames 0..19 have the self-box (8, 8, 24, 24); the detector finds it with score 0.42 plus a wrong
    (0, 0, 4, 4) box at 0.3: mean cIoU is 256/272 for t <= 0.3, 1 for 0.35..0.4, 0 above, so t = 0.35 (lowest tie).
    The test frames' own scores (0.5 exact, 0.9 wrong) would have led elsewhere; they are not looked at."""
    art = _write_artifacts(tmp_path)
    train_preds = {i: {"boxes": np.array([[8.0, 8.0, 24.0, 24.0], [0.0, 0.0, 4.0, 4.0]]),
                       "scores": np.array([0.42, 0.3]), "labels": np.array([1, 1])} for i in range(20)}
    done = run_evaluation(EvalConfig(**art, out_dir=str(tmp_path / "ev"), num_pictures=0), predictions=_predictions(),
                          train_predictions=train_preds)
    loc = json.loads(Path(done["results"]).read_text())["localisation"]
    assert loc["threshold"] == pytest.approx(0.35) and loc["threshold_source"] == "train_pseudo (20 training frames)"
    assert loc["methods"]["detector"]["mean_ciou"] == pytest.approx(1.0)      # the 0.5 exact boxes are kept
    done = run_evaluation(EvalConfig(**art, out_dir=str(tmp_path / "fixed"), num_pictures=0, loc_threshold=0.6,
                                     loc_threshold_from="fixed"), predictions=_predictions(),
                          train_predictions=train_preds)
    loc = json.loads(Path(done["results"]).read_text())["localisation"]
    assert loc["threshold"] == pytest.approx(0.6) and loc["threshold_source"] == "fixed"
    assert loc["methods"]["detector"]["mean_ciou"] == pytest.approx(0.0)      # 0.5 < 0.6: nothing kept
    done = run_evaluation(EvalConfig(**art, out_dir=str(tmp_path / "none"), num_pictures=0),
                          predictions=_predictions())                        # no detector, no training predictions
    loc = json.loads(Path(done["results"]).read_text())["localisation"]
    assert loc["threshold"] == pytest.approx(0.5) and loc["threshold_source"].startswith("fixed (no training")


def test_new_config_keys_are_checked():
    from avdet.config import ConfigError, load_config

    cfg = load_config(EvalConfig, None, ["m_shot_unit=frame", "max_unmatched_gt_fraction=0.2",
                                         "gt_timestamp_tolerance_s=0.01", "loc_threshold_from=fixed"])
    assert (cfg.m_shot_unit, cfg.max_unmatched_gt_fraction, cfg.loc_threshold_from) == ("frame", 0.2, "fixed")
    for bad in ("m_shot_unit=clip", "max_unmatched_gt_fraction=1.5", "gt_timestamp_tolerance_s=-1",
                "loc_threshold_from=test", "m_shot_video_score=median"):
        with pytest.raises(ConfigError):
            load_config(EvalConfig, None, [bad])


def test_self_labels_carry_video_ids(tmp_path):
    doc = {"images": [{"id": 1, "video_id": "a", "width": 8, "height": 8, "true_label": 0},
                      {"id": 2, "video_id": None, "width": 8, "height": 8, "true_label": 1}],
           "annotations": [{"id": 1, "image_id": 1, "bbox": [0, 0, 4, 4], "category_id": 1, "score": 0.5},
                           {"id": 2, "image_id": 2, "bbox": [0, 0, 4, 4], "category_id": 2, "score": 0.5}],
           "categories": [{"id": 1}, {"id": 2}]}
    (tmp_path / "p.json").write_text(json.dumps(doc))
    sl = read_self_labels(tmp_path / "p.json")
    assert list(sl.video) == ["a", "#2"]          # no video id: the frame is its own video
