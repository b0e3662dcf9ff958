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
