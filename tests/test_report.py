"""The evaluation report (avdet.report): tables, pictures, and the HTML page as headless Chromium renders it."""
from __future__ import annotations

import html.parser
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avdet.report import Box, Figure, build_tables, confusion_image, draw_boxes, heatmap_overlay, line_plot, pct
from avdet.report import scores, write_report
from avdet.report.figures import confusion_figure, curve_figures

CLASSES = ["accordion", "cello", "harp"]


def _det(m50: float, per: dict | None = None) -> dict:
    d = {"map_30": min(1.0, m50 + 0.1), "map_50": m50, "map_75": m50 / 2, "map_50_95": m50 / 3,
         "ap50_class_agnostic": m50}
    if per is not None:
        d["ap50_per_class"] = per
    return d


def fake_results() -> dict:
    """A complete results dict as distributed.evaluation.evaluate writes it (numbers made up)."""
    per = {"accordion": 0.8, "cello": 0.3, "harp": None}
    loc = {"iou50_success": 0.5, "auc": 0.45, "ciou_30": 0.6, "mean_ciou": 0.4, "mean_iou": 0.4, "num_samples": 4}
    return {
        "dataset": "fake-set", "classes": CLASSES,
        "config": {"manifest": "/x/manifest.json", "detection_gt": "all", "m_shots": [1, 10]},
        "summary": {"num_test_frames": 4, "num_gt_boxes": 5, "num_classes": 3, "num_clusters": 4,
                    "detection_gt": "all", "detector": "detector.pt"},
        "matching": {k: {"mapping": [1, -1, 0, 2], "num_labels": 10, "test_self_label_acc": 0.7}
                     for k in ("hungarian", "argmax", "1-shot", "10-shot")},
        "detection": {k: _det(0.394, per) for k in ("hungarian", "argmax", "1-shot", "10-shot")},
        "baselines": {"weak_sup": _det(0.429, per), "centre_box": _det(0.056), "whole_image": _det(0.01),
                      "self_boxes": _det(0.296), "self_boxes_hungarian": _det(0.2, per),
                      "detector_agnostic": _det(0.45)},
        "localisation": {"threshold": 0.5, "threshold_source": "train_pseudo (20 training frames)",
                         "methods": {"whole_image": loc, "self_boxes": loc, "detector": loc},
                         "protocols": {"threshold": 0.5,
                                       "dsol_single_source": {"detector": {"iou_50": 0.25, "auc": 0.3, "mean_iou": 0.3,
                                                                           "num_samples": 4}},
                                       "dsol_multi_source": {"detector": {"ciou_30": 0.5, "auc": 0.4, "nsa": 0.75,
                                                                          "mean_ciou": 0.4, "num_samples": 2}}}},
        "clusters": {"train": {"nmi": 0.8, "ari": 0.7, "hungarian_acc": 0.9, "purity": 0.9, "n": 30},
                     "test": {"nmi": 0.6, "ari": 0.5, "hungarian_acc": 0.7, "purity": 0.75, "n": 4}},
        "confusion": {"test": [[0, 2, 0], [1, 0, 0], [1, 0, 0], [0, 0, 1]]},
        "curves": {"stage1": [{"epoch": e, "train_loss": 2.0 - 0.3 * e, "relabel_true_hungarian_acc": 0.2 * e}
                              for e in range(4)],
                   "detector": [{"epoch": e, "loss": 1.0 / (1 + e)} for e in range(3)]},
    }


def fake_figures(results: dict) -> list[Figure]:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    figs = curve_figures(results["curves"])
    figs.append(Figure("det_00", draw_boxes(frame, [Box((2, 2, 20, 18), "harp 0.91"),
                                                    Box((4, 4, 16, 20), "GT harp", (255, 255, 255), True, True)]),
                       "frame 0 detections", "detections"))
    figs.append(Figure("heat_00", heatmap_overlay(frame, rng.random((7, 7)), [Box((1, 1, 12, 12), "cello (0.50)")]),
                       "frame 0 heatmap", "heatmaps"))
    figs.append(confusion_figure(np.array(results["confusion"]["test"]), [1, -1, 0, 2], CLASSES, "test"))
    return figs


