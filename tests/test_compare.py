"""The stage-1 methods compared: the row and table maths (known answers) and jobs/compare.py end to end on the tiny
pipeline — afouras and the class-agnostic iterative method through pseudo-annotation, the detector and evaluation."""
import json
from pathlib import Path

import pytest

from avdet.report.compare import method_row, methods_table, summarise_methods

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "clusters/local/pipeline_tiny.yaml")


def _results(scale: float, agnostic: bool = False) -> dict:
    loc = {"self_boxes": {"ciou_30": 0.7 * scale, "auc": 0.4 * scale}, "whole_image": {"ciou_30": 0.1, "auc": 0.2}}
    single = {"self_boxes": {"iou_50": 0.5 * scale, "auc": 0.45 * scale}, "whole_image": {"iou_50": 0.0, "auc": 0.15}}
    multi = {"self_boxes": {"ciou_30": 0.6 * scale, "nsa": 0.9}}
    return {"summary": {"class_agnostic": agnostic}, "clusters": {"test": {"hungarian_acc": 0.8 * scale}},
            "localisation": {"methods": loc, "protocols": {"dsol_single_source": single, "dsol_multi_source": multi}},
            "detection": {} if agnostic else {"hungarian": {"map_50": 0.15 * scale}},
            "baselines": {"self_boxes": {"map_50": 0.09 * scale}, "detector_agnostic": {"map_50": 0.2 * scale},
                          "whole_image": {"map_50": 0.0}, "centre_box": {"map_50": 0.011}}}


def test_method_row_reads_every_protocol_and_drops_class_aware_figures_of_a_class_agnostic_run():
    row = method_row("afouras", 2, _results(1.0))
    assert row["seed"] == 2 and row["method"] == "afouras" and row["class_agnostic"] is False
    assert (row["stage1_test_acc"], row["single_iou50"], row["single_auc"], row["ciou30"], row["loc_auc"]) == \
        (0.8, 0.5, 0.45, 0.7, 0.4)
    assert (row["multi_ciou30"], row["multi_nsa"]) == (0.6, 0.9)
    assert (row["selfbox_ap50"], row["detector_ap50"], row["detector_map50"]) == (9.0, 20.0, 15.0)
    assert row["centre_ap50"] == 1.1
    assert (row["whole_single_iou50"], row["whole_ciou30"], row["whole_ap50"]) == (0.0, 0.1, 0.0)
    it = method_row("iterative", 0, _results(1.0, agnostic=True))
    assert it["class_agnostic"] is True
    assert [it[k] for k in ("stage1_test_acc", "multi_ciou30", "multi_nsa", "detector_map50")] == [None] * 4
    assert it["detector_ap50"] == 20.0 and it["single_iou50"] == 0.5


def test_table_is_mean_sample_std_and_minimum_per_method_with_na_for_missing_classes():
    rows = [method_row("afouras", s, _results(f)) for s, f in ((0, 0.5), (1, 1.0), (2, 1.5))]
    rows += [method_row("iterative", s, _results(f, agnostic=True)) for s, f in ((0, 1.0), (1, 1.0))]
    summary = summarise_methods(rows)
    got = summary["afouras"]["detector_ap50"]
    assert got == {"mean": 20.0, "std": pytest.approx(10.0), "min": 10.0, "max": 30.0, "n": 3}
    assert summary["iterative"]["detector_ap50"]["std"] == 0.0 and "detector_map50" not in summary["iterative"]
    assert summary["centre box"]["detector_ap50"]["mean"] == pytest.approx(1.1)
    md = methods_table(rows, "python jobs/compare.py x").markdown()
    line = next(x for x in md.splitlines() if x.startswith("| Detector\\* AP@0.5"))
    assert line.replace(" ", "") == ("|Detector\\*AP@0.5(trainedontheself-boxes)|20.0±10.0(10.0)|20.0±0.0(20.0)"
                                     "|0.0|1.1|")                 # the trivial predictions: the same every run
    line = next(x for x in md.splitlines() if x.startswith("| Detector mAP@0.5"))
    assert line.replace(" ", "").endswith("|15.0±7.5(7.5)|n/a|n/a|n/a|")
    order = next(x for x in md.splitlines() if x.startswith("| Paper's ordering"))
    assert "3/3 seeds" in order and "2/2 seeds" in order
    assert "afouras (3 seeds)" in md and "iterative (2 seeds)" in md and "python jobs/compare.py x" in md


