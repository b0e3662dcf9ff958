"""The paper's training subsets, built from the datasets' own files by class name (Afouras et al. 2022, §4.1), written
as a VGGSound CSV (``youtube_id,start_seconds,label,split``, no header) that :mod:`data.ingest` reads.

Class lists live in ``data/classlists/`` (one name per line, ``#`` comments, an optional TAB + the test-set class
name the evaluation matches: :func:`read_classlist`); each file says where its list comes from.

- **VGGSound subset** (:func:`vggsound_subset`): the rows of VGGSound's ``vggsound.csv`` whose label is in the list.
- **AudioSet-Instruments, single instrument** (:func:`audioset_subset`): AudioSet's segment CSVs
  (``balanced_train_segments.csv``, ``unbalanced_train_segments.csv``, ``eval_segments.csv``: three ``#`` comment
  lines, then ``YTID, start_seconds, end_seconds, positive_labels`` with the labels a quoted, comma-separated list
  of ``/m/...`` MIDs) and the ontology (``ontology.json``: a list of ``{"id", "name", "child_ids", ...}``). A clip
  is kept when exactly one listed class covers its labels (a class covers its MID and its ontology descendants that
  are not listed themselves) and no other label lies under ``instrument_root`` ("Musical instrument") outside the
  listed classes — the single-instrument clips the paper's Table 2 trains on. Its label is that class's name.
"""
from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from avdet.config import require
from avdet.fileio import write_atomic

log = logging.getLogger(__name__)

__all__ = ["SubsetConfig", "read_classlist", "vggsound_subset", "audioset_subset", "read_segments", "ontology_cover",
           "write_vggsound_csv", "make_subset"]


@dataclass
class SubsetConfig:
    """``source``: "vggsound" (reads ``csv``) or "audioset" (reads ``train_segments`` / ``test_segments`` and
    ``ontology``). ``classes``: a class-list file (``data/classlists/``). ``out``: the VGGSound-format CSV to write.
    AudioSet's segment files carry no split: the files in ``train_segments`` become split "train", those in
    ``test_segments`` split "test" (the paper trains on the unbalanced set and tests on the balanced one)."""
    source: str = "vggsound"
    classes: str = ""
    out: str = ""
    csv: str = ""
    train_segments: list[str] = field(default_factory=list)
    test_segments: list[str] = field(default_factory=list)
    ontology: str = ""
    instrument_root: str = "Musical instrument"   # "" = only the listed classes count as instruments

    def check(self) -> None:
        require(self.source in ("vggsound", "audioset"), "source", "must be 'vggsound' or 'audioset'")


def read_classlist(path: str | Path) -> dict[str, str]:
    """``{class name: test-set name}`` in file order; the test-set name is the class name where none is given.
    Raises ValueError naming the line of a duplicated class."""
    out: dict[str, str] = {}
    for lineno, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, test = (p.strip() for p in line.partition("\t"))
        if name in out:
            raise ValueError(f"class list {path} line {lineno}: {name!r} is listed twice")
        out[name] = test or name
    if not out:
        raise ValueError(f"class list {path}: no classes")
    return out


def vggsound_subset(rows: Iterable[list[str]], classes: Iterable[str]) -> tuple[list[list[str]], dict]:
    """VGGSound CSV records (``[youtube_id, start_seconds, label, split]``) -> (the records of the listed classes,
    ``{"kept", "read", "per_class": {name: n}, "absent": [listed names no row carries]}``). Labels are compared
    exactly (VGGSound's strings, e.g. "playing violin, fiddle")."""
    wanted = list(classes)
    keep, per, read = [], {c: 0 for c in wanted}, 0
    for rec in rows:
        if not rec or all(not c.strip() for c in rec):
            continue
        read += 1
        if len(rec) == 4 and rec[2].strip() in per:
            keep.append([c.strip() for c in rec])
            per[rec[2].strip()] += 1
    return keep, {"read": read, "kept": len(keep), "per_class": per, "absent": [c for c in wanted if not per[c]]}


def read_segments(path: str | Path) -> list[tuple[str, float, float, list[str]]]:
    """An AudioSet segment CSV -> ``[(ytid, start_seconds, end_seconds, [MIDs])]`` (``#`` lines skipped)."""
    out = []
    with open(path, newline="") as f:
        lines = (ln for ln in f if not ln.lstrip().startswith("#") and ln.strip())
        for lineno, rec in enumerate(csv.reader(lines, skipinitialspace=True), start=1):
            if len(rec) != 4:
                raise ValueError(f"AudioSet segments {path}: record {lineno} {rec!r} has {len(rec)} fields, expected "
                                 "YTID, start_seconds, end_seconds, positive_labels")
            out.append((rec[0].strip(), float(rec[1]), float(rec[2]), [m.strip() for m in rec[3].split(",") if m]))
    return out


