"""The stage-1 methods compared on one protocol (issue 17): one column per method, each figure as mean ± std and the
minimum over its seeds, beside the trivial centre-box and whole-image predictions of the same test set.

Every figure comes from a run's ``results.json`` (``distributed.evaluation.evaluate``): the same self-box
extraction, the same detector job on each method's boxes (pseudo-classes where the method has them, one
class-agnostic category otherwise) and the same scorers. A class-aware figure of a class-agnostic method is "n/a".
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from avdet.report.seeds import lookup, pts
from avdet.report.tables import Table

__all__ = ["FIGURES", "method_row", "summarise_methods", "methods_table"]


@dataclass(frozen=True)
class Figure:
    """``key`` of a run row; ``unit`` "frac" (shown as %) or "pts" (AP points); ``classes``: needs pseudo-classes;
    ``whole`` / ``centre``: the key of the same figure for the whole-image / centre-box prediction (None: n/a)."""
    key: str
    label: str
    unit: str
    classes: bool = False
    whole: str | None = None
    centre: str | None = None


FIGURES = [
    Figure("stage1_test_acc", "Stage-1 test cluster acc. (Hung.)", "frac", classes=True),
    Figure("single_iou50", "Single source: self-boxes IoU@0.5", "frac", whole="whole_single_iou50"),
    Figure("single_auc", "Single source: self-boxes AUC", "frac", whole="whole_single_auc"),
    Figure("ciou30", "Class-agnostic: self-boxes cIoU@0.3", "frac", whole="whole_ciou30"),
    Figure("loc_auc", "Class-agnostic: self-boxes AUC", "frac", whole="whole_loc_auc"),
    Figure("multi_ciou30", "Multi source, class-aware: self-boxes CIoU@0.3", "frac", classes=True),
    Figure("multi_nsa", "Multi source, class-aware: self-boxes NSA", "frac", classes=True),
    Figure("selfbox_ap50", "Self-boxes* AP@0.5", "pts", whole="whole_ap50", centre="centre_ap50"),
    Figure("detector_ap50", "Detector* AP@0.5 (trained on the self-boxes)", "pts", whole="whole_ap50",
           centre="centre_ap50"),
    Figure("detector_map50", "Detector mAP@0.5 (Hung. classes)", "pts", classes=True),
    # the multi-source test split (synthetic.num_multi_per_class: duets, two sounding instruments), when the runs have it
    Figure("duet_selfbox_ciou30", "Duets, class-aware: self-boxes CIoU@0.3", "frac", classes=True),
    Figure("duet_detector_ciou30", "Duets, class-aware: detector CIoU@0.3", "frac", classes=True),
    Figure("duet_detector_nsa", "Duets, class-aware: detector NSA", "frac", classes=True),
    Figure("duet_detector_ap50", "Duets: detector* AP@0.5", "pts", whole="duet_whole_ap50", centre="duet_centre_ap50"),
    # seed 001's on/off-screen decision (synthetic.num_offscreen_per_class), for a method that makes one
    Figure("onscreen_acc", "On/off-screen accuracy (m_on ‖ d_on)", "frac"),
]


def method_row(method: str, seed: int, results: dict, duets: dict | None = None) -> dict:
    """One run's figures (fractions in [0, 1], AP in points; None where the run lacks one) and those of the
    trivial predictions on its test set, with ``method``, ``seed`` and ``class_agnostic``; ``duets``: the run's
    evaluation of the multi-source test split (the ``duet_`` figures; None: the run has none)."""
    agnostic = bool(lookup(results, "summary", "class_agnostic"))
    loc, prot, base = (lookup(results, "localisation", "methods") or {}, lookup(results, "localisation", "protocols") or {},
                       results.get("baselines", {}))
    single, multi = prot.get("dsol_single_source", {}), prot.get("dsol_multi_source", {})
    return {"method": method, "seed": seed, "class_agnostic": agnostic,
           "stage1_test_acc": None if agnostic else lookup(results, "clusters", "test", "hungarian_acc"),
           "single_iou50": lookup(single, "self_boxes", "iou_50"), "single_auc": lookup(single, "self_boxes", "auc"),
           "ciou30": lookup(loc, "self_boxes", "ciou_30"), "loc_auc": lookup(loc, "self_boxes", "auc"),
           "multi_ciou30": None if agnostic else lookup(multi, "self_boxes", "ciou_30"),
           "multi_nsa": None if agnostic else lookup(multi, "self_boxes", "nsa"),
           "selfbox_ap50": pts(lookup(base, "self_boxes", "map_50")),
           "detector_ap50": pts(lookup(base, "detector_agnostic", "map_50")),
           "detector_map50": None if agnostic else pts(lookup(results, "detection", "hungarian", "map_50")),
           "whole_single_iou50": lookup(single, "whole_image", "iou_50"),
           "whole_single_auc": lookup(single, "whole_image", "auc"),
           "whole_ciou30": lookup(loc, "whole_image", "ciou_30"), "whole_loc_auc": lookup(loc, "whole_image", "auc"),
           "whole_ap50": pts(lookup(base, "whole_image", "map_50")),
           "centre_ap50": pts(lookup(base, "centre_box", "map_50")),
           "onscreen_acc": lookup(results, "onscreen", "either", "accuracy"), **_duet_figures(duets or {}, agnostic)}


def _duet_figures(multi: dict, agnostic: bool) -> dict:
    duets = lookup(multi, "localisation", "protocols", "dsol_multi_source") or {}
    base = multi.get("baselines", {})
    return {"duet_selfbox_ciou30": None if agnostic else lookup(duets, "self_boxes", "ciou_30"),
            "duet_detector_ciou30": None if agnostic else lookup(duets, "detector", "ciou_30"),
            "duet_detector_nsa": None if agnostic else lookup(duets, "detector", "nsa"),
            "duet_detector_ap50": pts(lookup(base, "detector_agnostic", "map_50")),
            "duet_whole_ap50": pts(lookup(base, "whole_image", "map_50")),
            "duet_centre_ap50": pts(lookup(base, "centre_box", "map_50"))}


def _stats(vals: list[float]) -> dict:
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(vals), "max": max(vals), "n": len(vals)}


def _keys() -> list[str]:
    return list(dict.fromkeys([f.key for f in FIGURES] + [k for f in FIGURES for k in (f.whole, f.centre) if k]))


def summarise_methods(rows: list[dict]) -> dict:
    """{method: {key: {"mean", "std" (sample, n − 1), "min", "max", "n"}}} over the seeds that have the figure; the
    trivial predictions' figures are summarised under the method ``"whole image"`` / ``"centre box"`` (keys as in
    :data:`FIGURES`) over every run."""
    out: dict[str, dict] = {}
    for m in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == m]
        out[m] = {k: _stats([float(r[k]) for r in mine if r.get(k) is not None]) for k in _keys()
                  if any(r.get(k) is not None for r in mine)}
    for name, attr in (("whole image", "whole"), ("centre box", "centre")):
        out[name] = {}
        for f in FIGURES:
            src = getattr(f, attr)
            vals = [float(r[src]) for r in rows if src and r.get(src) is not None]
            if vals:
                out[name][f.key] = _stats(vals)
    return out


def ordering_holds(row: dict) -> bool | None:
    """The paper's ordering in one run: detector* > self-boxes* > centre box* (class-agnostic AP@0.5)."""
    d, s, c = row.get("detector_ap50"), row.get("selfbox_ap50"), row.get("centre_ap50")
    return None if None in (d, s, c) else d > s > c