def test_the_multi_source_split_adds_its_rows_only_when_the_runs_have_it():
    duets = {"localisation": {"protocols": {"dsol_multi_source": {"self_boxes": {"ciou_30": 0.3},
                                                                  "detector": {"ciou_30": 0.55, "nsa": 0.8}}}},
             "baselines": {"detector_agnostic": {"map_50": 0.25}, "whole_image": {"map_50": 0.0},
                           "centre_box": {"map_50": 0.02}}}
    row = method_row("dsol", 0, _results(1.0), duets)
    assert [row[k] for k in ("duet_selfbox_ciou30", "duet_detector_ciou30", "duet_detector_nsa",
                             "duet_detector_ap50", "duet_centre_ap50")] == [0.3, 0.55, 0.8, 25.0, 2.0]
    agnostic = method_row("iterative", 0, _results(1.0, agnostic=True), duets)
    assert agnostic["duet_detector_ciou30"] is None and agnostic["duet_detector_ap50"] == 25.0
    with_duets = methods_table([row, agnostic]).markdown()
    line = next(x for x in with_duets.splitlines() if x.startswith("| Duets, class-aware: detector CIoU@0.3"))
    assert line.replace(" ", "").endswith("|55.0|n/a|n/a|n/a|")
    without = methods_table([method_row("dsol", 0, _results(1.0))]).markdown()
    assert "Duets" not in without and "Detector mAP@0.5" in without


def test_methods_grid_puts_each_method_in_a_column_on_the_frames_they_share():
    import numpy as np

    from avdet.report.figures import methods_grid

    def panel(indices, value):
        n = len(indices)
        return {"index": np.array(indices), "heatmap": np.random.default_rng(0).random((n, 4, 4)),
                "box": np.tile([4.0, 4.0, 20.0, 20.0], (n, 1)), "frame": np.full((n, 32, 32, 3), value, np.uint8)}

    grid = methods_grid({"a": panel([1, 2, 3, 9], 0), "b": panel([2, 3, 4, 9], 255)}, rows=6, side=40)
    assert grid.size == (2 * 40, 22 + 3 * 40)                # the shared frames 2, 3, 9; two columns
    left, right = np.asarray(grid)[30:150, :40], np.asarray(grid)[30:150, 40:]
    assert left.mean() < right.mean()                        # each column shows its own method's frames
    assert methods_grid({"a": panel([1], 0), "b": panel([2], 0)}) is None


@pytest.mark.slow
@pytest.mark.timeout(3600)          # three tiny pipelines: ~6 min on an idle 2-core machine
def test_compare_job_runs_each_method_through_the_whole_pipeline(tmp_path):
    """afouras, iterative and dsol (both stages), one seed each, on one set of shards: the iterative run's
    pseudo-annotations have one category ("object"), its detector one class, its evaluation is class-agnostic; DSOL
    trains its last epoch on the training duets (split train_multi) and keeps its K pseudo-classes; the afouras run
    sits where jobs/seeds.py puts seed 0, and the table has a column per method."""
    from jobs.compare import main

    doc = main(["--config", TINY, f"workdir={tmp_path}", "--methods", "afouras,iterative,dsol", "--seeds", "1",
                "--publish", str(tmp_path / "pub.json"), "synthetic.num_multi_train_per_class=4",
                "stage1.dsol.stage2_epochs=1"])
    assert [(r["method"], r["seed"], r["class_agnostic"]) for r in doc["runs"]] == [("afouras", 0, False),
                                                                                  ("iterative", 0, True),
                                                                                  ("dsol", 0, False)]
    assert json.loads((tmp_path / "pub.json").read_text())["runs"] == doc["runs"]
    ours, it = tmp_path / "seeds" / "seed-0", tmp_path / "methods" / "iterative" / "seed-0"
    assert (ours / "report" / "results.json").is_file() and not (it / "shards").exists()
    pseudo = json.loads((it / "pseudo" / "pseudo_train.json").read_text())
    assert pseudo["categories"] == [{"id": 1, "name": "object"}]
    assert {a["category_id"] for a in pseudo["annotations"]} == {1}
    assert json.loads((it / "detector" / "done.json").read_text())["num_classes"] == 1
    assert doc["runs"][1]["detector_ap50"] is not None and doc["runs"][1]["detector_map50"] is None
    assert doc["runs"][0]["detector_map50"] is not None
    dsol = tmp_path / "methods" / "dsol" / "seed-0"
    history = json.loads((dsol / "stage1" / "done.json").read_text())["metrics"]
    assert "train_kl" in history[-1] and "train_kl" not in history[0] and "dictionary_method" in history[0]
    assert len(json.loads((dsol / "pseudo" / "pseudo_train.json").read_text())["categories"]) == 3
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())     # one set of shards for all
    assert {s["split"] for s in manifest["shards"]} == {"train", "test", "train_multi"}
    md = (tmp_path / "methods" / "methods.md").read_text()
    assert "afouras (1 seed)" in md and "iterative (1 seed)" in md and "dsol (1 seed)" in md
    html = (tmp_path / "methods" / "methods.html").read_text()
    assert "<img src='methods.png'" in html and (tmp_path / "methods" / "methods.png").is_file()
    # another day: afouras again (every stage skipped by its lineage), the other methods' rows kept from pub.json
    again = main(["--config", TINY, f"workdir={tmp_path}", "--methods", "afouras", "--seeds", "1",
                  "--merge", str(tmp_path / "pub.json"), "synthetic.num_multi_train_per_class=4",
                  "stage1.dsol.stage2_epochs=1"])
    assert again["runs"] == doc["runs"] and set(again["provenance"]) == {"afouras seed 0", "iterative seed 0",
                                                                         "dsol seed 0"}
    assert "dsol (1 seed)" in (tmp_path / "methods" / "methods.md").read_text()