def test_tables_follow_the_paper():
    res = fake_results()
    t1, t2, t2b, t3, t4, t5, t6 = build_tables(res)
    assert t1.header == ["Method", "No labels?", "mAP<sub>30</sub>", "mAP<sub>50</sub>", "mAP"]
    assert t1.rows[-1] == ["Ours - full", "✓", "49.4", "39.4", "13.1"] and t1.bold == {len(t1.rows) - 1}
    assert t1.rows[0][1] == "✗" and "Centre box*" in [r[0] for r in t1.rows]
    assert t3.header[2:] == CLASSES and t3.rows[0][2:] == ["80.0", "30.0", "-"]
    assert t4.rows == [["3", "4", "39.4"]]
    assert [r[0] for r in t5.rows] == ["Hung.", "Argmax", "1-shot", "10-shot"]
    assert [r[0] for r in t2.rows] == ["Whole image (trivial)", "Ours - self-boxes", "Ours - detector"]
    assert "train_pseudo (20 training frames)" in t2.caption
    assert t2b.rows == [["DSOL single source", "Ours - detector", "IoU@0.5 25.0", "30.0", "-", "4"],
                        ["DSOL multi source (class-aware)", "Ours - detector", "CIoU@0.3 50.0", "40.0", "75.0", "2"]]
    md = t1.markdown()
    assert "| Centre box\\* |" in md and "| **Ours - full** |" in md
    assert pct(None) == "-" and pct(0.12345) == "12.3"


def test_pictures():
    frame = np.zeros((10, 20, 3), np.uint8)
    img = draw_boxes(frame, [Box((0, 0, 5, 5), "a"), Box((5, 2, 20, 10), "b", dashed=True, label_below=True)])
    assert img.size == (512, 256) and np.asarray(img).any()
    assert heatmap_overlay(frame, np.zeros((3, 3))).size == (512, 256)
    cm = confusion_image(np.array([[5, 0], [1, 3], [0, 0]]), ["k0", "k1", "k2"], ["x", "y"])
    assert cm.width > 2 * 8 and cm.height > 3 * 8
    plot = line_plot({"loss": [3, None, 1.0], "other": [float("nan")] * 3}, "t")
    assert plot.size == (420, 280) and (np.asarray(plot) < 200).any()
    assert np.asarray(line_plot({}, "empty")).min() < 255        # "no data" written


def test_scores_map_and_drop_clusters():
    preds = {7: {"boxes": np.array([[0, 0, 2, 2], [1, 1, 3, 3], [0, 0, 1, 1]]), "scores": np.array([0.9, 0.8, 0.7]),
                 "labels": np.array([1, 2, 3])}}
    dets = scores.mapped_detections(preds, [2, -1, 0])             # cluster 1 unmatched -> its box dropped
    assert [(d["category_id"], d["bbox"]) for d in dets] == [(3, [0.0, 0.0, 2.0, 2.0]), (1, [0.0, 0.0, 1.0, 1.0])]
    assert {d["category_id"] for d in scores.mapped_detections(preds, None)} == {1}
    m = scores.matchings([0, 0, 1, 1, 1], [1, 1, 0, 0, 1], [0.9, 0.1, 0.5, 0.8, 0.95], K=3, C=2, m_shots=[1])
    assert m["hungarian"]["mapping"][:2] == [1, 0] and m["1-shot"]["mapping"] == [1, 1, -1]
    assert m["1-shot"]["num_labels"] == 2 and m["argmax"]["num_labels"] == 5


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed: run `make test` (its setup installs the Debian chromium package)")
    return exe


def _run_chromium(page: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp / 'profile'}",
           *args, page.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


class _Images(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs).get("src", ""))


def test_report_renders_in_chromium(tmp_path):
    res = fake_results()
    figs = fake_figures(res)
    paths = write_report(tmp_path / "rep", res, figs)
    assert len(paths["images"]) == len(figs) == 6
    assert "Table 5. Matching strategies." in Path(paths["tables"]).read_text()
    page = Path(paths["html"])
    dom = _run_chromium(page, tmp_path, "--dump-dom").stdout
    parser = _Images()
    parser.feed(dom)
    assert len(parser.srcs) == len(figs) and "Table 1. Self-supervised object detection." in dom
    for src in parser.srcs:
        with Image.open(page.parent / src) as im:
            im.load()
            assert im.width > 10 and im.height > 10
    shot = tmp_path / "shot.png"
    _run_chromium(page, tmp_path, f"--screenshot={shot}", "--window-size=1200,2000")
    with Image.open(shot) as im:
        assert im.format == "PNG" and im.size == (1200, 2000)
        pixels = np.asarray(im.convert("L"))
    assert pixels.std() > 5 and (pixels < 100).mean() > 0.005     # text, tables and pictures, not a blank page


def test_report_rejects_bad_figure_names(tmp_path):
    img = Image.new("RGB", (4, 4))
    with pytest.raises(ValueError, match="figure names"):
        write_report(tmp_path, fake_results(), [Figure("a b", img, "", "curves")])