def methods_table(rows: list[dict], command: str = "") -> Table:
    """Rows = figures (those some run has); columns = the methods in order of appearance, then whole image* and
    centre box*; each cell "mean ± std (min)" over the seeds, "n/a" where the method has no such figure."""
    summary = summarise_methods(rows)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    agnostic = {m: all(r["class_agnostic"] for r in rows if r["method"] == m) for m in methods}
    seeds = {m: sorted({r["seed"] for r in rows if r["method"] == m}) for m in methods}

    def cell(s: dict | None, unit: str, trivial: bool = False) -> str:
        """mean ± std (min); the mean alone for one seed, or for a trivial prediction that is the same every run."""
        if s is None:
            return "–"
        f = (lambda v: f"{100 * v:.1f}") if unit == "frac" else (lambda v: f"{v:.1f}")
        alone = s["n"] == 1 or (trivial and s["min"] == s["max"])
        return f(s["mean"]) if alone else f"{f(s['mean'])} ± {f(s['std'])} ({f(s['min'])})"

    header = ["Figure"] + [f"{m} ({len(seeds[m])} seed{'s' * (len(seeds[m]) != 1)})" for m in methods]
    header += ["Whole image*", "Centre box*"]
    body = []
    for f in FIGURES:
        if not any(r.get(k) is not None for r in rows for k in (f.key, f.whole, f.centre) if k):
            continue
        line = [f.label] + ["n/a" if f.classes and agnostic[m] else cell(summary[m].get(f.key), f.unit)
                            for m in methods]
        line += [cell(summary[b].get(f.key), f.unit, trivial=True) if getattr(f, attr) else "n/a"
                 for b, attr in (("whole image", "whole"), ("centre box", "centre"))]
        body.append(line)
    holds = []
    for m in methods:
        o = [ordering_holds(r) for r in rows if r["method"] == m]
        holds.append(f"{sum(bool(x) for x in o)}/{sum(x is not None for x in o)} seeds")
    body.append(["Paper's ordering (detector* > self-boxes* > centre*)"] + holds + ["", ""])
    caption = ("Mean ± std (minimum) over seeds; percentages (accuracy, IoU, AUC, NSA) and AP points; * = "
               "class-agnostic; n/a = the method has no pseudo-classes (or the baseline no such figure). Every method "
               "starts from the same random initialisation and gets the same stage-1 and detector budget."
               + (f" Command: {command}" if command else ""))
    return Table(f"Stage-1 methods compared ({', '.join(methods)})", caption, header, body)