def ontology_cover(ontology: list[dict], classes: Iterable[str], root: str = "") -> tuple[dict[str, str], set[str]]:
    """(``{MID: listed class name}`` — each listed class's own MID and its descendants not listed themselves —,
    the MIDs under ``root`` that no listed class covers and that are no listed class's ancestor: other instruments;
    "Guitar" above a listed "Acoustic guitar" is not one, as AudioSet labels a clip with the ancestors too).
    Raises ValueError naming a listed class the ontology does not have."""
    by_name = {n["name"]: n for n in ontology}
    by_id = {n["id"]: n for n in ontology}
    classes = list(classes)
    missing = [c for c in classes if c not in by_name]
    if missing:
        raise ValueError(f"classes {missing} are not names in the AudioSet ontology (spell them as ontology.json does, "
                         "e.g. 'Violin, fiddle')")
    listed = {by_name[c]["id"]: c for c in classes}

    def descend(mid: str, seen: set[str]) -> Iterable[str]:
        if mid in seen or mid not in by_id:
            return
        seen.add(mid)
        yield mid
        for child in by_id[mid].get("child_ids", []):
            if child not in listed:
                yield from descend(child, seen)

    cover: dict[str, str] = {}
    for mid, name in listed.items():
        for d in descend(mid, set()):
            cover.setdefault(d, name)
    others: set[str] = set()
    if root:
        if root not in by_name:
            raise ValueError(f"instrument_root {root!r} is not a name in the AudioSet ontology")
        holds: dict[str, bool] = {}       # MID -> its subtree holds a listed class (an ancestor: not another one)

        def walk(mid: str) -> bool:
            if mid not in holds and mid in by_id:
                holds[mid] = False            # a cycle stops here
                kids = [walk(c) for c in by_id[mid].get("child_ids", [])]
                holds[mid] = mid in listed or any(kids)
            return holds.get(mid, False)

        walk(by_name[root]["id"])
        others = {m for m, h in holds.items() if not h and m not in cover}
    return cover, others


def audioset_subset(segments: dict[str, list[str | Path]], ontology: list[dict], classes: Iterable[str],
                    root: str = "Musical instrument") -> tuple[list[list[str]], dict]:
    """``{split: [segment CSVs]}`` -> (VGGSound records of the single-instrument clips, counts): kept per class,
    dropped as ``multi_instrument`` (two listed classes, or a listed one and another instrument under ``root``),
    ``no_listed_instrument`` or ``duplicate`` (the same (YTID, whole start second) again)."""
    classes = list(classes)
    cover, others = ontology_cover(ontology, classes, root)
    keep, seen = [], set()
    stats = {"read": 0, "kept": 0, "multi_instrument": 0, "no_listed_instrument": 0, "duplicate": 0,
             "per_class": {c: 0 for c in classes}}
    for split in sorted(segments):
        for path in segments[split]:
            for ytid, start, _end, mids in read_segments(path):
                stats["read"] += 1
                found = {cover[m] for m in mids if m in cover}
                if len(found) > 1 or (found and any(m in others for m in mids)):
                    stats["multi_instrument"] += 1
                    continue
                if not found:
                    stats["no_listed_instrument"] += 1
                    continue
                if (ytid, int(start)) in seen:
                    stats["duplicate"] += 1
                    continue
                seen.add((ytid, int(start)))
                name = found.pop()
                keep.append([ytid, str(int(start)), name, split])
                stats["per_class"][name] += 1
    stats["kept"] = len(keep)
    stats["absent"] = [c for c in classes if not stats["per_class"][c]]
    return keep, stats


def write_vggsound_csv(path: str | Path, rows: list[list[str]]) -> None:
    """The rows as a VGGSound CSV (no header; labels with commas quoted), written atomically."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    write_atomic(Path(path), buf.getvalue())


def subset_inputs(cfg: SubsetConfig) -> dict[str, str]:
    """{key: path} the builder reads (for ``--dry-run``)."""
    paths = {"classes": cfg.classes}
    if cfg.source == "vggsound":
        paths["csv"] = cfg.csv
    else:
        paths["ontology"] = cfg.ontology
        segs = [*cfg.train_segments, *cfg.test_segments]
        paths.update({f"segments[{i}]": p for i, p in enumerate(segs)} or {"train_segments": ""})
    return paths


def make_subset(cfg: SubsetConfig) -> dict:
    """Build the subset ``cfg`` describes, write ``cfg.out``; returns the counts (also logged)."""
    if not cfg.out:
        raise ValueError("make_subset: set out=<subset csv to write>")
    classes = list(read_classlist(cfg.classes))
    if cfg.source == "vggsound":
        with open(cfg.csv, newline="") as f:
            rows, stats = vggsound_subset(csv.reader(f), classes)
    else:
        segments = {s: list(p) for s, p in (("train", cfg.train_segments), ("test", cfg.test_segments)) if p}
        rows, stats = audioset_subset(segments, json.loads(Path(cfg.ontology).read_text()), classes,
                                      cfg.instrument_root)
    write_vggsound_csv(cfg.out, rows)
    if stats["absent"]:
        log.warning("subset: no clip of %d listed classes: %s (a misspelt name, or a list for another dataset?)",
                    len(stats["absent"]), stats["absent"])
    log.info("subset %s: %d of %d clips kept, %d classes -> %s", cfg.source, stats["kept"], stats["read"],
             len(classes) - len(stats["absent"]), cfg.out)
    return {"out": cfg.out, **stats}
