"""The diagnosis scripts under scripts/ (cluster_probe runs in test_stage1 on a trained model)."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_oracle_pseudo_takes_each_frames_first_sounding_box(tmp_path):
    gt = {"images": [{"id": 0, "video_id": "a", "timestamp": 0.0}, {"id": 1, "video_id": "a", "timestamp": 0.5},
                     {"id": 2, "video_id": "b", "timestamp": 0.0}],
          "annotations": [{"image_id": 0, "bbox": [1, 1, 5, 5], "category_id": 2, "area": 25, "sounding": False},
                          {"image_id": 0, "bbox": [2, 2, 4, 4], "category_id": 1, "area": 16, "sounding": True},
                          {"image_id": 1, "bbox": [3, 3, 2, 2], "category_id": 0, "area": 4, "sounding": True},
                          {"image_id": 2, "bbox": [0, 0, 9, 9], "category_id": 2, "area": 81, "sounding": False}],
          "categories": [{"id": 0, "name": "violin"}, {"id": 1, "name": "drum"}, {"id": 2, "name": "piano"}]}
    pseudo = {"images": [{"id": 10, "video_id": "a", "timestamp": 0.0}, {"id": 11, "video_id": "a", "timestamp": 0.5},
                         {"id": 12, "video_id": "b", "timestamp": 0.0}]}
    run = tmp_path / "run"
    (run / "pseudo").mkdir(parents=True)
    (run / "synthetic").mkdir()
    (run / "pseudo" / "pseudo_train.json").write_text(json.dumps(pseudo))
    (run / "synthetic" / "gt_train.json").write_text(json.dumps(gt))
    _script("oracle_pseudo").main([str(run), str(tmp_path / "oracle")])
    doc = json.loads((tmp_path / "oracle" / "pseudo_train.json").read_text())
    got = {a["image_id"]: (a["bbox"], a["category_id"]) for a in doc["annotations"]}
    assert got == {10: ([2, 2, 4, 4], 2), 11: ([3, 3, 2, 2], 1)}        # frame b has no sounding object
    assert [c["id"] for c in doc["categories"]] == [1, 2, 3] and doc["info"]["annotated"] == 2

    from distributed.detector_train import load_pseudo_table           # the detector job reads it
    table, k = load_pseudo_table(tmp_path / "oracle" / "pseudo_train.json")
    assert k == 3 and table["index"].tolist() == [10, 11] and table["box"][0].tolist() == [2, 2, 6, 6]


def test_selfbox_probe_known_answers():
    """Three 8x8 heatmaps on 64x64 frames (8 px cells), one sounding box each: frame 0 peaks on its sounding
    object (a 3x3-cell blob exactly on the box, its maximum in the middle), frame 1 on a silent object, frame 2 on
    the background."""
    import numpy as np
    probe = _script("selfbox_probe").probe
    heat = np.zeros((3, 8, 8), np.float32)
    heat[0, 2:5, 2:5] = 1.8                                   # pixels [16, 40) x [16, 40)
    heat[0, 3, 3] = 2.0
    heat[1, 6, 6] = 1.0                                       # pixel centre (52, 52): the silent box
    heat[2, 0, 7] = 1.0                                       # top-right corner: nothing there
    sounding = [np.array([[16.0, 16, 40, 40]]), np.array([[0.0, 0, 16, 16]]), np.array([[20.0, 20, 40, 40]])]
    silent = [np.zeros((0, 4)), np.array([[48.0, 48, 60, 60]]), np.zeros((0, 4))]
    res = probe(heat, sounding, silent, (64, 64), betas=[0.5], beta=0.5,
                scores={"good": np.array([3.0, 2, 1]), "bad": np.array([1.0, 2, 3])})
    third = round(1 / 3, 4)
    assert res["pointing"] == {"sounding": third, "silent_only": third, "background": third}
    assert res["by_beta"]["0.5"]["iou50"] == third            # only frame 0's box finds its object
    assert res["failures"]["all"] == round(2 / 3, 4) and res["failures"]["peak_off_object"] == round(2 / 3, 4)
    assert res["true_size_at_peak"] == third
    assert res["ranking"]["good"] == [1.0, 0.5, 0.5, third]   # top 1, 2 (round(1.5)), 2, 3 frames
    assert res["ranking"]["bad"] == [0.0, 0.0, 0.0, third]