def test_merge_keeps_earlier_seeds_not_run_now_with_their_provenance():
    from jobs.compare import merged
    earlier = {"commit": "abc", "runs": [{"method": "dsol", "seed": 0, "x": 1}, {"method": "afouras", "seed": 0, "x": 2},
                                         {"method": "afouras", "seed": 1, "x": 3}],
               "provenance": {"dsol seed 0": "old dsol"}}
    rows = [{"method": "afouras", "seed": 1, "x": 30}, {"method": "afouras", "seed": 2, "x": 40}]
    out, prov = merged(rows, {"afouras seed 1": "now", "afouras seed 2": "now"}, earlier)
    assert [(r["method"], r["seed"], r["x"]) for r in out] == [("afouras", 0, 2), ("afouras", 1, 30),
                                                               ("afouras", 2, 40), ("dsol", 0, 1)]
    assert prov == {"dsol seed 0": "old dsol", "afouras seed 0": "published at abc", "afouras seed 1": "now",
                    "afouras seed 2": "now"}
    assert merged(rows, {}, {})[0] == rows


def test_an_unknown_method_is_refused_before_anything_runs(tmp_path, capsys):
    from jobs.compare import main

    with pytest.raises(SystemExit) as e:
        main(["--config", TINY, f"workdir={tmp_path}", "--methods", "afouras,nope", "--seeds", "1"])
    assert e.value.code == 2
    assert "unknown ['nope']; known: afouras, iterative, dsol, proposals" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())                       # nothing written


def test_a_named_variant_runs_apart_and_gets_its_own_column(tmp_path, capsys):
    """--variant k10 (an ablation, e.g. stage1.proposals.top_k=10): its runs sit under methods/<method>-k10, its
    rows are labelled '<method> (k10)', so the table and --merge keep it beside the method's own runs."""
    from avdet.config import load_config
    from distributed.pipeline import PipelineConfig
    from jobs.compare import label, main, method_config
    base = load_config(PipelineConfig, TINY, [f"workdir={tmp_path}", "stage1.proposals.top_k=10"])
    cfg = method_config(base, "proposals", 1, "k10")
    assert Path(cfg.workdir) == tmp_path / "methods" / "proposals-k10" / "seed-1"
    assert cfg.stage1.method == "proposals" and cfg.stage1.proposals.top_k == 10 and cfg.seed == 1
    assert Path(method_config(base, "afouras", 0, "k10").workdir) == tmp_path / "methods" / "afouras-k10" / "seed-0"
    assert Path(method_config(base, "afouras", 0).workdir) == tmp_path / "seeds" / "seed-0"
    assert label("proposals", "k10") == "proposals (k10)" and label("dsol", "") == "dsol"
    with pytest.raises(SystemExit) as e:
        main(["--config", TINY, f"workdir={tmp_path}", "--methods", "proposals", "--variant", "../up"])
    assert e.value.code == 2 and "a directory name" in capsys.readouterr().err
