"""Table 4 (number of clusters K): the rows from results.json (known answers), the table the evaluation shows when
a K-sweep JSON is present, and jobs/k_sweep.py end to end on the tiny pipeline (two K on one set of shards)."""
import json
from pathlib import Path

import pytest

from avdet.report.ksweep import k_row, k_table
from avdet.report.tables import table4

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "clusters/local/pipeline_tiny.yaml")


def _results(k: int, hung: float, argmax: float) -> dict:
    return {"summary": {"num_classes": 3, "num_clusters": k},
            "detection": {"hungarian": {"map_50": hung, "map_30": hung}, "argmax": {"map_50": argmax},
                          "1-shot": {"map_50": 0.1}},
            "matching": {"hungarian": {"num_matched": min(k, 3)}, "argmax": {"num_matched": k}},
            "clusters": {"test": {"hungarian_acc": 0.5, "nmi": 0.25}}}


def test_rows_and_table_show_one_to_one_and_many_to_one():
    rows = [k_row(6, _results(6, 0.2, 0.4)), k_row(2, _results(2, 0.3, 0.3))]
    assert rows[0]["map50_argmax"] == 0.4 and rows[0]["matched_hungarian"] == 3 and rows[0]["matched_argmax"] == 6
    md = k_table(rows, "synthetic").markdown()
    lines = [line.replace(" ", "") for line in md.splitlines() if line.startswith("| 3")]
    assert lines == ["|3|2|30.0|30.0|10.0|2/2|50.0|25.0|", "|3|6|20.0|40.0|10.0|3/6|50.0|25.0|"]   # K order


def test_evaluation_table4_uses_the_sweep_when_present():
    one = table4(_results(3, 0.5, 0.5))
    assert len(one.rows) == 1 and one.rows[0][:3] == ["3", "3", "50.0"]
    sweep = {"dataset": "synthetic", "command": "python jobs/k_sweep.py --k 2,6",
             "rows": [k_row(2, _results(2, 0.3, 0.3)), k_row(6, _results(6, 0.2, 0.4))]}
    t = table4(dict(_results(3, 0.5, 0.5), k_sweep=sweep))
    assert [r[1] for r in t.rows] == ["2", "6"] and "k_sweep.py --k 2,6" in t.caption


@pytest.mark.slow
def test_k_sweep_job_shares_the_shards(tmp_path):
    from jobs.k_sweep import main

    doc = main(["--config", TINY, f"workdir={tmp_path}", "--k", "2,3"])
    assert [r["k"] for r in doc["rows"]] == [2, 3]
    assert (tmp_path / "shards" / "manifest.json").is_file() and not (tmp_path / "ksweep" / "k-2" / "shards").exists()
    assert json.loads((tmp_path / "ksweep" / "ksweep.json").read_text())["rows"] == doc["rows"]
    assert "Table 4." in (tmp_path / "ksweep" / "ksweep.md").read_text()
    assert (tmp_path / "ksweep" / "ksweep.html").is_file()
    res = json.loads((tmp_path / "ksweep" / "k-3" / "report" / "results.json").read_text())
    assert res["summary"]["num_clusters"] == 3 and len(res["matching"]["argmax"]["mapping"]) == 3
