"""The pipeline once per seed, on shared data, and a table of mean ± std and minimum over the seeds.

    python jobs/seeds.py --config clusters/local/demo.yaml --seeds 3 [--first 0] [key=value ...]

Seed ``s`` runs every stage after ingest under ``<workdir>/seeds/seed-<s>/`` with ``seed=s``; the synthetic data and
the shards live once in ``<workdir>`` (``data_dir``). Finished seeds are skipped (each stage's ``done.json``), so a
re-run resumes. Writes ``<workdir>/seeds/seeds.json`` (``{"commit", "command", "seeds": [row per seed], "summary"}``),
``seeds.md`` and ``seeds.html`` (the table, with links to each seed's report); ``--publish PATH`` copies the JSON
there too (the repo keeps ``docs/results/demo_seeds.json``).
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
from avdet.report.seeds import seed_row, seeds_table, summarise  # noqa: E402
from distributed.pipeline import PipelineConfig, git_commit, pipeline_inputs, resolve, run_pipeline  # noqa: E402
from jobs.cli import parse_args, setup_logging  # noqa: E402


def seed_config(base: PipelineConfig, seed: int) -> PipelineConfig:
    """The pipeline of one seed: its own stage outputs, the shared data of ``base.workdir``."""
    data = base.data_dir or base.workdir
    return dataclasses.replace(base, seed=seed, data_dir=data,
                               workdir=str(Path(base.workdir) / "seeds" / f"seed-{seed}"))


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=int, default=3, help="how many seeds (default 3)")
    parser.add_argument("--first", type=int, default=0, help="the first seed (default 0)")
    parser.add_argument("--publish", default="", help="also write the JSON here (e.g. docs/results/demo_seeds.json)")


def main(argv: list[str]) -> dict:
    setup_logging()
    base, args = parse_args(PipelineConfig, argv, __doc__, pipeline_inputs,
                            show=lambda c: resolve(seed_config(c, 0)), add_arguments=_arguments)
    if args.seeds < 1 or args.first < 0:
        sys.exit("seeds: --seeds must be >= 1 and --first >= 0")
    out = Path(base.workdir) / "seeds"
    command = "python jobs/seeds.py " + " ".join(argv)
    rows, reports, timings = [], {}, {}
    for seed in range(args.first, args.first + args.seeds):
        t0 = time.perf_counter()
        try:
            results = run_pipeline(seed_config(base, seed))
        except ConfigError as e:
            sys.exit(f"seeds: {e}")
        ev = results.get("evaluate", {})
        if "results" not in ev:
            sys.exit(f"seeds: seed {seed} produced no evaluation ({ev}); the table needs ground truth")
        rows.append(seed_row(seed, json.loads(Path(ev["results"]).read_text())))
        reports[seed], timings[seed] = ev.get("report"), round(time.perf_counter() - t0, 1)
        _write(out, rows, reports, command, args.publish)
    doc = _write(out, rows, reports, command, args.publish)
    print(seeds_table(rows, command).markdown())
    print(json.dumps({"seeds_json": str(out / "seeds.json"), "html": str(out / "seeds.html"),
                      "wall_s_per_seed": timings}, indent=1))
    return doc


def _write(out: Path, rows: list[dict], reports: dict, command: str, publish: str) -> dict:
    """seeds.json, seeds.md and seeds.html (atomic), after every seed, so a stopped run keeps what it has."""
    doc = {"commit": git_commit(), "command": command, "seeds": rows, "summary": summarise(rows)}
    write_json(out / "seeds.json", doc)
    if publish:
        write_json(Path(publish), doc)
    table = seeds_table(rows, command)
    write_atomic(out / "seeds.md", table.markdown())
    links = "".join(f'<li><a href="{html.escape(os.path.relpath(r, out))}">seed {s}</a></li>'
                    for s, r in reports.items() if r)
    write_atomic(out / "seeds.html", "<!doctype html><meta charset=utf-8><title>avdet: results over seeds</title>"
                 "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto}td,th{padding:2px 8px;"
                 "text-align:right}td:first-child{text-align:left}</style>"
                 f"<h1>Results over seeds</h1>{table.html()}<h2>Reports</h2><ul>{links}</ul>")
    return doc


if __name__ == "__main__":
    main(sys.argv[1:])
