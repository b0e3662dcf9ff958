"""Table 4 as one command: the pipeline once per number of clusters K, on one set of shards.

    python jobs/k_sweep.py --config clusters/local/demo.yaml --k 5,9,18 [key=value ...]

K = ``k`` runs stage 1 → pseudo-annotations → detector → evaluation under ``<workdir>/ksweep/k-<k>/`` with
``num_clusters=k``; the synthetic data and the shards live once in ``<workdir>`` (``data_dir``), as in
``jobs/seeds.py``. Finished stages are skipped (``done.json``), so a re-run resumes. Writes
``<workdir>/ksweep/ksweep.json`` (``{"commit", "command", "dataset", "rows": [row per K]}``), ``ksweep.md`` and
``ksweep.html`` (the table, with links to each K's report); an evaluation of the base run written afterwards shows
the same rows as its Table 4 (``evaluate.k_sweep_json``).

A reduced budget for the 2-core demo goes in as ordinary overrides, e.g. ``stage1.train.epochs=5 detector.epochs=2``
(the table's caption repeats the command, so the budget is on record).
"""
from __future__ import annotations

import argparse
import dataclasses
import html
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root, for `python jobs/...`

from avdet.config import ConfigError  # noqa: E402
from avdet.fileio import write_atomic, write_json  # noqa: E402
from avdet.report.ksweep import k_row, k_table  # noqa: E402
from distributed.pipeline import PipelineConfig, git_commit, pipeline_inputs, resolve, run_pipeline  # noqa: E402
from jobs.cli import parse_args, setup_logging  # noqa: E402


def k_config(base: PipelineConfig, k: int) -> PipelineConfig:
    """The pipeline of one K: its own stage outputs, the shared data (and shards) of ``base.workdir``."""
    data = base.data_dir or base.workdir
    return dataclasses.replace(base, num_clusters=k, data_dir=data,
                               workdir=str(Path(base.workdir) / "ksweep" / f"k-{k}"))


def _ks(text: str) -> list[int]:
    try:
        ks = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k {text!r}: give comma-separated integers, e.g. 5,9,18")
    if not ks or ks[0] < 1:
        raise argparse.ArgumentTypeError(f"--k {text!r}: every K must be >= 1")
    return ks


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--k", type=_ks, default=[5, 9, 18], help="comma-separated numbers of clusters (5,9,18)")
    parser.add_argument("--publish", default="", help="also write the JSON here")


def main(argv: list[str]) -> dict:
    setup_logging()
    base, args = parse_args(PipelineConfig, argv, __doc__, pipeline_inputs,
                            show=lambda c: resolve(k_config(c, c.num_clusters)), add_arguments=_arguments)
    out = Path(base.workdir) / "ksweep"
    command = "python jobs/k_sweep.py " + " ".join(argv)
    rows, reports, timings = [], {}, {}
    for k in args.k:
        t0 = time.perf_counter()
        try:
            results = run_pipeline(k_config(base, k))
        except ConfigError as e:
            sys.exit(f"k_sweep: {e}")
        ev = results.get("evaluate", {})
        if "results" not in ev:
            sys.exit(f"k_sweep: K={k} produced no evaluation ({ev}); the table needs ground truth")
        rows.append(dict(k_row(k, json.loads(Path(ev["results"]).read_text())),
                         wall_s=round(time.perf_counter() - t0, 1)))
        reports[k], timings[k] = ev.get("report"), rows[-1]["wall_s"]
        doc = _write(out, rows, reports, command, base.dataset, args.publish)
    print(k_table(rows, base.dataset, f"Command: {command}").markdown())
    print(json.dumps({"ksweep_json": str(out / "ksweep.json"), "html": str(out / "ksweep.html"),
                      "wall_s_per_k": timings}, indent=1))
    return doc


def _write(out: Path, rows: list[dict], reports: dict, command: str, dataset: str, publish: str) -> dict:
    """ksweep.json, ksweep.md and ksweep.html (atomic), after every K, so a stopped run keeps what it has."""
    doc = {"commit": git_commit(), "command": command, "dataset": dataset, "rows": rows}
    write_json(out / "ksweep.json", doc)
    if publish:
        write_json(Path(publish), doc)
    table = k_table(rows, dataset, f"Command: {command}")
    write_atomic(out / "ksweep.md", table.markdown())
    links = "".join(f'<li><a href="{html.escape(os.path.relpath(r, out))}">K = {k}</a></li>'
                    for k, r in reports.items() if r)
    write_atomic(out / "ksweep.html", "<!doctype html><meta charset=utf-8><title>avdet: number of clusters K</title>"
                 "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto}td,th{padding:2px 8px;"
                 "text-align:right}td:first-child{text-align:left}</style>"
                 f"<h1>Number of clusters K</h1>{table.html()}<h2>Reports</h2><ul>{links}</ul>")
    return doc


if __name__ == "__main__":
    main(sys.argv[1:])
