"""The paper's published figures (``paper.json`` beside this file: Tables 1–6 of Afouras et al. 2022 with their
protocol) and the rule for printing them beside ours: only where the protocol matches — the same test set and the
paper's K for it — and otherwise a one-line note saying what differs.

``paper_number("1", "Ours - full", "vggsound:map_50")`` -> 39.4 (percent, as printed; None where the paper has '-').
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

__all__ = ["paper_numbers", "paper_number", "paper_dataset", "comparison", "table1_cell", "table5_cell",
           "per_class_row"]

PAPER_JSON = Path(__file__).with_name("paper.json")


@lru_cache(maxsize=1)
def paper_numbers() -> dict:
    """The whole ``paper.json``."""
    return json.loads(PAPER_JSON.read_text())


def paper_number(table: str | int, row: str, column: str) -> float | None:
    """The paper's figure for (table, row, column); KeyError naming what exists when the cell is not in the paper."""
    tables = paper_numbers()["tables"]
    t = tables.get(str(table))
    if t is None:
        raise KeyError(f"paper table {table!r}: the paper's tables are {sorted(tables)}")
    if row not in t["rows"]:
        raise KeyError(f"paper table {table} has no row {row!r}; rows: {list(t['rows'])}")
    if column not in t["rows"][row]:
        raise KeyError(f"paper table {table}, row {row!r} has no column {column!r}; columns: {list(t['rows'][row])}")
    return t["rows"][row][column]


def paper_dataset(results: dict) -> str | None:
    """Which of the paper's test sets ``results`` is on: ``evaluate.paper_dataset`` when set, else guessed from the
    dataset name ("vggsound", "audioset", "openimages"; None: a test set the paper does not report)."""
    given = str(results.get("config", {}).get("paper_dataset", "") or "")
    if given:
        return None if given == "none" else given
    name = str(results.get("dataset", "")).casefold().replace(" ", "").replace("-", "")
    return next((d for d in ("openimages", "audioset", "vggsound") if d in name), None)


def comparison(results: dict) -> tuple[str | None, str]:
    """(the paper's test set to print beside ours, or None; a one-line note for the caption). Figures are shown
    only when the test set is one of the paper's and K is the paper's K for it."""
    ds = paper_dataset(results)
    if ds is None:
        return None, f"The paper reports no figures on {results.get('dataset', 'this test set')!r}."
    spec = paper_numbers()["datasets"].get(ds)
    if spec is None:
        known = sorted(paper_numbers()["datasets"])
        return None, f"evaluate.paper_dataset={ds!r} is none of the paper's test sets {known}."
    k = results.get("summary", {}).get("num_clusters")
    if k != spec["num_clusters"]:
        return None, (f"Paper figures not shown: the paper's {ds} figures use K = {spec['num_clusters']} "
                      f"(trained on {spec['train']}); this run has K = {k}.")
    return ds, f"Paper: {spec['test']}; trained on {spec['train']}, K = {spec['num_clusters']}."


TABLE1_PAPER_ROWS = {"weak_sup": "Ours - weak sup.", "centre_box": "Center Box*", "self_boxes": "Ours - self-boxes*",
                     "full": "Ours - full"}
_CLASS_ALIASES = {"french horn": "horn"}        # OpenImages' name -> the paper's Table 3 heading


def _pct(v) -> str:
    return "-" if v is None else f"{float(v):.1f}"


def table1_cell(ds: str | None, key: str) -> str:
    """'mAP30 / mAP50 / mAP' of the paper's row for our Table 1 row ``key`` on test set ``ds``; '' when none."""
    row = TABLE1_PAPER_ROWS.get(key)
    cells = paper_numbers()["tables"]["1"]["rows"].get(row, {}) if ds else {}
    if f"{ds}:map_50" not in cells:
        return ""
    return " / ".join(_pct(cells[f"{ds}:{m}"]) for m in ("map_30", "map_50", "map_50_95"))


def table5_cell(ds: str | None, key: str) -> str:
    """The paper's mAP@0.5 for matching ``key`` ("hungarian", "argmax", "1-shot", ...) on ``ds``; '' when none."""
    cells = paper_numbers()["tables"]["5"]["rows"].get(key, {}) if ds else {}
    return _pct(cells[f"{ds}:map_50"]) if f"{ds}:map_50" in cells else ""


def per_class_row(ds: str | None, classes: list[str]) -> list[str] | None:
    """The paper's [mAP@0.5, AP@0.5 per class ...] for our ``classes`` (Table 3, or Table 6 for
    ``openimages_general``), '' for a class the paper does not list; None when the paper has no such row."""
    if ds == "openimages_general":
        rows = paper_numbers()["tables"]["6"]["rows"]
        per = {n.casefold(): r["ap_50"] for n, r in rows.items()}
        mean = rows["Mean"]["ap_50"]
    elif ds in paper_numbers()["tables"]["3"]["rows"]:
        row = paper_numbers()["tables"]["3"]["rows"][ds]
        per, mean = {n.casefold(): v for n, v in row.items()}, row["map_50"]
    else:
        return None
    out = []
    for c in classes:
        key = _CLASS_ALIASES.get(c.casefold(), c.casefold())
        out.append(_pct(per[key]) if key in per else "")
    return [_pct(mean)] + out
