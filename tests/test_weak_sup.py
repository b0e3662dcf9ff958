"""The paper's "Ours - weak sup." baseline: the self-boxes with the TRUE video labels train the same detector job,
evaluated with the identity class mapping, shown in the main report's Table 1."""
import json
from pathlib import Path

import pytest

from distributed.pseudo import true_label_document

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "clusters/local/pipeline_tiny.yaml")


def test_true_label_document_relabels_and_drops_unlabelled():
    doc = {"images": [{"id": 5, "true_label": 2}, {"id": 6, "true_label": -1}, {"id": 7, "true_label": 0}],
           "annotations": [{"id": 1, "image_id": 5, "category_id": 1, "bbox": [0, 0, 2, 2]},
                           {"id": 2, "image_id": 6, "category_id": 3, "bbox": [0, 0, 2, 2]},
                           {"id": 3, "image_id": 7, "category_id": 3, "bbox": [1, 1, 2, 2]}],
           "categories": [{"id": k + 1, "name": f"cluster{k}"} for k in range(4)], "info": {"n": 3}}
    weak = true_label_document(doc, ["a", "b", "c"])
    assert [(a["id"], a["image_id"], a["category_id"]) for a in weak["annotations"]] == [(1, 5, 3), (2, 7, 1)]
    assert [c["name"] for c in weak["categories"]] == ["a", "b", "c"] and weak["images"] == doc["images"]
    assert doc["annotations"][0]["category_id"] == 1                      # the input is not changed


@pytest.mark.slow
def test_weak_sup_stage_trains_and_reports(tmp_path):
    from jobs.full_vggsound import main

    stages = "stages=[ingest,stage1,pseudo,detector,weak_sup,evaluate]"
    main(["--config", TINY, f"workdir={tmp_path}", stages, "evaluate.num_pictures=0"])
    weak = json.loads((tmp_path / "weak_sup" / "report" / "results.json").read_text())
    C = len(weak["classes"])
    assert weak["matching"]["hungarian"]["mapping"][:C] == list(range(C))  # identity: the classes are the labels
    assert json.loads((tmp_path / "weak_sup" / "detector" / "done.json").read_text())["num_classes"] == C
    main_res = json.loads((tmp_path / "report" / "results.json").read_text())
    assert main_res["baselines"]["weak_sup_detector"] == weak["detection"]["hungarian"]
    assert "Ours - weak sup. (detector" in (tmp_path / "report" / "tables.md").read_text()
