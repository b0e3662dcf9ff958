"""Evaluation job: stage artifacts -> results.json, tables.md, report.html (distributed/evaluate.py).

    python jobs/evaluate.py --config clusters/local/eval.yaml          # a finished `make demo` (outputs/demo)
    python jobs/evaluate.py manifest=... gt=.../gt_test.json pseudo_train=... pseudo_test=... detector=... use_ray=true
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):                      # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distributed.evaluate import EvalConfig, run_evaluation  # noqa: E402
from jobs.cli import parse, setup_logging  # noqa: E402

REQUIRED = ("manifest", "gt", "pseudo_train", "pseudo_test", "detector")
OPTIONAL = ("heatmaps", "detector_history", "stage1_done")        # "" = not used


def inputs(cfg: EvalConfig) -> dict[str, str]:
    return {**{k: getattr(cfg, k) for k in REQUIRED}, **{k: getattr(cfg, k) for k in OPTIONAL if getattr(cfg, k)}}


def main(argv: list[str]) -> dict:
    """Parse ``--config`` + dotted overrides, run the evaluation, return its ``done.json`` summary."""
    setup_logging()
    return run_evaluation(parse(EvalConfig, argv, __doc__.split("\n")[0], inputs))


if __name__ == "__main__":
    main(sys.argv[1:])
