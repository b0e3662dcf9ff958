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
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root, for `python jobs/...`

from avdet.report.ksweep import k_row, k_table  # noqa: E402
from distributed.pipeline import PipelineConfig, git_commit, pipeline_inputs, resolve  # noqa: E402
from jobs.cli import add_verbose, parse_args  # noqa: E402
from jobs.variants import Variant, run_variants, variant_config, write_table  # noqa: E402


def k_config(base: PipelineConfig, k: int) -> PipelineConfig:
    """The pipeline of one K: its own stage outputs, the shared data (and shards) of ``base.workdir``."""
    return variant_config(base, "ksweep", f"k-{k}", num_clusters=k)


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
    add_verbose(parser)


def main(argv: list[str]) -> dict:
    base, args = parse_args(PipelineConfig, argv, __doc__, pipeline_inputs,
                            show=lambda c: resolve(k_config(c, c.num_clusters)), add_arguments=_arguments)
    out = Path(base.workdir) / "ksweep"
    command = "python jobs/k_sweep.py " + " ".join(argv)

    def write(rows: list[dict], reports: dict) -> dict:
        doc = {"commit": git_commit(), "command": command, "dataset": base.dataset, "rows": rows}
        return write_table(out, "ksweep", doc, k_table(rows, base.dataset, f"Command: {command}"),
                           "Number of clusters K", {f"K = {k}": r for k, r in reports.items()}, args.publish)

    rows, timings, doc = run_variants("k_sweep", [Variant(k, f"K={k}", k_config(base, k)) for k in args.k],
                                 lambda k, results, wall, multi: dict(k_row(k, results), wall_s=wall), write, args.verbose)
    print(k_table(rows, base.dataset, f"Command: {command}").markdown())
    print(f"Wall time per K (s): {timings}; table: {out / 'ksweep.html'}")
    return doc


if __name__ == "__main__":
    main(sys.argv[1:])
