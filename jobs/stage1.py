"""Stage 1: joint localisation + self-labelling on a shard manifest (Ray Train + DeepSpeed, relabel between epochs).

    python jobs/stage1.py --config clusters/local/stage1_tiny.yaml manifest=shards/manifest.json train.num_workers=2
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root, for `python jobs/...`

from distributed.stage1.config import Stage1Config
from distributed.stage1.job import run_stage1
from jobs.cli import parse, setup_logging


def inputs(cfg: Stage1Config) -> dict[str, str]:
    return {"manifest": cfg.manifest}


def main(argv: list[str]) -> dict:
    setup_logging()
    cfg = parse(Stage1Config, argv, __doc__, inputs)
    summary = run_stage1(cfg)
    print(json.dumps({k: v for k, v in summary.items() if k != "metrics"}, indent=1))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
