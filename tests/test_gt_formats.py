"""Converters of the field's test annotations (data/gt_formats.py), each on a tiny fixture written in the format's
own layout, with answers worked out by hand; and the evaluation reading what they write."""
from __future__ import annotations

import json

import numpy as np
import pytest

from avdet.report.scores import _gt_maps
from data.gt_formats import convert, from_dsol_audioset, from_dsol_music, from_vggss
from distributed.evaluation import frames as eval_data
VGGSS = [  # vggss.json: a list; corners normalised; "file" = <youtube id>_<start>
    {"file": "-ab_cd_000030", "class": "playing violin, fiddle", "bbox": [[0.1, 0.2, 0.5, 0.9]]},
    {"file": "xyz_000000", "class": "dog barking", "bbox": [[0.0, -0.1, 1.2, 0.5], [0.5, 0.5, 0.75, 0.625]]},
    {"file": "empty_000010", "class": "dog barking", "bbox": []},
]

FLICKR_XML = """<?xml version="1.0"?>
<annotation>
  <filename>10000130166.jpg</filename>
  <bbxes>
    <bbox><annotator>1</annotator><xmin>0</xmin><ymin>0</ymin><xmax>128</xmax><ymax>128</ymax></bbox>
    <bbox><annotator>2</annotator><xmin>0</xmin><ymin>0</ymin><xmax>256</xmax><ymax>128</ymax></bbox>
    <bbox><annotator>3</annotator><xmin>128</xmin><ymin>128</ymin><xmax>256</xmax><ymax>256</ymax></bbox>
  </bbxes>
</annotation>
"""
FLICKR_XML_UNNAMED = """<annotation><objects>
  <bbox><id>0</id><v>10</v><v>20</v><v>110</v><v>220</v></bbox>
</objects></annotation>
"""

DSOL_MUSIC = {  # solotest.json / duettest.json: "wdith" as released
    "4Oy5VmaacaI_0_1000/frame_013/00411.jpg": {
        "bbox": [{"box": [224, 0, 239, 358], "normbox": [0.35, 0.0, 0.3734375, 0.9944], "category_id": 1}],
        "wdith": 640, "height": 360},
    "5_NsbkyLO2Q_0_1000/frame_000/00014.jpg": {"bbox": [], "wdith": 640, "height": 360},
    "HnUOaSfTA6c_0_1000/frame_175/05257.jpg": {
        "bbox": [{"box": [29, 130, 180, 185], "category_id": 1},
                 {"box": [316, 194, 187, 59], "category_id": 3, "sounding": False}],
        "wdith": 608, "height": 360},
}

DSOL_AUDIOSET = {  # audioset_box.json: "<youtube id>/<second>", normalised xywh
    "8LYWfpPUokc/3": {"bbox": [{"category": 2, "normbox": [0.75, 0.5, 0.125, 0.25]},
                               {"category": 2, "normbox": [0.25, 0.125, 0.125, 0.25]}]},
    "gp1DYuoQH08/6": {"bbox": [{"category": 0, "normbox": [0.5, 0.5, 0.75, 0.25]}]},   # runs past the edge
}


def test_vggss():
    gt = from_vggss(VGGSS)
    assert [(im["video_id"], im["timestamp"], im["width"]) for im in gt["images"]] == [
        ("-ab_cd", 5.0, 1), ("xyz", 5.0, 1), ("empty", 5.0, 1)]
    assert [c["name"] for c in gt["categories"]] == ["playing violin, fiddle", "dog barking"]
    boxes = [(a["image_id"], a["category_id"], a["bbox"]) for a in gt["annotations"]]
    assert boxes[0] == (1, 0, pytest.approx([0.1, 0.2, 0.4, 0.7]))
    assert boxes[1] == (2, 1, pytest.approx([0.0, 0.0, 1.0, 0.5]))                 # clipped to the image
    assert boxes[2] == (2, 1, pytest.approx([0.5, 0.5, 0.25, 0.125]))
    assert all(a["sounding"] and "annotator" not in a for a in gt["annotations"])
    assert from_vggss(VGGSS, timestamp=4.5)["images"][0]["timestamp"] == 4.5
    with pytest.raises(ValueError, match="youtube_id"):
        from_vggss([{"file": "nostart", "class": "x", "bbox": []}])


def test_vggss_joins_frames_and_scales_to_pixels():
    gt = from_vggss(VGGSS)
    frames = eval_data.TestFrames(np.arange(4), ["-ab_cd", "-ab_cd", "xyz", "empty"], np.array([4.0, 5.0, 5.0, 5.0]),
                                  np.zeros(4, np.int64), 32, 32)
    coco = eval_data.eval_ground_truth(gt, frames, ["dog barking", "playing violin, fiddle"])
    assert [im["id"] for im in coco["images"]] == [1, 2, 3]        # frame 0 (t = 4.0) is not the annotated one
    first = next(a for a in coco["annotations"] if a["image_id"] == 1)
    assert first["category_id"] == 2 and first["bbox"] == pytest.approx([3.2, 6.4, 12.8, 22.4])


