"""Results over seeds: one row of headline figures per seed (from a run's ``results.json``), summarised as mean ±
std (sample std, n − 1) and minimum, and rendered as a table (Markdown / HTML) and the JSON the repo commits
(``docs/results/demo_seeds.json``). A method change counts when it moves the mean beyond the spread.
"""
from __future__ import annotations

import math

from avdet.report.tables import Table

# (key, label, unit): "frac" values are fractions in [0, 1] (shown as %), "pts" are mAP points already
SEED_FIGURES = [
    ("stage1_test_acc", "Stage-1 test cluster acc. (Hung.)", "frac"),
    ("selfbox_iou50", "Self-boxes IoU@0.5 (sounding)", "frac"),
    ("detector_map50", "Detector mAP@0.5 (Hung.)", "pts"),
    ("detector_map50_argmax", "Detector mAP@0.5 (argmax)", "pts"),
    ("detector_map50_1shot", "Detector mAP@0.5 (1-shot)", "pts"),
    ("detector_map50_10shot", "Detector mAP@0.5 (10-shot)", "pts"),
    ("detector_map50_agnostic", "Detector* AP@0.5", "pts"),
    ("selfbox_ap50_agnostic", "Self-boxes* AP@0.5", "pts"),
    ("centre_ap50", "Centre box* AP@0.5", "pts"),
]


def lookup(node, *path):
    """``node[path[0]][path[1]]...``, or None where a key is missing (a figure the run does not have)."""
    for p in path:
        if not isinstance(node, dict) or p not in node:
            return None
        node = node[p]
    return node


def pts(v):
    """A fraction of the COCO evaluator as AP points (×100, 2 decimals); None stays None."""
    return None if v is None else round(100.0 * float(v), 2)


def seed_row(seed: int, results: dict) -> dict:
    """The headline figures of one run's ``results.json`` (``distributed.evaluation.evaluate``): fractions in [0, 1], mAP in
    points (×100 of the COCO evaluator's fractions). A figure the run does not have is ``None``."""
    def get(*path):
        return lookup(results, *path)

    loc = get("localisation", "methods", "self_boxes", "iou50_success")
    return {"seed": seed,
            "stage1_test_acc": None if get("summary", "class_agnostic") else get("clusters", "test", "hungarian_acc"),
            "selfbox_iou50": None if loc is None else float(loc),
            "detector_map50": pts(get("detection", "hungarian", "map_50")),
            "detector_map50_argmax": pts(get("detection", "argmax", "map_50")),
            "detector_map50_1shot": pts(get("detection", "1-shot", "map_50")),
            "detector_map50_10shot": pts(get("detection", "10-shot", "map_50")),
            "detector_map50_agnostic": pts(get("baselines", "detector_agnostic", "map_50")),
            "selfbox_ap50_agnostic": pts(get("baselines", "self_boxes", "map_50")),
            "centre_ap50": pts(get("baselines", "centre_box", "map_50"))}


def summarise(rows: list[dict]) -> dict:
    """{key: {"mean", "std", "min", "max", "n"}} over the seeds that have the figure (std 0 for one seed)."""
    out = {}
    for key, _, _ in SEED_FIGURES:
        vals = [float(r[key]) for r in rows if r.get(key) is not None]
        if not vals:
            continue
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
        out[key] = {"mean": mean, "std": std, "min": min(vals), "max": max(vals), "n": len(vals)}
    return out


def paper_ordering(row: dict) -> bool | None:
    """The paper's ordering in one run: detector* > self-boxes* > centre box* (class-agnostic AP@0.5)."""
    d, s, c = row.get("detector_map50_agnostic"), row.get("selfbox_ap50_agnostic"), row.get("centre_ap50")
    if None in (d, s, c):
        return None
    return d > s > c


def seeds_table(rows: list[dict], command: str = "") -> Table:
    """One line per figure: every seed's value, then mean ± std and the minimum."""
    summary = summarise(rows)

    def fmt(v, unit):
        return "–" if v is None else f"{100 * v:.1f}" if unit == "frac" else f"{v:.1f}"

    header = ["Figure"] + [f"seed {r['seed']}" for r in rows] + ["mean ± std", "min"]
    body = []
    for key, label, unit in SEED_FIGURES:
        s = summary.get(key)
        stat = ["–", "–"] if s is None else [f"{fmt(s['mean'], unit)} ± {fmt(s['std'], unit)}", fmt(s["min"], unit)]
        body.append([label] + [fmt(r.get(key), unit) for r in rows] + stat)
    order = [paper_ordering(r) for r in rows]
    body.append(["Paper's ordering (detector* > self-boxes* > centre*)"]
                + ["yes" if o else "–" if o is None else "no" for o in order] + ["", ""])
    caption = "Percentages (accuracy, IoU) and AP points; * = class-agnostic." + (f" Command: {command}" if command
                                                                                    else "")
    return Table(f"Results over {len(rows)} seeds", caption, header, body)
