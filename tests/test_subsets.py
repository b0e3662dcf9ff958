"""The paper's subsets (data/subsets.py, jobs/make_subset.py) on tiny fixtures written in the datasets' own layouts:
VGGSound's CSV, AudioSet's segment CSVs + ontology.json; and the class lists committed in data/classlists/."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from data.ingest import read_csv
from data.subsets import audioset_subset, ontology_cover, read_classlist, read_segments
from jobs import make_subset

ROOT = Path(__file__).resolve().parents[1]
LISTS = ROOT / "data" / "classlists"

VGGSOUND_CSV = """---g-f_I2yQ,1,people marching,test
--0PQM4-hqg,30,waterfall burbling,train
-0BIyqJj9ZU,30,"playing violin, fiddle",train
-1nDVYbAdHk,10,playing accordion,train
-5Jb3aNpBVs,40,playing tuning fork,train
0E1YbYOLYR0,20,playing drum kit,test
"""

# AudioSet ontology.json: real names and MIDs of the nodes used, child_ids as in the ontology
ONTOLOGY = [
    {"id": "/m/04rlf", "name": "Music", "child_ids": ["/m/04szw"]},
    {"id": "/m/04szw", "name": "Musical instrument", "child_ids": ["/m/0fx80y", "/m/0l14md", "/m/085jw"]},
    {"id": "/m/0fx80y", "name": "Plucked string instrument", "child_ids": ["/m/0342h"]},
    {"id": "/m/0342h", "name": "Guitar", "child_ids": ["/m/042v_gx", "/m/02sgy"]},
    {"id": "/m/042v_gx", "name": "Acoustic guitar", "child_ids": []},
    {"id": "/m/02sgy", "name": "Electric guitar", "child_ids": []},
    {"id": "/m/0l14md", "name": "Percussion", "child_ids": ["/m/026t6"]},
    {"id": "/m/026t6", "name": "Drum", "child_ids": ["/m/06rvn", "/m/0bm02"]},
    {"id": "/m/06rvn", "name": "Snare drum", "child_ids": []},
    {"id": "/m/0bm02", "name": "Bass drum", "child_ids": []},
    {"id": "/m/085jw", "name": "Bowed string instrument", "child_ids": ["/m/07y_7"]},
    {"id": "/m/07y_7", "name": "Violin, fiddle", "child_ids": []},
    {"id": "/m/09x0r", "name": "Speech", "child_ids": []},
]
SEGMENTS_HEAD = ("# Segments csv created Sun Mar  5 10:54:31 2017\n"
                 "# num_ytids=6, num_segs=6, num_unique_labels=527, num_positive_labels=14\n"
                 "# YTID, start_seconds, end_seconds, positive_labels\n")
UNBALANCED = SEGMENTS_HEAD + """\
---1_cCGK4M, 0.000, 10.000, "/m/04rlf,/m/04szw,/m/0342h,/m/042v_gx,/m/09x0r"
---2_BBVHAA, 30.000, 40.000, "/m/04rlf,/m/06rvn"
---B_v8ZoBY, 30.000, 40.000, "/m/042v_gx,/m/07y_7"
---EDNidJUA, 30.000, 40.000, "/m/02sgy,/m/042v_gx"
---N4cFAE1A, 21.000, 31.000, "/m/09x0r"
---fcVQUf3E, 30.000, 40.000, "/m/04rlf,/m/04szw,/m/0l14md"
"""
BALANCED = SEGMENTS_HEAD + """\
--4gqARaEJE, 0.000, 10.000, "/m/07y_7,/m/04rlf"
"""
CLASSES = ["Acoustic guitar", "Drum", "Violin, fiddle"]


def test_committed_class_lists_have_the_papers_sizes():
    v50, v39 = read_classlist(LISTS / "vggsound_instruments_50.txt"), read_classlist(LISTS /
                                                                                       "vggsound_instruments_39.txt")
    a30 = read_classlist(LISTS / "audioset_instruments_30.txt")
    assert (len(v50), len(v39), len(a30)) == (50, 39, 30)
    assert set(v39) <= set(v50)                                    # the 39 are "from those" 50 (paper §4.1)
    assert "playing violin, fiddle" in v50 and v39["playing violin, fiddle"] == "Violin"
    assert a30["Accordion"] == "Accordion" and a30["Violin, fiddle"] == "Violin"
    for path in LISTS.glob("*.txt"):                              # each says where it comes from
        assert "WHERE THIS LIST COMES FROM" in path.read_text() and "supplementary" in path.read_text()


def test_vggsound_subset_keeps_the_listed_labels_and_ingest_reads_it(tmp_path):
    (tmp_path / "vggsound.csv").write_text(VGGSOUND_CSV)
    (tmp_path / "classes.txt").write_text("# two\nplaying violin, fiddle\tViolin\nplaying drum kit\nplaying harp\n")
    out = tmp_path / "subset.csv"
    res = make_subset.main(["vggsound", f"csv={tmp_path / 'vggsound.csv'}", f"classes={tmp_path / 'classes.txt'}",
                            f"out={out}"])
    assert (res["read"], res["kept"]) == (6, 2) and res["absent"] == ["playing harp"]
    rows, rejected = read_csv(out)
    assert not rejected
    assert [(r.youtube_id, r.start, r.label, r.split) for r in rows] == [
        ("-0BIyqJj9ZU", 30, "playing violin, fiddle", "train"), ("0E1YbYOLYR0", 20, "playing drum kit", "test")]


def test_audioset_segments_are_read_past_the_comment_lines(tmp_path):
    (tmp_path / "seg.csv").write_text(UNBALANCED)
    segs = read_segments(tmp_path / "seg.csv")
    assert len(segs) == 6
    assert segs[0] == ("---1_cCGK4M", 0.0, 10.0, ["/m/04rlf", "/m/04szw", "/m/0342h", "/m/042v_gx", "/m/09x0r"])


def test_ontology_cover_takes_unlisted_descendants_and_spares_ancestors():
    cover, others = ontology_cover(ONTOLOGY, CLASSES, "Musical instrument")
    assert cover["/m/06rvn"] == cover["/m/0bm02"] == "Drum" and cover["/m/042v_gx"] == "Acoustic guitar"
    assert "/m/02sgy" in others                     # Electric guitar: another instrument
    assert "/m/0342h" not in others and "/m/04szw" not in others     # ancestors of listed classes
    with pytest.raises(ValueError, match="not names in the AudioSet ontology"):
        ontology_cover(ONTOLOGY, ["Violin"])


def test_audioset_single_instrument_subset_by_hand(tmp_path):
    (tmp_path / "unbalanced_train_segments.csv").write_text(UNBALANCED)
    (tmp_path / "balanced_train_segments.csv").write_text(BALANCED)
    rows, stats = audioset_subset({"train": [tmp_path / "unbalanced_train_segments.csv"],
                                   "test": [tmp_path / "balanced_train_segments.csv"]}, ONTOLOGY, CLASSES)
    # kept: acoustic guitar (+ speech and its ancestors), snare drum -> Drum, violin (test); dropped: guitar+violin,
    # electric+acoustic guitar (Electric guitar is another instrument), speech only, percussion only
    assert rows == [["--4gqARaEJE", "0", "Violin, fiddle", "test"], ["---1_cCGK4M", "0", "Acoustic guitar", "train"],
                    ["---2_BBVHAA", "30", "Drum", "train"]]
    assert (stats["multi_instrument"], stats["no_listed_instrument"]) == (2, 2)


def test_make_subset_audioset_writes_a_csv_ingest_reads(tmp_path):
    (tmp_path / "unbalanced_train_segments.csv").write_text(UNBALANCED)
    (tmp_path / "balanced_train_segments.csv").write_text(BALANCED)
    (tmp_path / "ontology.json").write_text(json.dumps(ONTOLOGY))
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    out = tmp_path / "audioset_instruments.csv"
    argv = ["audioset", f"ontology={tmp_path / 'ontology.json'}",
            f"train_segments=[{tmp_path / 'unbalanced_train_segments.csv'}]",
            f"test_segments=[{tmp_path / 'balanced_train_segments.csv'}]", f"classes={tmp_path / 'classes.txt'}",
            f"out={out}"]
    assert make_subset.main(argv)["kept"] == 3
    assert next(csv.reader(out.open())) == ["--4gqARaEJE", "0", "Violin, fiddle", "test"]   # quoted comma kept
    rows, rejected = read_csv(out)
    assert not rejected and {r.label for r in rows} == set(CLASSES)


def test_make_subset_dry_run_checks_inputs_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "classes.txt").write_text("playing harp\n")
    with pytest.raises(SystemExit) as e:
        make_subset.main(["vggsound", f"csv={tmp_path / 'gone.csv'}", f"classes={tmp_path / 'classes.txt'}",
                          f"out={tmp_path / 'o.csv'}", "--dry-run"])
    assert e.value.code == 2 and "csv" in capsys.readouterr().err
    (tmp_path / "v.csv").write_text(VGGSOUND_CSV)
    with pytest.raises(SystemExit) as e:
        make_subset.main(["vggsound", f"csv={tmp_path / 'v.csv'}", f"classes={tmp_path / 'classes.txt'}",
                          f"out={tmp_path / 'o.csv'}", "--dry-run"])
    assert e.value.code == 0 and "source: vggsound" in capsys.readouterr().out
    assert not (tmp_path / "o.csv").exists()
