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
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root, for `python jobs/...`

from avdet.report.seeds import seed_row, seeds_table, summarise  # noqa: E402
from distributed.pipeline import PipelineConfig, git_commit, pipeline_inputs, resolve  # noqa: E402
from jobs.cli import add_verbose, parse_args  # noqa: E402
from jobs.variants import Variant, run_variants, variant_config, write_table  # noqa: E402


def seed_config(base: PipelineConfig, seed: int) -> PipelineConfig:
    """The pipeline of one seed: its own stage outputs, the shared data of ``base.workdir``."""
    return variant_config(base, "seeds", f"seed-{seed}", seed=seed)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=int, default=3, help="how many seeds (default 3)")
    parser.add_argument("--first", type=int, default=0, help="the first seed (default 0)")
    parser.add_argument("--publish", default="", help="also write the JSON here (e.g. docs/results/demo_seeds.json)")
    add_verbose(parser)


def main(argv: list[str]) -> dict:
    base, args = parse_args(PipelineConfig, argv, __doc__, pipeline_inputs,
                            show=lambda c: resolve(seed_config(c, 0)), add_arguments=_arguments)
    if args.seeds < 1 or args.first < 0:
        sys.exit("seeds: --seeds must be >= 1 and --first >= 0")
    out = Path(base.workdir) / "seeds"
    command = "python jobs/seeds.py " + " ".join(argv)

    def write(rows: list[dict], reports: dict) -> dict:
        doc = {"commit": git_commit(), "command": command, "seeds": rows, "summary": summarise(rows)}
        return write_table(out, "seeds", doc, seeds_table(rows, command), "Results over seeds",
                           {f"seed {s}": r for s, r in reports.items()}, args.publish)

    seeds = range(args.first, args.first + args.seeds)
    rows, timings, doc = run_variants("seeds", [Variant(s, f"seed {s}", seed_config(base, s)) for s in seeds],
                                 lambda s, results, wall, multi: seed_row(s, results), write, args.verbose)
    print(seeds_table(rows, command).markdown())
    print(f"Wall time per seed (s): {timings}; table: {out / 'seeds.html'}")
    return doc


if __name__ == "__main__":
    main(sys.argv[1:])
