"""The paper's figures as data (avdet/report/paper.json, avdet/report/paper.py) and the report printing them beside
ours only where the protocol matches."""
from __future__ import annotations

import pytest

from avdet.report.paper import comparison, paper_number, paper_numbers, per_class_row
from avdet.report.tables import table1, table3, table5


def test_cells_read_back_as_printed_in_the_paper():
    assert paper_number(1, "Ours - full", "vggsound:map_50") == 39.4
    assert paper_number("1", "PCL (WSOD)", "openimages:map_50_95") == 3.5
    assert paper_number(1, "Ours - self-boxes*", "openimages:map_30") is None         # "NA"
    assert paper_number(2, "Ours", "multi:ciou_30") == 52.4
    assert paper_number(3, "audioset", "Trumpet") is None and paper_number(3, "vggsound", "Banjo") == 100.0
    assert paper_number(4, "K=50", "openimages:map_50") == 27.5
    assert paper_number(5, "argmax", "openimages:map_50") == 30.1
    assert paper_number(6, "Cat", "ap_30") == 67.7
    with pytest.raises(KeyError, match="rows"):
        paper_number(1, "Ours", "vggsound:map_50")
    for t in paper_numbers()["tables"].values():
        assert t["protocol"] and t["rows"]


def test_table3_rows_are_consistent_with_table1():
    for ds in ("openimages", "audioset", "vggsound"):
        assert paper_number(3, ds, "map_50") == paper_number(1, "Ours - full", f"{ds}:map_50")


def _results(dataset: str, k: int, paper_dataset: str = "") -> dict:
    det = {"map_30": 0.5, "map_50": 0.3, "map_50_95": 0.1, "ap50_per_class": {"Accordion": 0.7, "French horn": 0.2,
                                                                               "Kazoo": 0.0}}
    return {"dataset": dataset, "config": {"paper_dataset": paper_dataset}, "classes": ["Accordion", "French horn",
                                                                                       "Kazoo"],
            "summary": {"num_clusters": k}, "detection": {"hungarian": det, "argmax": det},
            "baselines": {"centre_box": {"map_30": 0.2, "map_50": 0.05, "map_50_95": 0.01}},
            "matching": {"hungarian": {}, "argmax": {}}}


def test_paper_figures_are_printed_beside_ours_when_the_protocol_matches():
    res = _results("OpenImages", 39)
    assert comparison(res)[0] == "openimages"
    t1 = table1(res)
    assert t1.header[-1].startswith("Paper") and t1.rows[0][-1] == "20.7 / 4.2 / 0.8"      # Center Box*
    assert t1.rows[-1][-1] == "39.9 / 28.5 / 7.6"                                           # Ours - full
    t3 = table3(res)
    assert t3.rows[-1] == ["openimages (paper)", "28.5", "75.3", "15.0", ""]        # French horn = Horn; no Kazoo
    assert [r[-1] for r in table5(res).rows] == ["28.5", "30.1"]


def test_a_different_protocol_gets_a_note_instead_of_numbers():
    res = _results("synthetic", 9)
    assert comparison(res)[0] is None and "no figures" in comparison(res)[1]
    t1 = table1(res)
    assert not any(h.startswith("Paper") for h in t1.header) and "no figures" in t1.caption
    res = _results("vggsound", 300)                           # all of VGGSound: the paper's VGGSound column is K = 39
    ds, note = comparison(res)
    assert ds is None and "K = 39" in note and "K = 300" in note
    res = _results("vggsound", 30, paper_dataset="audioset")  # the AudioSet run ingests a VGGSound-format CSV
    assert comparison(res)[0] == "audioset"
    assert per_class_row("openimages_general", ["Cat", "Computer mouse"]) == ["24.4", "28.0", "25.4"]
