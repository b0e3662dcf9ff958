"""Evaluation job: stage artifacts -> results.json, tables.md, report.html (distributed/evaluate.py).

    python jobs/evaluate.py --config clusters/local/eval.yaml          # a finished `make demo` (outputs/demo)
    python jobs/evaluate.py manifest=... gt=.../gt_test.json pseudo_train=... pseudo_test=... detector=... use_ray=true
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):                      # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avdet.config import load_config  # noqa: E402
from distributed.evaluate import EvalConfig, run_evaluation  # noqa: E402


def main(argv: list[str]) -> dict:
    """Parse ``--config`` + dotted overrides, run the evaluation, return its ``done.json`` summary."""
    p = argparse.ArgumentParser(prog="jobs/evaluate.py", description=__doc__.split("\n")[0])
    p.add_argument("--config", help="YAML with EvalConfig fields")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. use_ray=true num_pictures=6")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = load_config(EvalConfig, args.config, args.overrides)
    return run_evaluation(cfg)


if __name__ == "__main__":
    main(sys.argv[1:])
