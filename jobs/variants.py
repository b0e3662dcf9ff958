"""The pipeline once per variant of one config (seeds, numbers of clusters K), on shared data, and the table of
their results: what ``jobs/seeds.py`` and ``jobs/k_sweep.py`` share.

Variant ``v`` runs every stage after ingest under ``<workdir>/<kind>/<name of v>/``; the synthetic data and the shards
live once in ``<workdir>`` (``data_dir``). Finished stages are skipped (each stage's ``done.json``), so a re-run
resumes. After every variant the table is rewritten as ``<stem>.json``, ``<stem>.md`` and ``<stem>.html`` (with a
link to each variant's report), so a stopped run keeps what it has.
"""
from __future__ import annotations

import dataclasses
import html
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from avdet.config import ConfigError
from avdet.fileio import write_atomic, write_json
from distributed.pipeline import PipelineConfig, run_pipeline
from jobs.console import Console


@dataclasses.dataclass
class Variant:
    """``key`` (the row's value: a seed, a K), ``label`` (how the table's links name it) and its config."""
    key: Any
    label: str
    cfg: PipelineConfig


def variant_config(base: PipelineConfig, kind: str, name: str, **changes) -> PipelineConfig:
    """``base`` with ``changes``, its stage outputs under ``<workdir>/<kind>/<name>``, the data of ``base``."""
    return dataclasses.replace(base, data_dir=base.data_dir or base.workdir,
                               workdir=str(Path(base.workdir) / kind / name), **changes)


def run_variants(job: str, variants: list[Variant], row: Callable[[Any, dict, float, dict | None], dict],
                 write: Callable[[list[dict], dict], dict], verbose: bool = False) -> tuple[list[dict], dict, dict]:
    """Run the pipeline of every variant in turn; ``row(key, results.json, wall seconds, the multi-source split's
    results.json or None)`` is its table row and ``write(rows, {key: report path})`` rewrites the table after each.
    Returns (rows, wall seconds per key, what the last ``write`` returned)."""
    rows, reports, timings, doc = [], {}, {}, {}
    for v in variants:
        with Console(v.cfg.workdir, verbose) as console:
            console.say(f"== {job}: {v.label} ==")
            t0 = time.perf_counter()
            try:
                results = run_pipeline(v.cfg, console)
            except ConfigError as e:
                sys.exit(f"{job}: {e}")
            console.summary(results)
        ev = results.get("evaluate", {})
        if "results" not in ev:
            sys.exit(f"{job}: {v.label} produced no evaluation ({ev}); the table needs ground truth")
        timings[v.key] = round(time.perf_counter() - t0, 1)
        multi = results.get("evaluate_multi", {}).get("results")
        rows.append(row(v.key, json.loads(Path(ev["results"]).read_text()), timings[v.key],
                        json.loads(Path(multi).read_text()) if multi else None))
        reports[v.key] = ev.get("report")
        doc = write(rows, reports)
    return rows, timings, doc


def write_table(out: Path, stem: str, doc: dict, table, title: str, reports: dict[str, str | None],
                publish: str = "", extra_html: str = "") -> dict:
    """``doc`` as ``<stem>.json`` (and at ``publish``), ``table`` (an ``avdet.report`` table) as ``<stem>.md`` and
    ``<stem>.html`` under the heading ``title``, then ``extra_html``, then a link to each report ({link text:
    path}). Atomic."""
    write_json(out / f"{stem}.json", doc)
    if publish:
        write_json(Path(publish), doc)
    write_atomic(out / f"{stem}.md", table.markdown())
    links = "".join(f'<li><a href="{html.escape(os.path.relpath(r, out))}">{html.escape(name)}</a></li>'
                    for name, r in reports.items() if r)
    write_atomic(out / f"{stem}.html", f"<!doctype html><meta charset=utf-8><title>avdet: {html.escape(title)}</title>"
                 "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto}td,th{padding:2px 8px;"
                 "text-align:right}td:first-child{text-align:left}</style>"
                 f"<h1>{html.escape(title)}</h1>{table.html()}{extra_html}<h2>Reports</h2><ul>{links}</ul>")
    return doc