def test_flickr_xml_annotators_and_consensus(tmp_path):
    (tmp_path / "10000130166.xml").write_text(FLICKR_XML)
    (tmp_path / "20000.xml").write_text(FLICKR_XML_UNNAMED)
    gt = convert("flickr", tmp_path)
    assert [im["video_id"] for im in gt["images"]] == ["10000130166", "20000"]
    assert gt["images"][0]["width"] == gt["images"][0]["height"] == 256
    assert [(a["annotator"], a["bbox"]) for a in gt["annotations"] if a["image_id"] == 1] == [
        (0, [0, 0, 128, 128]), (1, [0, 0, 256, 128]), (2, [128, 128, 128, 128])]
    assert gt["annotations"][3]["bbox"] == [10, 20, 100, 200]         # the last four children, in order
    assert gt["categories"] == [{"id": 0, "name": "sound_source"}]
    # through the evaluation: 32 px frames; consensus = 1 on the top-left quarter (2 of 3), 0.5 top-right, 0.5
    # bottom-right (one each): Σ = 256·1 + 256·0.5 + 256·0.5
    frames = eval_data.TestFrames(np.array([7]), ["10000130166"], np.array([0.0]), np.zeros(1, np.int64), 32, 32)
    coco = eval_data.eval_ground_truth(gt, frames, ["sound_source"], max_unmatched_fraction=0.5)
    g = _gt_maps(coco)[7]
    assert g[:16, :16].min() == 1.0 and g[:16, 16:].max() == g[:16, 16:].min() == 0.5
    assert g[16:, 16:].min() == 0.5 and g[16:, :16].max() == 0.0 and g.sum() == pytest.approx(512)
    (tmp_path / "bad.xml").write_text("<annotation><bbox><x>1</x></bbox></annotation>")
    with pytest.raises(ValueError, match="bad.xml"):
        convert("flickr", tmp_path)


def test_dsol_music():
    gt = from_dsol_music(DSOL_MUSIC, {"1": "accordion", "3": "cello"})
    ims = {im["file_name"]: im for im in gt["images"]}
    im = ims["4Oy5VmaacaI_0_1000/frame_013/00411.jpg"]
    assert (im["video_id"], im["timestamp"], im["width"], im["height"]) == ("4Oy5VmaacaI", 13.7, 640, 360)
    assert ims["5_NsbkyLO2Q_0_1000/frame_000/00014.jpg"]["timestamp"] == pytest.approx(14 / 30, abs=1e-6)
    by_image = {}
    for a in gt["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    assert [a["bbox"] for a in by_image[im["id"]]] == [[224, 0, 239, 358]]
    duet = by_image[ims["HnUOaSfTA6c_0_1000/frame_175/05257.jpg"]["id"]]
    names = {c["id"]: c["name"] for c in gt["categories"]}
    assert [(names[a["category_id"]], a["sounding"]) for a in duet] == [("accordion", True), ("cello", False)]
    assert ims["5_NsbkyLO2Q_0_1000/frame_000/00014.jpg"]["id"] not in by_image      # a frame with no object
    with pytest.raises(ValueError, match="second 13"):          # 411 / 25 = 16.4 s is not in frame_013
        from_dsol_music(DSOL_MUSIC, {"1": "accordion", "3": "cello"}, fps=25)
    with pytest.raises(ValueError, match="category id 3"):
        from_dsol_music(DSOL_MUSIC, {"1": "accordion"})


def test_dsol_audioset(tmp_path):
    names = ["banjo", "cello", "guitar"]
    gt = from_dsol_audioset(DSOL_AUDIOSET, names, offset=0.5)
    assert [(im["video_id"], im["timestamp"]) for im in gt["images"]] == [("8LYWfpPUokc", 3.5), ("gp1DYuoQH08", 6.5)]
    assert [a["bbox"] for a in gt["annotations"]] == [pytest.approx([0.75, 0.5, 0.125, 0.25]),
                                                      pytest.approx([0.25, 0.125, 0.125, 0.25]),
                                                      pytest.approx([0.5, 0.5, 0.5, 0.25])]   # 0.5 + 0.75 -> 1
    assert [c["name"] for c in gt["categories"]] == ["guitar", "banjo"]
    path = tmp_path / "audioset_box.json"
    path.write_text(json.dumps(DSOL_AUDIOSET))
    assert convert("dsol-audioset", path, category_names=names)["images"][0]["timestamp"] == 3.0
    with pytest.raises(ValueError, match="give their names"):
        convert("dsol-audioset", path)


def test_job_writes_the_ground_truth(tmp_path):
    from jobs.convert_gt import main

    src = tmp_path / "vggss.json"
    src.write_text(json.dumps(VGGSS))
    out = main(["vggss", str(src), str(tmp_path / "gt.json"), "--timestamp", "4.0"])
    assert out["images"] == 3 and out["annotations"] == 3
    gt = json.loads((tmp_path / "gt.json").read_text())
    assert gt["images"][0]["timestamp"] == 4.0 and gt == from_vggss(VGGSS, 4.0)
