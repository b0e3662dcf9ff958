"""The evaluation tables, laid out like the paper's (Afouras et al. 2022, §4): Table 1 (detection vs baselines),
Table 2 (localisation), Table 3 (per-class AP@0.5), Table 4 (number of clusters K), Table 5 (matching strategies),
plus the cluster-quality table. Built from the ``results`` dict of ``distributed.evaluation.evaluate`` (see
:func:`build_tables`), rendered as Markdown or HTML. Figures are percentages with one decimal, as in the paper.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field

from avdet.report import paper

__all__ = ["Table", "pct", "build_tables", "markdown_report", "TABLE1_ROWS", "MATCHING_ROWS"]

# (key in results["baselines"], label, uses no labels?) — "*" = class-agnostic evaluation, as in the paper
TABLE1_ROWS = [
    ("weak_sup_detector", "Ours - weak sup. (detector on self-boxes + true video labels)", False),
    ("weak_sup", "Self-boxes + true test video labels (oracle)", False),
    ("selective_search", "Selective Search*", True),
    ("centre_box", "Centre box*", True),
    ("whole_image", "Whole image*", True),
    ("self_boxes", "Ours - self-boxes*", True),
    ("self_boxes_hungarian", "Ours - self-boxes (Hung. classes)", True),
    ("detector_agnostic", "Ours - detector*", True),
]
MATCHING_ROWS = [("hungarian", "Hung."), ("argmax", "Argmax"), ("1-shot", "1-shot"), ("10-shot", "10-shot")]
LOCALISATION_ROWS = [("whole_image", "Whole image (trivial)"), ("self_boxes", "Ours - self-boxes"),
                     ("detector", "Ours - detector")]


@dataclass
class Table:
    """A titled grid of strings; rows whose index is in ``bold`` are emphasised (the paper's "Ours - full")."""
    title: str
    caption: str
    header: list[str]
    rows: list[list[str]]
    bold: set[int] = field(default_factory=set)

    def markdown(self) -> str:
        """GitHub Markdown: the title in bold, the table, the caption in italics."""
        def esc(text):
            return text.replace("|", "\\|").replace("*", "\\*")

        def line(cells):
            return "| " + " | ".join(cells) + " |"

        rule = "|" + "|".join([":---"] + ["---:"] * (len(self.header) - 1)) + "|"
        out = [f"**{esc(self.title)}**", "", line([esc(h) for h in self.header]), rule]
        out += [line([f"**{esc(c)}**" if i in self.bold and c else esc(c) for c in row])
                for i, row in enumerate(self.rows)]
        if self.caption:
            out += ["", f"*{esc(self.caption)}*"]
        return "\n".join(out) + "\n"

    def html(self) -> str:
        """A caption paragraph (``p.cap``) and a ``<table>``; ``<sub>`` in cells is kept, all else escaped."""
        def cell(tag, text, bold=False):
            body = html.escape(text).replace("&lt;sub&gt;", "<sub>").replace("&lt;/sub&gt;", "</sub>")
            return f"<{tag}>{'<b>' + body + '</b>' if bold and text else body}</{tag}>"
        head = "".join(cell("th", h) for h in self.header)
        body = "".join("<tr>" + "".join(cell("td", c, i in self.bold) for c in row) + "</tr>"
                       for i, row in enumerate(self.rows))
        cap = f"<b>{html.escape(self.title)}</b>" + (f" {html.escape(self.caption)}" if self.caption else "")
        return f"<p class='cap'>{cap}</p><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def pct(v) -> str:
    """0.3945 -> '39.5'; None / missing -> '-' (the paper's mark for "no test samples")."""
    return "-" if v is None else f"{100.0 * float(v):.1f}"


def _check(b: bool) -> str:
    return "✓" if b else "✗"


def table1(results: dict) -> Table:
    """Self-supervised object detection: mAP@0.3, mAP@0.5, mAP@[0.5:0.95] of baselines and the detector."""
    base, full = results.get("baselines", {}), results.get("detection", {}).get("hungarian")
    rows = [[label, _check(no_labels), pct(base[k]["map_30"]), pct(base[k]["map_50"]), pct(base[k]["map_50_95"])]
            for k, label, no_labels in TABLE1_ROWS if k in base]
    keys = [k for k, _, _ in TABLE1_ROWS if k in base]
    if full is not None:
        rows.append(["Ours - full", _check(True), pct(full["map_30"]), pct(full["map_50"]), pct(full["map_50_95"])])
        keys.append("full")
    header = ["Method", "No labels?", "mAP<sub>30</sub>", "mAP<sub>50</sub>", "mAP"]
    ds, note = paper.comparison(results)
    if ds is not None:                      # the paper's figures beside ours, where the protocol matches
        header.append("Paper (mAP<sub>30</sub> / mAP<sub>50</sub> / mAP)")
        rows = [r + [paper.table1_cell(ds, k)] for r, k in zip(rows, keys)]
    if results.get("summary", {}).get("class_agnostic"):
        note = "The stage-1 method has one pseudo-category: class-agnostic rows only. " + note
    return Table("Table 1. Self-supervised object detection.",
                 f"Test set of {results.get('dataset', '?')}. Methods marked * are evaluated class-agnostic; "
                 "'Ours - full' maps detector pseudo-classes to classes by Hungarian matching on the training "
                 "self-labels. Weak sup.: the same detector trained on the self-boxes with the true TRAINING video "
                 f"labels (identity class mapping); the oracle row gives each test self-box its true video label. {note}",
                 header, rows, bold={len(rows) - 1} if full is not None else set())


def table2(results: dict) -> Table:
    """Localisation (paper Table 2 style): boxes above a confidence threshold as a binary pseudo-heatmap."""
    loc = results.get("localisation", {})
    methods = loc.get("methods", {})
    rows = [[label, pct(methods[k]["iou50_success"]), pct(methods[k]["auc"]), pct(methods[k]["ciou_30"])]
            for k, label in LOCALISATION_ROWS if k in methods]
    n = next((m.get("num_samples") for m in methods.values()), 0)
    return Table("Table 2. Comparison to sound localisation.",
                 f"{n} test frames with a sounding object; ground truth = union of the sounding objects' boxes "
                 "(the annotators' consensus map where boxes carry annotators); "
                 f"prediction = union of boxes with confidence ≥ {loc.get('threshold', '?')} (chosen: "
                 f"{loc.get('threshold_source', 'fixed')}; never on the test set).",
                 ["Method", "IoU-0.5", "AUC", "cIoU-0.3"], rows,
                 bold={len(rows) - 1} if rows and "detector" in methods else set())


PROTOCOL_ROWS = [("dsol_single_source", "DSOL single source", "IoU@0.5", "iou_50"),
                 ("dsol_multi_source", "DSOL multi source (class-aware)", "CIoU@0.3", "ciou_30"),
                 ("flickr", "Flickr-SoundNet (consensus)", "cIoU@0.5", "ciou_50")]


def table2_protocols(results: dict) -> Table:
    """The field's localisation protocols (BASELINES.md) on the frames each applies to."""
    loc = results.get("localisation", {})
    prot = loc.get("protocols", {})
    rows = []
    for key, name, success, field_ in PROTOCOL_ROWS:
        for k, label in LOCALISATION_ROWS:
            m = prot.get(key, {}).get(k)
            if m is not None:
                rows.append([name, label, f"{success} {pct(m[field_])}", pct(m["auc"]), pct(m.get("nsa")),
                             str(m["num_samples"])])
    return Table("Table 2b. The field's localisation protocols.",
                 "Single source: frames with one (sounding) object, class-agnostic. Multi source: frames with two or "
                 "more objects, classes through Hungarian matching; NSA = share of the silent classes' area left "
                 "silent. Flickr: consensus of the annotators' boxes. Detector boxes kept from confidence "
                 f"{loc.get('threshold', '?')} on ({loc.get('threshold_source', 'fixed')}).",
                 ["Protocol", "Method", "Success", "AUC", "NSA", "# frames"], rows)


def table3(results: dict) -> Table:
    """Per-class AP@0.5 (Hungarian matching); '-' where the test set has no object of that class."""
    classes = list(results.get("classes", []))
    name = results.get("dataset", "?")
    rows = []
    for label, m in ((f"{name} (detector)", results.get("detection", {}).get("hungarian")),
                     (f"{name} (self-boxes)", results.get("baselines", {}).get("self_boxes_hungarian"))):
        if m is not None:
            per = m.get("ap50_per_class", {})
            rows.append([label, pct(m["map_50"])] + [pct(per.get(c)) for c in classes])
    ds, note = paper.comparison(results)
    theirs = paper.per_class_row(ds, classes)
    if theirs is not None:
        rows.append([f"{ds} (paper)"] + theirs)
    return Table("Table 3. Per-class mAP breakdown.",
                 "AP@0.5 per class after Hungarian matching. For entries with '-' the test set does not contain "
                 f"any samples for that class (blank: the paper lists no such class). {note}",
                 ["Dataset", "mAP<sub>50</sub>"] + classes, rows)


def table4(results: dict) -> Table:
    """Number of clusters K against the number of ground-truth classes: the rows of ``jobs/k_sweep.py``
    (``results["k_sweep"]``) when the evaluation found them, else this run's one row."""
    if results.get("k_sweep", {}).get("rows"):
        from avdet.report.ksweep import k_table     # ksweep builds on this module's Table

        sweep = results["k_sweep"]
        return k_table(sweep["rows"], sweep.get("dataset", ""), f"Command: {sweep.get('command', '?')}")
    s, full = results.get("summary", {}), results.get("detection", {}).get("hungarian")
    rows = [[str(s.get("num_classes", "?")), str(s.get("num_clusters", "?")), pct(full["map_50"]) if full else "-"]]
    return Table("Table 4. Number of clusters K.", "This run only; `python jobs/k_sweep.py --k 5,9,18` for the "
                 "ablation.", ["# GT-cls.", "K", f"mAP<sub>50</sub> {results.get('dataset', '')}".strip()], rows)


def table5(results: dict) -> Table:
    """Matching strategies: detection mAP after each cluster → class matching, and test self-label accuracy."""
    det, match = results.get("detection", {}), results.get("matching", {})
    rows = [[label, pct(det[k]["map_50"]), pct(det[k]["map_30"]), pct(det[k]["map_50_95"]),
             pct(match.get(k, {}).get("test_self_label_acc")), str(match.get(k, {}).get("num_labels", "-"))]
            for k, label in MATCHING_ROWS if k in det]
    unit = next((match[k].get("unit") for k, _ in MATCHING_ROWS if "unit" in match.get(k, {})), "frame")
    header = ["Matching", "mAP<sub>50</sub>", "mAP<sub>30</sub>", "mAP", "Self-label acc. (test)", "# labels"]
    ds, note = paper.comparison(results)
    if ds is not None:
        header.append("Paper mAP<sub>50</sub>")
        rows = [r + [paper.table5_cell(ds, k)] for r, (k, _) in zip(rows, [m for m in MATCHING_ROWS if m[0] in det])]
    return Table("Table 5. Matching strategies.",
                 "Clusters are named from the training self-labels; m-shot = majority vote over the m most confident "
                 f"{unit}s per cluster. '# labels' = true labels the matching used ({unit}s for m-shot). {note}",
                 header, rows)


def cluster_table(results: dict) -> Table:
    """NMI, ARI, Hungarian accuracy and purity of the pseudo-classes against the true labels."""
    cl = results.get("clusters", {})
    rows = [[split, pct(m["nmi"]), pct(m["ari"]), pct(m["hungarian_acc"]), pct(m["purity"]), str(m.get("n", "-"))]
            for split, m in cl.items()]
    return Table("Table 6. Cluster quality of the self-labels.", "Pseudo-class of each frame against its true "
                 "video label (frames without a label are left out).",
                 ["Split", "NMI", "ARI", "Hung. acc.", "Purity", "# frames"], rows)


def onscreen_table(results: dict) -> Table:
    """Seed 001's Table 1: on/off-screen recognition accuracy by each rule (``results["onscreen"]``)."""
    o = results["onscreen"]
    names = {"m": "m<sub>on</sub> (distance below threshold)", "d": f"d<sub>on</sub> > {o['d_threshold']:g}",
             "either": "m<sub>on</sub> ‖ d<sub>on</sub> (the paper's rule)"}
    rows = [[names[r], pct(o[r]["accuracy"]), pct(o[r]["on_recall"]), pct(o[r]["off_recall"])]
            for r in ("m", "d", "either")]
    return Table("Table 7. On/off-screen sound recognition (seed 001's Table 1).",
                 f"{o['on_frames']} frames of on-screen test clips, {o['off_frames']} of off-screen ones (the "
                 f"instrument heard, not in view); distance threshold {o['threshold']:.3f} = mean of the median "
                 f"matching and non-matching pair distances. Seed 001 reports AVE and SSL, not this set.",
                 ["Criterion", "Accuracy", "On-screen recall", "Off-screen recall"], rows, {2})


def build_tables(results: dict) -> list[Table]:
    """All tables, in report order."""
    return [table1(results), table2(results), table2_protocols(results), table3(results), table4(results),
            table5(results), cluster_table(results)] + ([onscreen_table(results)] if "onscreen" in results else [])


def summary_line(results: dict) -> str:
    """One line saying which dataset and run the figures are for."""
    s, g = results.get("summary", {}), results.get("ground_truth", {})
    joined = (f" (the annotated ones of {g['num_test_frames']} ingested; {g['num_missed']} of {g['num_gt_images']} "
              f"ground-truth images joined no frame, {g['num_unsampled']} were not sampled)") if g else ""
    return (f"Dataset: {results.get('dataset', '?')}; {s.get('num_test_frames', '?')} test frames{joined}, "
            f"{s.get('num_gt_boxes', '?')} ground-truth boxes ({s.get('detection_gt', 'all')} objects), "
            f"{s.get('num_classes', '?')} classes, K = {s.get('num_clusters', '?')} pseudo-classes; "
            f"detector: {s.get('detector', '?')}.")


def markdown_report(results: dict) -> str:
    """``tables.md``: a heading, the summary line, every table."""
    parts = [f"# avdet evaluation: {results.get('dataset', '?')}", "", summary_line(results), ""]
    for t in build_tables(results):
        parts += [t.markdown()]
    return "\n".join(parts)
