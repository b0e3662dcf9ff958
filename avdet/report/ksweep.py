"""Table 4 (number of clusters K): one row of figures per K from each run's ``results.json``, rendered as a table
and kept as JSON (``jobs/k_sweep.py`` writes ``ksweep.json``; the evaluation's Table 4 reads it when present).

With K > C Hungarian matching is one-to-one, so K − C clusters name no class and their detections are dropped; the
many-to-one figure (argmax = majority vote per cluster, every cluster named) is the one the paper's Table 4 is about
("fairly stable when K is more than the ground-truth classes"), so both are shown.
"""
from __future__ import annotations

from avdet.report.tables import Table, pct

__all__ = ["k_row", "k_table"]


def k_row(k: int, results: dict) -> dict:
    """One K's figures (fractions in [0, 1]; None where the run lacks one)."""
    det, match = results.get("detection", {}), results.get("matching", {})

    def map50(name):
        return det.get(name, {}).get("map_50")

    return {"k": int(k), "num_classes": results.get("summary", {}).get("num_classes"),
            "map50_hungarian": map50("hungarian"), "map50_argmax": map50("argmax"), "map50_1shot": map50("1-shot"),
            "map30_hungarian": det.get("hungarian", {}).get("map_30"),
            "matched_hungarian": match.get("hungarian", {}).get("num_matched"),
            "matched_argmax": match.get("argmax", {}).get("num_matched"),
            "test_cluster_acc": results.get("clusters", {}).get("test", {}).get("hungarian_acc"),
            "test_nmi": results.get("clusters", {}).get("test", {}).get("nmi")}


def k_table(rows: list[dict], dataset: str = "", note: str = "") -> Table:
    """Table 4: a row per K, in K order."""
    body = [[str(r.get("num_classes", "?")), str(r["k"]), pct(r.get("map50_hungarian")), pct(r.get("map50_argmax")),
             pct(r.get("map50_1shot")), f"{r.get('matched_hungarian', '-')}/{r.get('matched_argmax', '-')}",
             pct(r.get("test_cluster_acc")), pct(r.get("test_nmi"))] for r in sorted(rows, key=lambda r: r["k"])]
    return Table("Table 4. Number of clusters K.",
                 (f"{dataset}: " if dataset else "") + "one set of shards, stage 1 → pseudo-annotations → detector → "
                 "evaluation per K. Hung. is one-to-one (with K > C only C clusters are named); Argmax is the "
                 "many-to-one majority vote. 'Named' = clusters with a class, Hung./Argmax. Cluster acc. = Hungarian "
                 "accuracy of the test self-labels." + (f" {note}" if note else ""),
                 ["# GT-cls.", "K", "mAP<sub>50</sub> Hung.", "mAP<sub>50</sub> Argmax", "mAP<sub>50</sub> 1-shot",
                  "Named", "Cluster acc.", "NMI"], body)
