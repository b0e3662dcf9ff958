"""The paper's "Ours - weak sup." baseline: the self-boxes with the TRUE video labels train the same detector job,
evaluated with the identity class mapping, shown in the main report's Table 1."""
import json
from pathlib import Path

import pytest

from data.pseudo_coco import true_label_document

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


def test_derived_configs_of_weak_sup_and_multi_source(tmp_path):
    """Where the weak-sup. detector and the multi-source evaluation read and write (no stage runs)."""
    from avdet.config import load_config
    from distributed.pipeline import PipelineConfig, multi_source_eval, resolve, weak_sup_configs

    cfg = resolve(load_config(PipelineConfig, TINY, [f"workdir={tmp_path / 'w'}", f"data_dir={tmp_path / 'd'}",
                                                      "synthetic.num_multi_per_class=2"]))
    det, ev = weak_sup_configs(cfg)
    assert det.pseudo_dir == str(tmp_path / "w" / "weak_sup" / "pseudo") and det.epochs == cfg.detector.epochs
    assert det.manifest == cfg.detector.manifest and ev.detector == str(tmp_path / "w/weak_sup/detector/detector.pt")
    assert ev.pseudo_train == str(tmp_path / "w/weak_sup/pseudo/pseudo_train.json") and ev.gt == cfg.gt
    assert cfg.evaluate.weak_sup_results == str(tmp_path / "w/weak_sup/report/results.json")
    multi = multi_source_eval(cfg, tmp_path / "d" / "synthetic")
    assert multi.gt == str(tmp_path / "d/synthetic/gt_test_multi.json") and multi.out_dir.endswith("report_multi")
    assert multi.detector == cfg.evaluate.detector and multi.pseudo_train == cfg.evaluate.pseudo_train
